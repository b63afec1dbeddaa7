"""Write a batch's new K/V rows into the paged or contiguous cache through ``slot_mapping``.

K and V go in one launch (one program per token moves both): the rows are tiny
(num_kv_heads * head_dim elements), so launch count, not bandwidth, is the cost
at small batches. Fusing the write into the attention kernels does not pay here:
the prefill kernel must read the chunk's own K/V back from the cache anyway
(the cache is its only KV input), and decode rows are a few KiB a layer.
"""
import torch
import triton
import triton.language as tl

from .utils import interpreting, next_pow2


@triton.jit
def _write_kv_kernel(k_ptr, v_ptr, k_cache, v_cache, slot_mapping,
                     stride_kt, stride_kh, stride_vt, stride_vh,
                     stride_ckr, stride_ckh, stride_cvr, stride_cvh,
                     NUM_KV_HEADS: tl.constexpr, H_PAD: tl.constexpr, HEAD_DIM: tl.constexpr):
    tok = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_mapping + tok).to(tl.int64)
    if slot >= 0:  # negative slots mark padding tokens
        offs_h = tl.arange(0, H_PAD)
        offs_d = tl.arange(0, HEAD_DIM)
        mask = (offs_h < NUM_KV_HEADS)[:, None]
        k = tl.load(k_ptr + tok * stride_kt + offs_h[:, None] * stride_kh + offs_d[None, :],
                    mask=mask)  # [H_PAD, D]
        v = tl.load(v_ptr + tok * stride_vt + offs_h[:, None] * stride_vh + offs_d[None, :],
                    mask=mask)
        tl.store(k_cache + slot * stride_ckr + offs_h[:, None] * stride_ckh + offs_d[None, :],
                 k.to(k_cache.dtype.element_ty), mask=mask)
        tl.store(v_cache + slot * stride_cvr + offs_h[:, None] * stride_cvh + offs_d[None, :],
                 v.to(v_cache.dtype.element_ty), mask=mask)


def write_kv(
    k: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
    v: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
    k_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    slot_mapping: torch.Tensor,  # int64 [num_tokens]: block * block_size + offset, <0 = skip
) -> None:
    """Store token ``t``'s K/V at flat cache row ``slot_mapping[t]`` (both layouts)."""
    num_tokens, num_kv_heads, head_dim = k.shape
    if num_tokens == 0:
        return
    if k.stride(2) != 1 or v.stride(2) != 1 or k_cache.stride(3) != 1:
        raise ValueError("head_dim must be contiguous")
    if k_cache.stride(0) != k_cache.shape[1] * k_cache.stride(1):
        raise ValueError("cache blocks must be contiguous")
    kw = {} if interpreting() else dict(num_warps=4)
    _write_kv_kernel[(num_tokens,)](
        k, v, k_cache, v_cache, slot_mapping,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        k_cache.stride(1), k_cache.stride(2), v_cache.stride(1), v_cache.stride(2),
        NUM_KV_HEADS=num_kv_heads, H_PAD=next_pow2(num_kv_heads), HEAD_DIM=head_dim, **kw)
