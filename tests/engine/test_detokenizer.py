"""Incremental detokenization: the native stream path and the window-decode fallback agree
with decoding the whole output at once, for real, preset (folded ids) and byte-level tokenizers."""
import random

import pytest

from podserve.engine.detokenizer import IncrementalDetokenizer
from podserve.model.byte_tokenizer import byte_level_backend
from podserve.model.loader import resolve_model
from podserve.model.presets import PresetTokenizer
from podserve.model.tokenizer import Tokenizer

TEXT = "Héllo wörld — naïve café 🙂🚀 日本語のテキスト\n\tcode: x = {'a': 1}  end"


def tokenizers():
    real = resolve_model(None).tokenizer
    byte = Tokenizer(byte_level_backend(), bos_token_id=0, eos_token_ids=[1], add_bos_token=False)
    return {"smollm2": real, "preset": PresetTokenizer(real, 512), "bytes": byte}


@pytest.fixture(scope="module", params=["smollm2", "preset", "bytes"])
def tok(request):
    return tokenizers()[request.param]


def fallback(tok, prompt, stop=()):
    d = IncrementalDetokenizer(tok, prompt, list(stop))
    d._step = None  # force the two-window-decode path
    return d


def run(detok, ids, chunk=1):
    return "".join(detok.add(ids[i:i + chunk])[0] for i in range(0, len(ids), chunk))


def test_stream_path_is_used_when_available(tok):
    assert IncrementalDetokenizer(tok, [5, 6], [])._step is not None


@pytest.mark.parametrize("chunk", [1, 3])
def test_stream_and_fallback_equal_full_decode(tok, chunk):
    prompt = tok.encode("Prompt: say")
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    # Real text (multi-byte characters split across tokens) and random ids (any id the model
    # may sample, including ids past the tokenizer's vocabulary for presets).
    vocab = getattr(tok, "vocab_size", 512)
    cases = [tok.encode(TEXT, add_special_tokens=False)]
    if chunk == 1:
        # The fallback holds back a whole multi-token add whose text ends mid-character,
        # so on invalid byte runs only one token at a time is comparable.
        cases.append([rng.randrange(vocab) for _ in range(300)])
    for ids in cases:
        native = IncrementalDetokenizer(tok, prompt, [])
        slow = fallback(tok, prompt)
        a, b = run(native, ids, chunk), run(slow, ids, chunk)
        context = prompt[-5:]
        full = tok.decode(context + ids)[len(tok.decode(context)):]
        # A trailing incomplete UTF-8 sequence (random bytes) is never emitted.
        assert a == b == full.rstrip("\ufffd") == native.text, f"seed {seed}"


def test_stop_string_is_never_streamed(tok):
    ids = tok.encode("one two three four five", add_special_tokens=False)
    text = tok.decode(ids)  # presets fold ids: whatever text these ids make
    stop = text[len(text) // 2: len(text) // 2 + 5]
    for d in (IncrementalDetokenizer(tok, [], [stop, "zzzzzzzzz"]), fallback(tok, [], [stop])):
        out, stopped = "", False
        for i in ids:
            delta, stopped = d.add([i])
            out += delta
            assert stop[:2] not in out[text.find(stop) - 1:] or stopped  # no prefix streamed early
            if stopped:
                break
        assert stopped and out == d.text == d.emitted_text == text[:text.find(stop)]


def test_held_back_text_is_flushed_at_the_end(tok):
    ids = tok.encode("one two three", add_special_tokens=False)
    d = IncrementalDetokenizer(tok, [], ["zzzzzzzzzz"])
    streamed = "".join(d.add([i])[0] for i in ids)
    assert len(streamed) < len(d.text)  # the tail is held: it could begin "zzz..."
    assert streamed + d.flush() == d.text == tok.decode(ids)


def test_freeze_heap_is_undone_on_close():
    import gc

    from podserve.engine.engine import Engine
    from podserve.config import CacheConfig, EngineConfig

    before = gc.get_freeze_count()
    engine = Engine(EngineConfig(model="tiny-llama", device="cpu", cache=CacheConfig(num_blocks=64)))
    try:
        engine.freeze_heap()
        assert gc.get_freeze_count() > before  # the model and libraries left the GC's walk
    finally:
        engine.close()
    assert gc.get_freeze_count() == 0
    engine.close()  # idempotent


def test_special_tokens_add_no_text_and_do_not_widen_the_window(tok):
    specials = sorted(tok.special_token_ids)
    assert specials, "every tokenizer here has special tokens"
    words = tok.encode(" one two", add_special_tokens=False)
    ids = words[:1] + specials * 200 + words[1:]
    for d in (IncrementalDetokenizer(tok, [], []), fallback(tok, [], [])):
        assert run(d, ids) == tok.decode(ids) == tok.decode(words)
    slow = fallback(tok, [], [])
    run(slow, specials * 500)
    assert len(slow.ids) == 0  # nothing kept to re-decode on every later token
