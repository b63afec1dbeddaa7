"""Paged KV accounting: fixed-size blocks, a free list, per-request block tables."""
from __future__ import annotations

from collections import deque

from podserve.request import Request


class BlockManager:
    """Hands out physical KV blocks to requests.

    A request owns ``ceil(num_tokens_in_cache / block_size)`` blocks. The watermark keeps
    a few blocks free at admission so running decodes don't preempt each other at once.
    """

    def __init__(self, num_blocks: int, block_size: int, watermark: float = 0.01):
        if num_blocks <= 0 or block_size <= 0:
            raise ValueError(f"need num_blocks > 0 and block_size > 0, got {num_blocks}, {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.watermark_blocks = int(watermark * num_blocks)
        self._free: deque[int] = deque(range(num_blocks))
        self._tables: dict[str, list[int]] = {}

    # --- queries -----------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def usage(self) -> float:
        """Fraction of blocks in use, in [0, 1]."""
        return 1.0 - len(self._free) / self.num_blocks

    @property
    def capacity_tokens(self) -> int:
        return self.num_blocks * self.block_size

    @property
    def max_request_tokens(self) -> int:
        """Most tokens one request can ever hold: the whole cache."""
        return self.num_blocks * self.block_size

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def block_table(self, request: Request) -> list[int]:
        """The request's blocks: the live list (it grows in place; copy it to keep a snapshot)."""
        return self._tables.get(request.request_id, [])

    def num_new_blocks(self, request: Request, num_tokens: int) -> int:
        """Blocks to add so that ``request`` can hold ``num_tokens`` tokens in total."""
        return max(0, self.blocks_needed(num_tokens) - len(self.block_table(request)))

    def can_admit(self, request: Request, num_tokens: int) -> bool:
        """Room for a new request of ``num_tokens`` while keeping the watermark free."""
        return self.num_new_blocks(request, num_tokens) <= len(self._free) - self.watermark_blocks

    def can_grow(self, request: Request, num_tokens: int) -> bool:
        """Room for a running request to reach ``num_tokens`` (may dip into the watermark)."""
        return self.num_new_blocks(request, num_tokens) <= len(self._free)

    # --- changes -----------------------------------------------------------------------
    def allocate(self, request: Request, num_tokens: int) -> None:
        """Grow the request's block table to cover ``num_tokens`` tokens."""
        need = self.num_new_blocks(request, num_tokens)
        if need > len(self._free):
            raise RuntimeError(f"out of KV blocks: {request.request_id} needs {need}, {len(self._free)} free")
        table = self._tables.setdefault(request.request_id, [])
        for _ in range(need):
            table.append(self._free.popleft())

    def grow(self, request: Request, num_tokens: int) -> bool:
        """``can_grow`` then ``allocate`` in one step: grow the request's table to cover
        ``num_tokens`` tokens (may dip into the watermark) and return True, or change
        nothing and return False. The decode hot path: usually the last block has room."""
        table = self._tables.get(request.request_id)
        need = -(-num_tokens // self.block_size) - (0 if table is None else len(table))
        if need > len(self._free):
            return False
        if table is None:
            table = self._tables[request.request_id] = []
        free = self._free
        for _ in range(need):
            table.append(free.popleft())
        return True

    def free(self, request: Request) -> None:
        """Return every block of the request to the free list (no-op if it holds none)."""
        table = self._tables.pop(request.request_id, None)
        if table:
            self._free.extend(table)

    def num_requests(self) -> int:
        return len(self._tables)
