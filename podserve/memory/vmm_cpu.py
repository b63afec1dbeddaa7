"""CPU virtual memory for KV: reserve address space, commit and release pages on demand.

The range is reserved with ``mmap(PROT_NONE, MAP_NORESERVE)``: it costs address space,
no memory. ``map`` commits pages with ``mprotect(PROT_READ|PROT_WRITE)`` (the kernel backs
them on first touch); ``unmap`` gives the memory back with ``madvise(MADV_DONTNEED)`` and
re-protects with ``PROT_NONE``, so a stray read of a released page faults at once instead
of returning stale KV. Same interface as ``vmm_cuda.CudaVirtualMemory``.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os

import torch

from podserve.memory.dlpack import tensor_from_address

_PROT_NONE, _PROT_RW = 0, mmap.PROT_READ | mmap.PROT_WRITE
_MAP_PRIVATE, _MAP_ANONYMOUS, _MAP_NORESERVE = 0x02, 0x20, 0x4000
_MADV_DONTNEED = 4
_MAP_FAILED = ctypes.c_void_p(-1).value

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what} failed: {os.strerror(err)}")


class CpuVirtualMemory:
    """A reserved range of ``size`` bytes whose pages of ``page_bytes`` are committed on demand.

    Args:
        size: bytes of address space to reserve (a multiple of ``page_bytes``).
        page_bytes: bytes of one page (a multiple of the OS page size).
        num_physical_pages: most pages committed at once (the physical budget; mapping
            beyond it raises, so accounting bugs show on CPU as they would on a GPU).
    """

    device = torch.device("cpu")

    @staticmethod
    def granularity(device: torch.device | None = None) -> int:
        """Smallest unit pages can be committed in: the OS page size."""
        return mmap.PAGESIZE

    def __init__(self, size: int, page_bytes: int, num_physical_pages: int, device: torch.device | None = None):
        if page_bytes % mmap.PAGESIZE or size % page_bytes:
            raise ValueError(f"page_bytes ({page_bytes}) must be a multiple of {mmap.PAGESIZE} and size ({size}) of page_bytes")
        self.size = size
        self.page_bytes = page_bytes
        self.num_physical_pages = num_physical_pages
        self.num_mapped = 0
        addr = _libc.mmap(None, size, _PROT_NONE, _MAP_PRIVATE | _MAP_ANONYMOUS | _MAP_NORESERVE, -1, 0)
        if addr is None or addr == _MAP_FAILED:
            err = ctypes.get_errno()
            raise MemoryError(f"cannot reserve {size} bytes of address space for the virtual KV cache: {os.strerror(err)}")
        self.base = addr

    def map(self, offset: int, num_pages: int = 1) -> None:
        """Commit ``num_pages`` consecutive pages starting at byte ``offset``."""
        self._check_range(offset, num_pages)
        if self.num_mapped + num_pages > self.num_physical_pages:
            raise RuntimeError(f"physical page budget exceeded: {self.num_mapped} + {num_pages} > {self.num_physical_pages}")
        _check(_libc.mprotect(self.base + offset, num_pages * self.page_bytes, _PROT_RW), "mprotect(RW)")
        self.num_mapped += num_pages

    def unmap(self, offset: int, num_pages: int = 1) -> None:
        """Release ``num_pages`` consecutive pages at ``offset``: memory returned, access revoked."""
        self._check_range(offset, num_pages)
        n = num_pages * self.page_bytes
        _check(_libc.madvise(self.base + offset, n, _MADV_DONTNEED), "madvise(DONTNEED)")
        _check(_libc.mprotect(self.base + offset, n, _PROT_NONE), "mprotect(NONE)")
        self.num_mapped -= num_pages

    def tensor(self, offset: int, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """A zero-copy tensor over the range at ``offset`` (committed or not: reads of
        uncommitted pages fault)."""
        nbytes = torch.tensor([], dtype=dtype).element_size()
        for d in shape:
            nbytes *= d
        if offset + nbytes > self.size:
            raise ValueError("tensor extends past the reservation")
        return tensor_from_address(self.base + offset, tuple(shape), dtype, self.device)

    def synchronize(self) -> None:
        """Nothing is asynchronous on CPU."""

    def close(self) -> None:
        """Return the whole range (tensors over it must be gone)."""
        if self.base is not None:
            _check(_libc.munmap(self.base, self.size), "munmap")
            self.base = None

    def _check_range(self, offset: int, num_pages: int) -> None:
        if offset % self.page_bytes or num_pages < 1 or offset + num_pages * self.page_bytes > self.size:
            raise ValueError(f"bad page range: offset {offset}, {num_pages} pages of {self.page_bytes} in {self.size}")
