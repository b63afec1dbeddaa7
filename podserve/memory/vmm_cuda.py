"""CUDA virtual memory for KV over the driver's VMM API (``cuda-bindings``), no C++ extension.

At start-up: one virtual range is reserved (``cuMemAddressReserve``) and a pool of
physical pages is created (``cuMemCreate``), so serving never allocates device memory.
``map`` takes pages from the pool and maps them (``cuMemMap`` + ``cuMemSetAccess``);
``unmap`` unmaps them (``cuMemUnmap``) and returns them to the pool. Tensors over the
range come from a DLPack capsule, which torch accepts even where nothing is mapped.
Same interface as ``vmm_cpu.CpuVirtualMemory``.
"""
from __future__ import annotations

import threading

import torch

from podserve.memory.dlpack import tensor_from_address


def _driver():
    """Import cuda-bindings lazily: CPU machines don't have it."""
    try:
        from cuda.bindings import driver
    except ImportError:
        try:
            from cuda import cuda as driver  # cuda-python < 12.6 layout
        except ImportError:
            raise ValueError(
                "--kv virtual on CUDA needs the cuda-bindings package (pip install cuda-bindings); "
                "or use --kv paged"
            ) from None
    return driver


def _ok(result, what: str):
    """cuda-bindings returns (CUresult, *values): raise on error, return the values."""
    err, *values = result if isinstance(result, tuple) else (result,)
    driver = _driver()
    if err != driver.CUresult.CUDA_SUCCESS:
        _, name = driver.cuGetErrorName(err)
        raise RuntimeError(f"{what} failed: {name.decode() if isinstance(name, bytes) else name}")
    return values[0] if len(values) == 1 else values


