"""The offline API on the default model: sampling, stops, detokenization, bad input, aborts."""
from __future__ import annotations

import subprocess
import sys

import pytest

from podserve import SamplingParams
from podserve.engine.detokenizer import IncrementalDetokenizer


def test_chat_answers_paris(default_llm):
    out = default_llm.chat([{"role": "user", "content": "What is the capital of France?"}],
                           SamplingParams(max_tokens=24, temperature=0))
    assert "Paris" in out[0].outputs[0].text
    assert out[0].outputs[0].finish_reason == "stop"


def test_outputs_come_back_in_input_order(default_llm):
    prompts = ["One", "Two two two two two two two two two two", "Three three"]
    outs = default_llm.generate(prompts, SamplingParams(max_tokens=4, temperature=0), use_tqdm=False)
    assert [o.prompt for o in outs] == prompts
    tok = default_llm.get_tokenizer()
    assert [o.prompt_token_ids for o in outs] == [tok.encode(p) for p in prompts]


def test_token_id_prompts_are_accepted(default_llm):
    ids = default_llm.get_tokenizer().encode("Hello there")
    by_text, by_ids = default_llm.generate(["Hello there", ids], SamplingParams(max_tokens=8, temperature=0), use_tqdm=False)
    assert by_text.outputs[0].token_ids == by_ids.outputs[0].token_ids


def test_seeded_sampling_ignores_batch_neighbours(default_llm):
    p = SamplingParams(max_tokens=16, temperature=1.0, top_p=0.9, top_k=50, seed=1234)
    alone = default_llm.generate(["Tell me a story"], p, use_tqdm=False)[0].outputs[0].token_ids
    crowd = default_llm.generate(
        ["Tell me a story", "Another prompt entirely", "x" * 50],
        [p, SamplingParams(max_tokens=16, temperature=1.0), SamplingParams(max_tokens=16, temperature=0.5, seed=9)],
        use_tqdm=False,
    )
    assert crowd[0].outputs[0].token_ids == alone
    other_seed = default_llm.generate(["Tell me a story"], SamplingParams(max_tokens=16, temperature=1.0, top_p=0.9, top_k=50, seed=4321), use_tqdm=False)
    assert other_seed[0].outputs[0].token_ids != alone


def test_top_k_one_is_greedy(default_llm):
    greedy = default_llm.generate(["The sky is"], SamplingParams(max_tokens=12, temperature=0), use_tqdm=False)
    top1 = default_llm.generate(["The sky is"], SamplingParams(max_tokens=12, temperature=1.3, top_k=1), use_tqdm=False)
    assert greedy[0].outputs[0].token_ids == top1[0].outputs[0].token_ids


def test_stop_string_truncates_and_stops(default_llm):
    free = default_llm.generate(["1, 2, 3, 4,"], SamplingParams(max_tokens=24, temperature=0), use_tqdm=False)[0]
    text = free.outputs[0].text
    assert " 7" in text, text  # the model counts on; pick a stop string it will produce
    stopped = default_llm.generate(["1, 2, 3, 4,"], SamplingParams(max_tokens=24, temperature=0, stop=[" 7"]), use_tqdm=False)[0]
    assert stopped.outputs[0].text == text[: text.index(" 7")]
    assert stopped.outputs[0].finish_reason == "stop"
    assert len(stopped.outputs[0].token_ids) < len(free.outputs[0].token_ids)


def test_stop_token_ids_end_generation(default_llm):
    free = default_llm.generate(["1, 2, 3, 4,"], SamplingParams(max_tokens=12, temperature=0), use_tqdm=False)[0]
    ids = free.outputs[0].token_ids
    stop_id = ids[3]
    out = default_llm.generate(["1, 2, 3, 4,"], SamplingParams(max_tokens=12, temperature=0, stop_token_ids=[stop_id]), use_tqdm=False)[0]
    assert out.outputs[0].token_ids == ids[: ids.index(stop_id) + 1]
    assert out.outputs[0].finish_reason == "stop"


def test_metrics_timestamps_are_ordered(default_llm):
    out = default_llm.generate(["Time me"], SamplingParams(max_tokens=6, temperature=0, ignore_eos=True), use_tqdm=False)[0]
    m = out.metrics
    assert m.arrival_time <= m.first_scheduled_time <= m.first_token_time <= m.finished_time
    assert len(m.token_times) == 6 and m.token_times == sorted(m.token_times)
    assert m.token_times[0] == m.first_token_time


def test_incremental_detokenization_equals_full_decode(default_llm):
    tok = default_llm.get_tokenizer()
    text = "Héllo wörld — naïve café 🙂🚀 日本語のテキスト\n\tcode: x = {'a': 1}  end"
    ids = tok.encode(text)
    prompt = tok.encode("Prompt:")
    detok = IncrementalDetokenizer(tok, prompt, stop=[])
    pieces = "".join(detok.add([i])[0] for i in ids)
    assert pieces == tok.decode(ids) == detok.text


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"max_tokens": -1}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": -0.5}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -2}, "top_k"),
        ({"min_p": 2.0}, "min_p"),
        ({"temperature": float("nan")}, "temperature"),
        ({"stop": [""]}, "stop"),
    ],
)
def test_invalid_sampling_params_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**kwargs)


