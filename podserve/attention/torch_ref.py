"""Reference attention backend in plain torch: correct on CPU and GPU, fast enough on CPU.

On CUDA, decodes are attended together (their K/V gathered from the block table into one
padded tensor, one SDPA call per layer). On CPU, where that gather and the padded,
masked SDPA cost more than the matmuls of the model itself at large decode batches, all
decodes go through one call of the compiled kernel (``kernels/cpu_decode.py``: K/V read in
place through the block table) where it is available and takes the shapes; otherwise each
decode attends on its own over its K/V read in place (a zero-copy view when its context
fits one block, as with virtual KV; otherwise a copy of its own blocks only) with two
small matmuls. Prefill chunks run one by one over the same per-sequence K/V, with a
causal mask offset by the cached prefix.

A context that fits one block is read as a view of its first ``seq_len`` rows, never the
whole block: with virtual KV a block is a whole ``max_ctx`` slot whose tail is not mapped,
and reading it would fault. Longer contexts only exist with paged KV, whose blocks are all
backed, so their own blocks are copied whole. The CUDA decode gather reads each sequence's
own tokens only (positions past its length re-read its first token, then are masked).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from podserve.attention.base import AttentionBackend, AttentionMetadata
from podserve.kernels import cpu_decode


def write_kv_torch(k: torch.Tensor, v: torch.Tensor,  # [n, kv_heads, head_dim]
                   k_cache: torch.Tensor, v_cache: torch.Tensor,  # [num_blocks, block_size, kv_heads, head_dim]
                   slot_mapping: torch.Tensor) -> None:  # int64 [n]
    """New K/V into the cache at their flat slots (every slot valid: no padding rows)."""
    _, _, num_kv_heads, head_dim = k_cache.shape
    k_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slot_mapping, k)
    v_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slot_mapping, v)


class TorchAttentionBackend(AttentionBackend):
    name = "torch"

    def __init__(self):
        self._shared: dict = {}

    def prepare(self, meta: AttentionMetadata) -> None:
        shared = {}
        if meta.num_decodes:
            b = meta.num_decodes
            lens = meta.seq_lens[:b]
            shared["decode"] = (b, lens, max(meta.seq_lens_cpu[:b]))
        prefills = []
        # Query offsets from the host copy: reading cu_seqlens_q back would sync the GPU.
        start = meta.num_decodes
        for i in range(meta.num_decodes, meta.num_seqs):
            q_len, seq_len = meta.query_lens_cpu[i], meta.seq_lens_cpu[i]
            prefills.append((i, start, q_len, seq_len))
            start += q_len
        shared["prefills"] = prefills
        shared["masks"] = {}
        self._shared = shared

    def forward(self, q, k, v, k_cache, v_cache, meta, scale):
        # Write the new K/V first: every query then reads its own token from the cache.
        write_kv_torch(k, v, k_cache, v_cache, meta.slot_mapping)
        out = torch.empty_like(q)  # [num_tokens, num_heads, head_dim]
        if meta.num_decodes:
            b = meta.num_decodes
            if q.device.type != "cpu":
                out[:b] = self._decode(q[:b], k_cache, v_cache, meta, scale)
            elif cpu_decode.supports(q, k_cache) and cpu_decode.available():
                out[:b] = cpu_decode.decode_attention(q[:b], k_cache, v_cache, meta.block_tables, meta.seq_lens[:b], scale)
            else:
                self._decode_each(q[:b], out, k_cache, v_cache, meta, scale)
        for i, start, q_len, seq_len in self._shared["prefills"]:
            out[start : start + q_len] = self._prefill(q[start : start + q_len], i, q_len, seq_len, k_cache, v_cache, meta, scale)
        return out

    def _index(self, key, meta, rows: slice, lengths: list[int], block_size: int) -> torch.Tensor:
        """Flat cache indices [num_rows, max(lengths)] of each row's positions 0..len-1 (the
        CUDA decode gather), computed once per batch and shared by every layer."""
        idx = self._shared["masks"].get(key)
        if idx is None:
            dev = meta.block_tables.device
            pos = torch.arange(max(lengths), device=dev)  # [L]
            lens = torch.tensor(lengths, device=dev)  # [rows]
            pos = torch.where(pos[None, :] < lens[:, None], pos[None, :], 0)  # [rows, L]; past the end: token 0
            blocks = torch.gather(meta.block_tables[rows].long(), 1, pos // block_size)  # [rows, L]
            idx = blocks * block_size + pos % block_size
            self._shared["masks"][key] = idx
        return idx

    def _seq_kv(self, i, seq_len, k_cache, v_cache, meta):
        """Sequence ``i``'s first ``seq_len`` cached K and V, each [seq_len, kv_heads, head_dim]:
        a view when they sit in one block, else a copy of its own blocks (never the padding)."""
        block_size = k_cache.shape[1]
        if seq_len <= block_size:
            # One block holds the whole context (always so for virtual KV, where the block is
            # the request's slot). Its id is read once per batch, from the host copy when the
            # runner kept one (no device read), and shared by every layer.
            key = ("block", i)
            blk = self._shared["masks"].get(key)
            if blk is None:
                host = meta.block_tables_cpu
                blk = int(host[i, 0]) if host is not None else int(meta.block_tables[i, 0])
                self._shared["masks"][key] = blk
            return k_cache[blk, :seq_len], v_cache[blk, :seq_len]
        table = meta.block_tables[i, : -(-seq_len // block_size)]
        keys = k_cache.index_select(0, table).flatten(0, 1)[:seq_len]
        vals = v_cache.index_select(0, table).flatten(0, 1)[:seq_len]
        return keys, vals

    def _decode_each(self, q, out, k_cache, v_cache, meta, scale):
        """CPU decode: one query token per sequence, GQA groups packed so each K/V head is
        read once: scores [kv_heads, group, seq_len] = q [kv_heads, group, head_dim] @ K^T."""
        num_kv_heads = k_cache.shape[2]
        b, num_heads, head_dim = q.shape
        group = num_heads // num_kv_heads
        # Half-precision matmuls this small run at a fraction of float32's speed on CPUs
        # (and bf16 ones lose precision in the softmax): attend in float32.
        qg = q.view(b, num_kv_heads, group, head_dim).float()
        for i in range(b):
            seq_len = meta.seq_lens_cpu[i]
            keys, vals = self._seq_kv(i, seq_len, k_cache, v_cache, meta)  # [seq_len, kv_heads, head_dim]
            scores = torch.matmul(qg[i], keys.float().permute(1, 2, 0)).mul_(scale)  # [kv_heads, group, seq_len]
            probs = torch.softmax(scores, dim=-1)
            out[i] = torch.matmul(probs, vals.float().transpose(0, 1)).view(num_heads, head_dim)

    def _decode(self, q, k_cache, v_cache, meta, scale):
        b, lens, max_len = self._shared["decode"]
        _, block_size, num_kv_heads, head_dim = k_cache.shape
        key = ("decode_mask", block_size)
        mask = self._shared["masks"].get(key)
        if mask is None:
            pos = torch.arange(max_len, device=q.device)
            mask = (pos[None, :] < lens[:, None].to(pos.dtype))[:, None, None, :]  # [b, 1, 1, L]
            self._shared["masks"][key] = mask
        idx = self._index(("decode_index", block_size), meta, slice(0, b), meta.seq_lens_cpu[:b], block_size)  # [b, L]
        keys = k_cache.view(-1, num_kv_heads, head_dim)[idx].transpose(1, 2)  # [b, kv_heads, L, head_dim]
        vals = v_cache.view(-1, num_kv_heads, head_dim)[idx].transpose(1, 2)
        qq = q.unsqueeze(2)  # [b, num_heads, 1, head_dim]
        o = F.scaled_dot_product_attention(qq, keys, vals, attn_mask=mask, scale=scale, enable_gqa=True)
        return o.squeeze(2)

    def _prefill(self, q, i, q_len, seq_len, k_cache, v_cache, meta, scale):
        keys, vals = self._seq_kv(i, seq_len, k_cache, v_cache, meta)  # [seq_len, kv_heads, head_dim]
        # A batch dimension of one: on CPUs, SDPA takes its flash kernel only for 4-D inputs
        # (3-D ones run the unfused math path, 2-2.7x slower at 330-1024 tokens).
        keys, vals = keys.transpose(0, 1)[None], vals.transpose(0, 1)[None]  # [1, kv_heads, seq_len, head_dim]
        qq = q.transpose(0, 1)[None]  # [1, num_heads, q_len, head_dim]
        if q_len == seq_len:
            o = F.scaled_dot_product_attention(qq, keys, vals, is_causal=True, scale=scale, enable_gqa=True)
        else:
            key = ("prefill_mask", i)
            mask = self._shared["masks"].get(key)
            if mask is None:
                qpos = torch.arange(seq_len - q_len, seq_len, device=q.device)
                mask = qpos[:, None] >= torch.arange(seq_len, device=q.device)[None, :]  # [q_len, seq_len]
                self._shared["masks"][key] = mask
            o = F.scaled_dot_product_attention(qq, keys, vals, attn_mask=mask, scale=scale, enable_gqa=True)
        return o[0].transpose(0, 1)
