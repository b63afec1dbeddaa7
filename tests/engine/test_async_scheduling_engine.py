"""The one-process engine with asynchronous scheduling forced on (CPU): two steps in flight,
decodes fed on the device from the previous step's samples, same tokens as synchronous."""
from __future__ import annotations

import random

import pytest

from podserve import LLM, SamplingParams
from podserve.config import CacheConfig, EngineConfig, ParallelConfig, SchedulerConfig
from tests.engine.tiny_model import write_tiny_llama


def _llm(path, policy, overlap, **sched):
    config = EngineConfig(model=str(path), max_model_len=256,
                          scheduler=SchedulerConfig(policy=policy, **sched),
                          cache=CacheConfig(num_blocks=128),
                          parallel=ParallelConfig(async_scheduling=overlap))
    return LLM.from_config(config)


@pytest.mark.parametrize("policy,sched", [("sarathi", dict(chunk_size=16, max_num_seqs=3)),
                                          ("vllm", dict(max_num_batched_tokens=256, max_num_seqs=4))])
def test_async_engine_gives_the_synchronous_tokens(tmp_path, policy, sched):
    write_tiny_llama(tmp_path, seed=random.randrange(1 << 30))
    rng = random.Random(0)
    prompts = [[rng.randrange(2, 258) for _ in range(n)] for n in (5, 37, 21, 12, 3, 60)]
    sync = _llm(tmp_path, policy, False, **sched)
    greedy = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    reference = [o.outputs[0].token_ids for o in sync.generate(prompts, greedy, use_tqdm=False)]
    # Stop tokens taken from the reference make some requests end early, mid-flight.
    stops = sorted({t[4] for t in reference})
    stopping = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True, stop_token_ids=stops)
    seeded = SamplingParams(max_tokens=9, temperature=0.8, top_p=0.9, seed=7, ignore_eos=True)
    expected = {name: [o.outputs[0].token_ids for o in sync.generate(prompts, p, use_tqdm=False)]
                for name, p in (("stop", stopping), ("seeded", seeded))}
    llm = _llm(tmp_path, policy, True, **sched)
    assert llm.engine.async_scheduling
    pending = []
    submit = llm.engine.runner.submit
    llm.engine.runner.submit = lambda b: pending.append(sum(s.token_ids[0] == -1 for s in b.seqs[:b.num_decodes])) or submit(b)
    assert [o.outputs[0].token_ids for o in llm.generate(prompts, greedy, use_tqdm=False)] == reference
    assert sum(pending) > 0, "no decode was scheduled with its token pending"
    for name, p in (("stop", stopping), ("seeded", seeded)):
        assert [o.outputs[0].token_ids for o in llm.generate(prompts, p, use_tqdm=False)] == expected[name], name
    assert any(len(t) < 12 for t in expected["stop"])
    assert not llm.engine.has_unfinished_requests()
    assert llm.engine.kv.num_free_blocks == llm.engine.kv.num_blocks


def test_async_scheduling_is_refused_with_virtual_kv(tmp_path):
    write_tiny_llama(tmp_path)
    with pytest.raises(ValueError, match="async_scheduling needs paged KV"):
        LLM.from_config(EngineConfig(model=str(tmp_path), max_model_len=256, cache=CacheConfig(kv_layout="virtual"),
                                     parallel=ParallelConfig(async_scheduling=True)))


def test_stop_strings_and_text_match_the_synchronous_engine(tmp_path):
    """Stop strings are matched before the next step is scheduled; other requests' text is
    decoded after it went out: texts, tokens and finish reasons stay those of the plain loop."""
    write_tiny_llama(tmp_path, seed=random.randrange(1 << 30))
    rng = random.Random(1)
    prompts = [[rng.randrange(2, 258) for _ in range(n)] for n in (9, 30, 17, 4)]
    sync = _llm(tmp_path, "sarathi", False, chunk_size=16, max_num_seqs=4)
    greedy = SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True)
    texts = [o.outputs[0].text for o in sync.generate(prompts, greedy, use_tqdm=False)]
    stop = next(t[len(t) // 2: len(t) // 2 + 2] for t in texts if len(t) >= 6 and t[len(t) // 2: len(t) // 2 + 2].strip())
    mixed = [SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True, stop=[stop] if i % 2 == 0 else [])
             for i in range(len(prompts))]

    def run(llm):
        return [(o.outputs[0].text, o.outputs[0].token_ids, o.outputs[0].finish_reason)
                for o in llm.generate(prompts, mixed, use_tqdm=False)]

    expected = run(sync)
    llm = _llm(tmp_path, "sarathi", True, chunk_size=16, max_num_seqs=4)
    in_flight_while_building = []
    build = llm.engine._outputs
    llm.engine._outputs = lambda applied: in_flight_while_building.append(len(llm.engine._pending)) or build(applied)
    assert run(llm) == expected
    assert any(reason == "stop" for _, _, reason in expected)
    # Outputs are built while the next step is already in flight (except at the very end).
    assert max(in_flight_while_building) == 2
    assert not llm.engine.has_unfinished_requests()
    assert llm.engine.kv.num_free_blocks == llm.engine.kv.num_blocks