class CudaVirtualMemory:
    """A reserved device range whose pages of ``page_bytes`` are backed on demand.

    Args:
        size: bytes of virtual address space to reserve (a multiple of ``page_bytes``).
        page_bytes: bytes of one page, a multiple of the allocation granularity (2 MiB on H100).
        num_physical_pages: physical pages created up front (the budget).
        device: the CUDA device.
    """

    def __init__(self, size: int, page_bytes: int, num_physical_pages: int, device: torch.device):
        drv = _driver()
        self._drv = drv
        self.device = torch.device("cuda", device.index if device.index is not None else torch.cuda.current_device())
        ordinal = self.device.index
        torch.cuda.init()  # the primary context torch uses is the one we map into
        _ok(drv.cuInit(0), "cuInit")
        self._dev = _ok(drv.cuDeviceGet(ordinal), "cuDeviceGet")
        supported = _ok(
            drv.cuDeviceGetAttribute(drv.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, self._dev),
            "cuDeviceGetAttribute",
        )
        if not supported:
            raise ValueError(f"CUDA device {ordinal} does not support virtual memory management; use --kv paged")
        self._ctx = _ok(drv.cuDevicePrimaryCtxRetain(self._dev), "cuDevicePrimaryCtxRetain")
        self._local = threading.local()
        self._bind()
        gran = self.granularity(self.device)
        if page_bytes % gran or size % page_bytes:
            raise ValueError(f"page_bytes ({page_bytes}) must be a multiple of the granularity {gran} and size ({size}) of page_bytes")
        self.size, self.page_bytes, self.num_physical_pages = size, page_bytes, num_physical_pages
        self._prop = self._alloc_prop(drv, ordinal)
        access = drv.CUmemAccessDesc()
        access.location.type = drv.CUmemLocationType.CU_MEM_LOCATION_TYPE_DEVICE
        access.location.id = ordinal
        access.flags = drv.CUmemAccess_flags.CU_MEM_ACCESS_FLAGS_PROT_READWRITE
        self._access = [access]
        try:
            self.base = int(_ok(drv.cuMemAddressReserve(size, gran, 0, 0), "cuMemAddressReserve"))
        except RuntimeError as e:
            raise MemoryError(f"cannot reserve {size} bytes of device address space for the virtual KV cache ({e})") from None
        self._free_handles = []
        try:
            for _ in range(num_physical_pages):
                self._free_handles.append(_ok(drv.cuMemCreate(page_bytes, self._prop, 0), "cuMemCreate"))
        except RuntimeError:
            self.close()
            raise
        self._mapped: dict[int, object] = {}  # offset -> physical handle
        self.num_mapped = 0

    @staticmethod
    def _alloc_prop(drv, ordinal: int):
        prop = drv.CUmemAllocationProp()
        prop.type = drv.CUmemAllocationType.CU_MEM_ALLOCATION_TYPE_PINNED
        prop.location.type = drv.CUmemLocationType.CU_MEM_LOCATION_TYPE_DEVICE
        prop.location.id = ordinal
        return prop

    @classmethod
    def granularity(cls, device: torch.device | None = None) -> int:
        """Minimum physical allocation (and mapping) size on ``device``."""
        drv = _driver()
        ordinal = 0 if device is None or device.index is None else device.index
        _ok(drv.cuInit(0), "cuInit")
        return int(
            _ok(
                drv.cuMemGetAllocationGranularity(
                    cls._alloc_prop(drv, ordinal), drv.CUmemAllocationGranularity_flags.CU_MEM_ALLOC_GRANULARITY_MINIMUM
                ),
                "cuMemGetAllocationGranularity",
            )
        )

    def _bind(self) -> None:
        # Driver calls need a current context; a background mapping thread has none.
        if not getattr(self._local, "bound", False):
            _ok(self._drv.cuCtxSetCurrent(self._ctx), "cuCtxSetCurrent")
            self._local.bound = True

    def map(self, offset: int, num_pages: int = 1) -> None:
        """Back ``num_pages`` consecutive pages at byte ``offset`` with pool pages."""
        self._check_range(offset, num_pages)
        if num_pages > len(self._free_handles):
            raise RuntimeError(f"physical page pool exhausted: {num_pages} wanted, {len(self._free_handles)} free")
        self._bind()
        drv = self._drv
        for i in range(num_pages):
            off = offset + i * self.page_bytes
            if off in self._mapped:
                raise RuntimeError(f"page at offset {off} is already mapped")
            handle = self._free_handles.pop()
            _ok(drv.cuMemMap(self.base + off, self.page_bytes, 0, handle, 0), "cuMemMap")
            self._mapped[off] = handle
        # One access call covers the whole run of pages just mapped.
        _ok(drv.cuMemSetAccess(self.base + offset, num_pages * self.page_bytes, self._access, 1), "cuMemSetAccess")
        self.num_mapped += num_pages

    def unmap(self, offset: int, num_pages: int = 1) -> None:
        """Unmap ``num_pages`` pages at ``offset`` and return them to the pool. The caller
        must know no kernel still reads them (see ``VirtualKVPool``'s events)."""
        self._check_range(offset, num_pages)
        self._bind()
        for i in range(num_pages):
            # One call per page: cuMemUnmap must cover whole mappings, one per cuMemMap.
            off = offset + i * self.page_bytes
            _ok(self._drv.cuMemUnmap(self.base + off, self.page_bytes), "cuMemUnmap")
            self._free_handles.append(self._mapped.pop(off))
            self.num_mapped -= 1

    def tensor(self, offset: int, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """A zero-copy device tensor over the range at ``offset``, mapped or not."""
        try:
            return tensor_from_address(self.base + offset, tuple(shape), dtype, self.device)
        except Exception:  # a torch that rejects the hand-built capsule: go through cupy
            return _tensor_via_cupy(self.base + offset, tuple(shape), dtype, self.device)

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.device)

    def close(self) -> None:
        """Unmap everything, release the pool and the reservation (tensors must be gone)."""
        if getattr(self, "base", None) is None:
            return
        drv = self._drv
        self._bind()
        for off, handle in list(getattr(self, "_mapped", {}).items()):
            drv.cuMemUnmap(self.base + off, self.page_bytes)
            self._free_handles.append(handle)
        for handle in self._free_handles:
            drv.cuMemRelease(handle)
        drv.cuMemAddressFree(self.base, self.size)
        self.base = None

    def _check_range(self, offset: int, num_pages: int) -> None:
        if offset % self.page_bytes or num_pages < 1 or offset + num_pages * self.page_bytes > self.size:
            raise ValueError(f"bad page range: offset {offset}, {num_pages} pages of {self.page_bytes} in {self.size}")


def _tensor_via_cupy(address: int, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Fallback exposure: cupy's UnownedMemory with an explicit device id (no pointer query)."""
    import cupy

    nbytes = torch.tensor([], dtype=dtype).element_size()
    for d in shape:
        nbytes *= d
    mem = cupy.cuda.UnownedMemory(address, nbytes, owner=None, device_id=device.index)
    raw = cupy.ndarray((nbytes,), dtype=cupy.uint8, memptr=cupy.cuda.MemoryPointer(mem, 0))
    return torch.from_dlpack(raw).view(dtype).view(shape)
