"""Incremental detokenization and stop-string matching for one request."""
from __future__ import annotations

_CONTEXT_TOKENS = 5  # prompt tokens kept as context so the first output piece spaces right


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas.

    Decodes a short window ``ids[prefix:]`` and emits what it adds beyond
    ``ids[prefix:read]``, so a byte-level token that ends mid-character is held back
    until it completes; the concatenated deltas equal decoding the whole output at once.
    """

    def __init__(self, tokenizer, prompt_token_ids: list[int], stop: list[str]):
        self.tokenizer = tokenizer
        self.ids = list(prompt_token_ids[-_CONTEXT_TOKENS:])
        self.num_context = len(self.ids)
        self.prefix_offset = 0
        self.read_offset = len(self.ids)
        self.text = ""
        self.stop = stop
        self._max_stop = max((len(s) for s in stop), default=0)

    def add(self, token_ids: list[int]) -> tuple[str, bool]:
        """Append tokens; return (new text, hit a stop string). Text after a stop is dropped."""
        self.ids += token_ids
        prefix_text = self._decode(self.ids[self.prefix_offset : self.read_offset])
        full_text = self._decode(self.ids[self.prefix_offset :])
        if len(full_text) <= len(prefix_text) or full_text.endswith("\ufffd"):
            return "", False  # an incomplete UTF-8 sequence: wait for the next token
        delta = full_text[len(prefix_text) :]
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        start = len(self.text)
        self.text += delta
        if self.stop:
            # Only the new text (and the tail a stop string could straddle) needs a look.
            search_from = max(0, start - self._max_stop + 1)
            hits = [i for i in (self.text.find(s, search_from) for s in self.stop) if i != -1]
            if hits:
                cut = min(hits)
                self.text = self.text[:cut]
                return self.text[start:] if cut > start else "", True
        return delta, False

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)
