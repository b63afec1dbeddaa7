"""Tokenizer: a Hugging Face fast tokenizer plus the model's special tokens and chat template."""
from __future__ import annotations

import json
from pathlib import Path

import gguf
from tokenizers import Tokenizer as BackendTokenizer

from podserve.model.chat_template import render_chat_template
from podserve.model.gguf_tokenizer import build_gguf_tokenizer

# Special tokens that end an assistant turn in common chat templates. When the template uses
# one of them, generation must stop on it even if config.json names a different EOS.
_END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "</s>")


class Tokenizer:
    """Text <-> token ids for one model, with its chat template.

    Build with :meth:`from_hf_dir` or :meth:`from_gguf`. ``encode`` adds BOS only when the model
    asks for it (``add_bos_token``); special tokens written in the text (``<|im_start|>``) are
    always matched whole.
    """

    def __init__(
        self,
        backend: BackendTokenizer,
        *,
        bos_token_id: int | None,
        eos_token_ids: list[int],
        add_bos_token: bool,
        add_eos_token: bool = False,
        chat_template: str | None = None,
        pad_token_id: int | None = None,
        unk_token_id: int | None = None,
    ):
        self.backend = backend
        self.bos_token_id = bos_token_id
        self.add_bos_token = add_bos_token
        self.add_eos_token = add_eos_token
        self.chat_template = chat_template
        self.pad_token_id = pad_token_id
        self.unk_token_id = unk_token_id
        self.eos_token_ids = _dedupe(eos_token_ids + _turn_terminators(backend, chat_template))
        """Ids that end generation: model EOS first, then the chat template's end-of-turn token."""

    # ---- constructors -------------------------------------------------------------------------

    @classmethod
    def from_hf_dir(cls, path: str | Path, config_eos_token_ids: list[int] | None = None) -> "Tokenizer":
        """Load ``tokenizer.json`` + ``tokenizer_config.json`` (+ ``chat_template.jinja``) from ``path``.

        ``config_eos_token_ids`` (from config.json / generation_config.json) are merged into
        ``eos_token_ids``.
        """
        path = Path(path)
        backend = BackendTokenizer.from_file(str(path / "tokenizer.json"))
        cfg = _read_json(path / "tokenizer_config.json")
        special = {name: _token_content(cfg.get(name)) for name in ("bos_token", "eos_token", "pad_token", "unk_token")}
        ids = {name: backend.token_to_id(tok) if tok else None for name, tok in special.items()}

        chat_template = cfg.get("chat_template")
        if isinstance(chat_template, list):  # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
            named = {t["name"]: t["template"] for t in chat_template}
            chat_template = named.get("default") or next(iter(named.values()), None)
        jinja_file = path / "chat_template.jinja"
        if jinja_file.is_file():  # transformers >= 4.43 saves the template here instead
            chat_template = jinja_file.read_text()

        bos_id = ids["bos_token"]
        if "add_bos_token" in cfg:
            add_bos = bool(cfg["add_bos_token"])
        else:
            # No explicit flag: trust tokenizer.json's post-processor (Llama-3 adds <|begin_of_text|>).
            probe = backend.encode("", add_special_tokens=True).ids
            add_bos = bos_id is not None and probe[:1] == [bos_id]
        eos = list(config_eos_token_ids or []) + ([ids["eos_token"]] if ids["eos_token"] is not None else [])
        tok = cls(
            backend,
            bos_token_id=bos_id,
            eos_token_ids=eos,
            add_bos_token=add_bos,
            add_eos_token=bool(cfg.get("add_eos_token", False)),
            chat_template=chat_template,
            pad_token_id=ids["pad_token"],
            unk_token_id=ids["unk_token"],
        )
        return tok

    @classmethod
    def from_gguf(cls, reader: gguf.GGUFReader) -> "Tokenizer":
        """Build from a GGUF file's ``tokenizer.*`` metadata (see gguf_tokenizer.py)."""
        info = build_gguf_tokenizer(reader)
        eos = [i for i in (info.eos_token_id, info.eot_token_id) if i is not None]
        return cls(
            info.backend,
            bos_token_id=info.bos_token_id,
            eos_token_ids=eos,
            add_bos_token=info.add_bos_token,
            add_eos_token=info.add_eos_token,
            chat_template=info.chat_template,
            pad_token_id=info.pad_token_id,
            unk_token_id=info.unk_token_id,
        )

    # ---- text <-> ids -------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of ids the tokenizer can produce (added tokens included)."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``; BOS (and EOS) are added only if the model's config says so."""
        # The backend's post-processor is bypassed so that BOS follows add_bos_token alone.
        ids = self.backend.encode(text, add_special_tokens=False).ids
        if add_special_tokens:
            if self.add_bos_token and self.bos_token_id is not None:
                ids = [self.bos_token_id] + ids
            if self.add_eos_token and self.eos_token_ids:
                ids = ids + [self.eos_token_ids[0]]
        return ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        """Text of ``ids``; special tokens are dropped unless ``skip_special_tokens=False``."""
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def decode_stream(self, context_ids: list[int], skip_special_tokens: bool = True):
        """A callable ``step(token_id) -> str`` giving the text each new token adds after
        ``context_ids`` ("" while a UTF-8 character is incomplete), or None when this
        ``tokenizers`` has no primed ``DecodeStream`` (0.22+). One native call per token,
        against two window decodes in ``IncrementalDetokenizer``'s fallback."""
        try:
            from tokenizers.decoders import DecodeStream

            stream = DecodeStream(ids=[self._fold(i) for i in context_ids],
                                  skip_special_tokens=skip_special_tokens)
        except (ImportError, TypeError):
            return None
        backend, fold, native = self.backend, self._fold, stream.step
        skip = self.special_token_ids if skip_special_tokens else frozenset()
        if type(self)._fold is Tokenizer._fold:  # no id mapping: one call less per token
            return lambda t: "" if t in skip else native(backend, t) or ""
        return lambda t: "" if fold(t) in skip else native(backend, fold(t)) or ""

    @property
    def special_token_ids(self) -> frozenset[int]:
        """Ids of the special tokens (``skip_special_tokens`` drops them from text).

        Incremental decoders skip these ids before decoding: fed to a stream they add no
        text, so the undecoded window would grow with every one of them (a model repeating
        an end-of-turn token under ``ignore_eos`` made each step's decode cost O(n))."""
        ids = self.__dict__.get("_special_ids")
        if ids is None:
            ids = frozenset(i for i, t in self.backend.get_added_tokens_decoder().items() if t.special)
            self.__dict__["_special_ids"] = ids
        return ids

    def is_special(self, token_id: int) -> bool:
        """Whether ``token_id`` decodes to a special token (no text when skipping them)."""
        return self._fold(token_id) in self.special_token_ids

    def _fold(self, token_id: int) -> int:
        """The id the backend decodes for ``token_id`` (identity; presets fold into range)."""
        return token_id

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str | None]:
        """Vocabulary strings of ``ids`` (byte-level spelling, e.g. 'Ġworld')."""
        return [self.backend.id_to_token(i) for i in ids]

    def token_to_id(self, token: str) -> int | None:
        """Id of vocabulary string ``token`` or None."""
        return self.backend.token_to_id(token)

    # ---- chat ---------------------------------------------------------------------------------

    @property
    def special_tokens(self) -> dict[str, str | None]:
        """Template variables bos_token/eos_token/pad_token/unk_token as strings."""
        name = lambda i: self.backend.id_to_token(i) if i is not None else None  # noqa: E731
        return {
            "bos_token": name(self.bos_token_id),
            "eos_token": name(self.eos_token_ids[0] if self.eos_token_ids else None),
            "pad_token": name(self.pad_token_id),
            "unk_token": name(self.unk_token_id),
        }

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True, **kwargs) -> str:
        """Render ``messages`` with the model's own chat template (a string, not ids).

        Encode the result with ``encode(text, add_special_tokens=False)`` when the template
        already writes the BOS token. Raises ChatTemplateError if the model has no template.
        """
        return render_chat_template(
            self.chat_template,
            messages,
            add_generation_prompt=add_generation_prompt,
            special_tokens=self.special_tokens,
            **kwargs,
        )


def _turn_terminators(backend: BackendTokenizer, chat_template: str | None) -> list[int]:
    if not chat_template:
        return []
    found = [backend.token_to_id(t) for t in _END_OF_TURN_TOKENS if t in chat_template]
    return [i for i in found if i is not None]


def _dedupe(ids: list[int]) -> list[int]:
    return list(dict.fromkeys(ids))


def _token_content(tok) -> str | None:
    # tokenizer_config.json writes special tokens either as strings or as AddedToken dicts.
    if isinstance(tok, dict):
        return tok.get("content")
    return tok


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}
