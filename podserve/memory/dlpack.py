"""Wrap raw memory (host or device) as a torch tensor through a hand-built DLPack capsule.

Why not ``torch.as_tensor`` over ``__cuda_array_interface__``: it asks the driver about
the pointer, and a virtual range with unmapped pages makes that query fail. A DLPack
capsule carries the device explicitly, so torch takes the pointer as is (zero-copy, no
query, no read). The same code path serves CPU memory from ``mmap``, so CPU tests cover it.
"""
from __future__ import annotations

import ctypes

import torch

_KDL_CPU, _KDL_CUDA = 1, 2
_KDL_INT, _KDL_UINT, _KDL_FLOAT, _KDL_BFLOAT = 0, 1, 2, 4
_DTYPE_CODES = {
    torch.float32: (_KDL_FLOAT, 32),
    torch.float16: (_KDL_FLOAT, 16),
    torch.bfloat16: (_KDL_BFLOAT, 16),
    torch.uint8: (_KDL_UINT, 8),
    torch.int32: (_KDL_INT, 32),
    torch.int64: (_KDL_INT, 64),
}


class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("device", _DLDevice),
        ("ndim", ctypes.c_int32),
        ("dtype", _DLDataType),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("byte_offset", ctypes.c_uint64),
    ]


class _DLManagedTensor(ctypes.Structure):
    _fields_ = [("dl_tensor", _DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", ctypes.c_void_p)]


_capsule_new = ctypes.pythonapi.PyCapsule_New
_capsule_new.restype = ctypes.py_object
_capsule_new.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]

# The ctypes structs must outlive every tensor made from them; the memory itself belongs
# to the caller (a reserved range freed only at process exit or by its owner's close()).
_KEEP_ALIVE: list = []


def tensor_from_address(address: int, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A contiguous tensor of ``shape``/``dtype`` over ``address`` on ``device``; no copy, no read.

    The caller keeps the memory valid while the tensor lives.
    """
    if dtype not in _DTYPE_CODES:
        raise ValueError(f"dtype {dtype} cannot be exported through DLPack here")
    code, bits = _DTYPE_CODES[dtype]
    ndim = len(shape)
    shape_arr = (ctypes.c_int64 * ndim)(*shape)
    strides, step = [0] * ndim, 1
    for i in range(ndim - 1, -1, -1):  # row-major strides, in elements
        strides[i], step = step, step * shape[i]
    strides_arr = (ctypes.c_int64 * ndim)(*strides)
    managed = _DLManagedTensor()
    managed.dl_tensor.data = address
    if device.type == "cuda":
        managed.dl_tensor.device = _DLDevice(_KDL_CUDA, device.index if device.index is not None else torch.cuda.current_device())
    elif device.type == "cpu":
        managed.dl_tensor.device = _DLDevice(_KDL_CPU, 0)
    else:
        raise ValueError(f"device {device} is not supported for virtual KV")
    managed.dl_tensor.ndim = ndim
    managed.dl_tensor.dtype = _DLDataType(code, bits, 1)
    managed.dl_tensor.shape = shape_arr
    managed.dl_tensor.strides = strides_arr
    managed.dl_tensor.byte_offset = 0
    managed.manager_ctx = None
    managed.deleter = None  # torch calls the deleter only if set: the memory is not torch's to free
    _KEEP_ALIVE.append((managed, shape_arr, strides_arr))
    capsule = _capsule_new(ctypes.addressof(managed), b"dltensor", None)
    return torch.utils.dlpack.from_dlpack(capsule)