def test_bad_requests_leave_the_engine_serving(default_llm):
    engine = default_llm.engine
    too_long = [5] * engine.max_model_len
    with pytest.raises(ValueError, match="context length"):
        default_llm.generate(["fine", too_long], SamplingParams(max_tokens=4), use_tqdm=False)
    with pytest.raises(ValueError, match="token ids"):
        default_llm.generate([[10**9]], SamplingParams(max_tokens=4), use_tqdm=False)
    assert not engine.has_unfinished_requests()
    assert engine.kv.num_free_blocks == engine.kv.num_blocks
    out = default_llm.generate(["Still alive?"], SamplingParams(max_tokens=4, temperature=0), use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) == 4


def test_abort_frees_kv_mid_generation(default_llm):
    engine = default_llm.engine
    rids = [engine.add_request("Count to a hundred:", SamplingParams(max_tokens=64, ignore_eos=True)).request_id for _ in range(4)]
    for _ in range(5):
        engine.step()
    assert engine.kv.num_free_blocks < engine.kv.num_blocks
    for rid in rids:
        engine.abort_request(rid)
    assert not engine.has_unfinished_requests()
    assert engine.kv.num_free_blocks == engine.kv.num_blocks
    assert engine.step() == []


def test_missing_model_path_is_one_clear_line(tmp_path):
    from podserve import LLM
    from podserve.model.errors import ModelLoadError

    with pytest.raises(ModelLoadError) as err:
        LLM(str(tmp_path / "nope"))
    assert str(tmp_path / "nope") in str(err.value) and "\n" not in str(err.value)


def test_cli_generate_chat_answers_paris():
    proc = subprocess.run(
        [sys.executable, "-m", "podserve.entrypoints.cli", "generate", "--chat", "--temperature", "0",
         "--max-tokens", "24", "What is the capital of France?"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Paris" in proc.stdout


def test_cli_bad_model_path_exits_with_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "podserve.entrypoints.cli", "generate", "--model", str(tmp_path / "missing"), "hi"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "missing" in proc.stderr


def test_bfloat16_on_cpu_tracks_float32(tmp_path):
    """bf16 weights and activations run on CPU and agree with float32 on the first tokens."""
    import torch

    from podserve import LLM
    from tests.engine.tiny_model import write_tiny_llama

    write_tiny_llama(tmp_path, seed=3)
    prompts = [[5, 9, 33, 71, 100, 12, 7, 8], [200, 201, 202]]
    p = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True)
    f32 = LLM(str(tmp_path), dtype="float32")
    b16 = LLM(str(tmp_path), dtype="bfloat16")
    assert b16.engine.runner.model.embed_tokens.weight.dtype == torch.bfloat16
    assert b16.engine.runner.kv_pool.caches[0][0].dtype == torch.bfloat16
    a = [o.outputs[0].token_ids[:2] for o in f32.generate(prompts, p, use_tqdm=False)]
    b = [o.outputs[0].token_ids[:2] for o in b16.generate(prompts, p, use_tqdm=False)]
    assert a == b


def test_cli_chat_loop_answers_and_exits():
    proc = subprocess.run(
        [sys.executable, "-m", "podserve.entrypoints.cli", "chat", "--temperature", "0", "--max-tokens", "24"],
        input="What is the capital of France?\n\n", capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Paris" in proc.stdout


def test_vanishing_temperature_samples_greedily(default_llm):
    greedy = default_llm.generate(["The sky is"], SamplingParams(max_tokens=8, temperature=0), use_tqdm=False)
    tiny = default_llm.generate(["The sky is"], SamplingParams(max_tokens=8, temperature=6e-121), use_tqdm=False)
    assert tiny[0].outputs[0].token_ids == greedy[0].outputs[0].token_ids


def test_generate_builds_only_finished_outputs_and_restores_streaming():
    from podserve.engine.llm import LLM

    llm = LLM(model="tiny-llama", device="cpu")
    params = SamplingParams(max_tokens=7, temperature=0, ignore_eos=True)
    outs = llm.generate([[3, 4, 5], [9] * 20], params, use_tqdm=False)
    assert llm.engine.emit_unfinished  # streaming users of the same engine still get every step
    assert [len(o.outputs[0].token_ids) for o in outs] == [7, 7]
    # The same requests streamed step by step end with the same tokens and text.
    eng = llm.engine
    for p in ([3, 4, 5], [9] * 20):
        eng.add_request(p, params)
    streamed, final = {}, {}
    while eng.has_unfinished_requests():
        for o in eng.step():
            streamed.setdefault(o.request_id, []).extend(o.delta_token_ids)
            if o.finished:
                final[o.request_id] = o
    assert sorted(len(v) for v in streamed.values()) == [7, 7]
    assert sorted(o.outputs[0].token_ids for o in final.values()) == sorted(o.outputs[0].token_ids for o in outs)
    assert sorted(o.outputs[0].text for o in final.values()) == sorted(o.outputs[0].text for o in outs)
