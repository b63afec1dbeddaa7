"""Virtual KV accounting (vAttention): one contiguous slot per request, physical pages on demand.

Every running request owns one *batch slot*: a reserved range of ``max_ctx`` tokens in the
virtual K and V tensor of every layer. Physical memory is mapped into a slot in *pages*
of ``tokens_per_page`` tokens, always as a prefix of the slot (pages ``0 .. mapped-1``).
One page of this accounting covers the same token range in every layer's K and V, so a
page costs ``2 * num_layers`` physical allocations of ``tokens_per_page * kv_heads *
head_dim * dtype_bytes`` bytes each; that keeps each layer's K and V an ordinary
contiguous ``[max_batch, max_ctx, kv_heads, head_dim]`` tensor that unchanged kernels read.

The interface is the one of ``BlockManager`` so every scheduler works unchanged, with
pages in the role of blocks: ``num_blocks`` is the physical page budget, ``block_size``
the tokens per page, ``can_admit``/``can_grow`` answer in pages (plus a free slot), so a
scheduler preempts exactly when physical pages run out. ``block_table(request)`` is
``[slot]``: the degenerate paged layout with ``block_size = max_ctx``.

Deferred reclamation: a finished request's slot keeps its pages mapped. A new request
takes the free slot whose mapped pages best fit its prompt (best fit), so it usually
needs no driver call at all. Idle pages (of free slots, or mapped ahead beyond a running
request's tokens) are unmapped only when an allocation finds no unmapped page left.

The memory backend learns what to do through ``take_plan()``: per slot, how many pages
must be mapped before the next iteration runs, and how many may be mapped ahead in the
background. The manager never calls a driver itself (pure Python, shared with the
simulator).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from podserve.request import Request


@dataclass
class MemoryPlan:
    """What the memory backend must do before (and while) the next iteration runs.

    ``required[slot]`` is the number of pages slot ``slot`` must have mapped (a prefix)
    before the iteration's kernels run: lower than now means unmap the tail (reclaimed),
    higher means map. ``ahead[slot] >= required[slot]`` adds pages mapped ahead of need,
    which a backend may map on a background thread. Slots absent from both are unchanged.
    Applying every shrink before any growth never exceeds the physical page budget.
    """

    required: dict[int, int] = field(default_factory=dict)
    ahead: dict[int, int] = field(default_factory=dict)

    @property
    def is_empty(self) -> bool:
        return not self.required and not self.ahead


class VirtualKVManager:
    """Slots and physical pages for contiguous virtual KV, with ``BlockManager``'s interface.

    Args:
        max_batch: batch slots (most requests holding KV at once).
        max_ctx: tokens reserved per slot (the longest context a request may reach).
        tokens_per_page: tokens one physical page holds (per layer, per K or V).
        num_pages: physical page budget (each page spans every layer's K and V).
        watermark: fraction of pages kept free when admitting new requests.
        lookahead_tokens: running requests get pages mapped ahead for this many more
            tokens, from unmapped pages only (never by reclaiming), so background mapping
            has them ready a few decode steps before need. 0 maps strictly on demand.
        first_slot: index of the first slot given to requests; slots below it belong to the
            memory backend (the GPU pool keeps slot 0's first page mapped for good, so that
            every tensor's base address stays valid for Triton's pointer checks).
    """

    def __init__(
        self,
        max_batch: int,
        max_ctx: int,
        tokens_per_page: int,
        num_pages: int,
        watermark: float = 0.01,
        lookahead_tokens: int = 0,
        first_slot: int = 0,
    ):
        for name, value in (("max_batch", max_batch), ("max_ctx", max_ctx), ("tokens_per_page", tokens_per_page), ("num_pages", num_pages)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"VirtualKVManager needs {name} >= 1, got {value!r}")
        if lookahead_tokens < 0:
            raise ValueError(f"lookahead_tokens must be >= 0, got {lookahead_tokens}")
        if first_slot < 0:
            raise ValueError(f"first_slot must be >= 0, got {first_slot}")
        self.max_batch = max_batch
        self.first_slot = first_slot
        num_slots = first_slot + max_batch
        self.tokens_per_page = tokens_per_page
        self.pages_per_slot = -(-max_ctx // tokens_per_page)
        self.max_ctx = self.pages_per_slot * tokens_per_page  # the reservation is whole pages
        self.num_blocks = num_pages
        self.block_size = tokens_per_page
        self.watermark_blocks = int(watermark * num_pages)
        self.lookahead_tokens = lookahead_tokens
        self._mapped = [0] * num_slots  # pages mapped into each slot (a prefix)
        self._tokens = [0] * num_slots  # tokens allocated to the slot's owner (0 when free)
        self._slots: dict[str, int] = {}  # request_id -> slot
        self._free_slots: list[int] = list(range(first_slot, num_slots))  # oldest-freed first (reclaim order)
        self._num_unmapped = num_pages  # physical pages mapped nowhere
        self._num_held = 0  # pages holding live tokens: sum of blocks_needed(tokens) over owners
        self._reported = [0] * num_slots  # mapped counts the backend had after the last plan
        self.num_pages_mapped_total = 0  # pages the backend was asked to map (driver work)
        self.num_pages_unmapped_total = 0  # pages reclaimed (driver work)
        self.num_slot_reuses = 0  # admissions whose pages were already mapped

    # --- queries (BlockManager's interface) ----------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        """Pages not holding live tokens: unmapped, idle in free slots, or mapped ahead."""
        return self.num_blocks - self._num_held

    @property
    def usage(self) -> float:
        """Fraction of the page budget holding live tokens, in [0, 1]."""
        return self._num_held / self.num_blocks

    @property
    def capacity_tokens(self) -> int:
        return self.num_blocks * self.block_size

    @property
    def max_request_tokens(self) -> int:
        """Most tokens one request can ever hold: its slot, or every page if fewer."""
        return min(self.max_ctx, self.num_blocks * self.block_size)

    def blocks_needed(self, num_tokens: int) -> int:
        """Pages that ``num_tokens`` tokens occupy."""
        return -(-num_tokens // self.tokens_per_page)

    def block_table(self, request: Request) -> list[int]:
        """``[slot]`` for a request holding KV, else ``[]``."""
        slot = self._slots.get(request.request_id)
        return [] if slot is None else [slot]

    def num_new_blocks(self, request: Request, num_tokens: int) -> int:
        """Pages of the budget to add so that ``request`` holds ``num_tokens`` tokens."""
        slot = self._slots.get(request.request_id)
        held = 0 if slot is None else self.blocks_needed(self._tokens[slot])
        return max(0, self.blocks_needed(num_tokens) - held)

    def can_admit(self, request: Request, num_tokens: int) -> bool:
        """A free slot (if the request has none) and pages for ``num_tokens``, watermark kept."""
        if not self._fits(request, num_tokens):
            return False
        return self.num_new_blocks(request, num_tokens) <= self.num_free_blocks - self.watermark_blocks

    def can_grow(self, request: Request, num_tokens: int) -> bool:
        """Pages for a running request to reach ``num_tokens`` (may dip into the watermark)."""
        if not self._fits(request, num_tokens):
            return False
        return self.num_new_blocks(request, num_tokens) <= self.num_free_blocks

    def grow(self, request: Request, num_tokens: int) -> bool:
        """``can_grow`` then ``allocate``: True if ``request`` now holds ``num_tokens``
        tokens, False (nothing changed) if pages or a slot are lacking."""
        if not self.can_grow(request, num_tokens):
            return False
        self.allocate(request, num_tokens)
        return True

    def num_requests(self) -> int:
        return len(self._slots)

    def slot_of(self, request: Request) -> int | None:
        return self._slots.get(request.request_id)

    def mapped_pages(self, slot: int) -> int:
        """Pages the accounting has mapped into ``slot`` (applied by the next plan)."""
        return self._mapped[slot]

    @property
    def num_mapped_pages(self) -> int:
        return self.num_blocks - self._num_unmapped

    # --- changes -------------------------------------------------------------------------
    def allocate(self, request: Request, num_tokens: int) -> None:
        """Give ``request`` a slot (best fit) if it has none and pages for ``num_tokens``."""
        if not self._fits(request, num_tokens):
            raise RuntimeError(f"{request.request_id}: {num_tokens} tokens exceed the slot reservation ({self.max_ctx}) or no slot is free")
        need = self.num_new_blocks(request, num_tokens)
        if need > self.num_free_blocks:
            raise RuntimeError(f"out of KV pages: {request.request_id} needs {need}, {self.num_free_blocks} free")
        slot = self._slots.get(request.request_id)
        if slot is None:
            slot = self._best_fit_slot(self.blocks_needed(num_tokens))
            self._free_slots.remove(slot)
            self._slots[request.request_id] = slot
            if self._mapped[slot] > 0:
                self.num_slot_reuses += 1
        self._tokens[slot] = max(self._tokens[slot], num_tokens)
        self._num_held += need
        self._map_up_to(slot, self.blocks_needed(self._tokens[slot]))

    def free(self, request: Request) -> None:
        """Release the request's slot; its pages stay mapped for reuse (deferred reclamation)."""
        slot = self._slots.pop(request.request_id, None)
        if slot is None:
            return
        self._num_held -= self.blocks_needed(self._tokens[slot])
        self._tokens[slot] = 0
        self._free_slots.append(slot)

    def reclaim_idle(self) -> int:
        """Unmap every idle page (free slots and ahead-mapped tails); returns pages reclaimed."""
        return self._reclaim(self.num_blocks)

    def take_plan(self) -> MemoryPlan:
        """What the backend must map/unmap now that the scheduler has allocated.

        Also maps pages ahead for running requests (``lookahead_tokens``) from unmapped
        pages, so a background thread can map them while the iteration computes.
        """
        plan = MemoryPlan()
        slots = range(self.first_slot, len(self._mapped))
        for slot in slots:
            if self._mapped[slot] != self._reported[slot]:
                plan.required[slot] = self._mapped[slot]
        if self.lookahead_tokens:
            for slot in self._slots.values():
                want = min(self.pages_per_slot, self.blocks_needed(self._tokens[slot] + self.lookahead_tokens))
                extra = min(want - self._mapped[slot], self._num_unmapped)
                if extra > 0:
                    self._mapped[slot] += extra
                    self._num_unmapped -= extra
                    self.num_pages_mapped_total += extra
        for slot in slots:
            # A slot in ``required`` always gets an ``ahead`` entry, even if look-ahead
            # brought it back to its old count: the backend's final state is ``ahead``.
            if slot in plan.required or self._mapped[slot] != self._reported[slot]:
                plan.ahead[slot] = self._mapped[slot]
                self._reported[slot] = self._mapped[slot]
        return plan

    # --- internals -----------------------------------------------------------------------
    def _fits(self, request: Request, num_tokens: int) -> bool:
        if num_tokens > self.max_ctx:
            return False
        return request.request_id in self._slots or bool(self._free_slots)

    def _best_fit_slot(self, pages: int) -> int:
        """The free slot with the fewest mapped pages that still cover ``pages``; failing
        that, the one with the most (fewest new mappings). Ties: lowest slot index."""
        covering = [s for s in self._free_slots if self._mapped[s] >= pages]
        if covering:
            return min(covering, key=lambda s: (self._mapped[s], s))
        return max(self._free_slots, key=lambda s: (self._mapped[s], -s))

    def _map_up_to(self, slot: int, pages: int) -> None:
        deficit = pages - self._mapped[slot]
        if deficit <= 0:
            return
        if deficit > self._num_unmapped:
            self._reclaim(deficit - self._num_unmapped, keep=slot)
        assert deficit <= self._num_unmapped, "accounting broken: free pages counted but not reclaimable"
        self._mapped[slot] = pages
        self._num_unmapped -= deficit
        self.num_pages_mapped_total += deficit

    def _reclaim(self, pages: int, keep: int | None = None) -> int:
        """Unmap up to ``pages`` idle pages: free slots first (oldest freed first), then the
        tails of running slots mapped beyond their tokens. Never touches ``keep``."""
        done = 0
        candidates = list(self._free_slots) + [s for s in self._slots.values()]
        for slot in candidates:
            if done >= pages:
                break
            if slot == keep:
                continue
            idle = self._mapped[slot] - self.blocks_needed(self._tokens[slot])
            take = min(idle, pages - done)
            if take > 0:
                self._mapped[slot] -= take
                self._num_unmapped += take
                self.num_pages_unmapped_total += take
                done += take
        return done
