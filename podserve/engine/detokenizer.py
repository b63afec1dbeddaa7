"""Incremental detokenization and stop-string matching for one request."""
from __future__ import annotations

_CONTEXT_TOKENS = 5  # prompt tokens kept as context so the first output piece spaces right


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas.

    Decodes a short window ``ids[prefix:]`` and emits what it adds beyond
    ``ids[prefix:read]``, so a byte-level token that ends mid-character is held back
    until it completes; the concatenated deltas equal decoding the whole output at once.
    Tokenizers that offer ``decode_stream`` (``tokenizers``' DecodeStream, primed with
    the prompt's last tokens) do the same natively, one call per token (~1 us against
    ~3 us for the two window decodes; 128 requests a step).
    """

    def __init__(self, tokenizer, prompt_token_ids: list[int], stop: list[str]):
        self.tokenizer = tokenizer
        self.ids = list(prompt_token_ids[-_CONTEXT_TOKENS:])
        self.num_context = len(self.ids)
        self.prefix_offset = 0
        self.read_offset = len(self.ids)
        self.text = ""
        self._emitted = 0  # characters of ``text`` handed out as deltas
        self.stop = stop
        self._max_stop = max((len(s) for s in stop), default=0)
        make_stream = getattr(tokenizer, "decode_stream", None)
        self._step = make_stream(self.ids) if make_stream is not None else None
        # Fallback path: special tokens add no text (skip_special_tokens) and must not
        # widen the window (the stream skips them itself).
        self._is_special = getattr(tokenizer, "is_special", lambda t: False)

    def add(self, token_ids: list[int]) -> tuple[str, bool]:
        """Append tokens; return (new text, hit a stop string). Text after a stop is dropped.

        With stop strings, the last ``len(longest stop) - 1`` characters are held back (as
        vLLM does): they might begin a stop string, and text once streamed cannot be taken
        back. ``flush`` hands them out when the request finishes otherwise."""
        if self._step is not None:
            step = self._step
            delta = step(token_ids[0]) if len(token_ids) == 1 else "".join(map(step, token_ids))
            if not delta:
                return "", False
            if not self.stop:  # the common case, kept short: it runs per token per request
                self.text += delta
                self._emitted = len(self.text)
                return delta, False
        else:
            token_ids = [t for t in token_ids if not self._is_special(t)]
            if not token_ids:
                return "", False
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
                self.text = self.text[:min(hits)]
                return self.flush(), True
            return self._take(len(self.text) - self._max_stop + 1), False
        return self._take(len(self.text)), False

    def flush(self) -> str:
        """The text not handed out yet (held back for stop strings); call at the end."""
        return self._take(len(self.text))

    @property
    def emitted_text(self) -> str:
        """The text handed out so far: what a client streaming the deltas has seen."""
        return self.text[:self._emitted]

    def _take(self, end: int) -> str:
        end = max(end, self._emitted)
        out, self._emitted = self.text[self._emitted:end], end
        return out

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)
