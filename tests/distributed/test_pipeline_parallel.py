"""Pipeline parallelism over gloo: stages in worker processes, micro-batches really in flight
together, the same greedy tokens as one stage, and a measured bubble fraction."""
from __future__ import annotations

from podserve import LLM
from tests.distributed.parallel_helpers import ENGINE, GREEDY, PROMPTS, assert_gone, generate_tokens



def _step_all(engine) -> tuple[list[list[int]], int]:
    """Greedy tokens of PROMPTS stepped through ``engine`` (in prompt order), and the most
    micro-batches it had in flight after a step."""
    for prompt in PROMPTS:
        engine.add_request(prompt, GREEDY)
    most_in_flight, tokens = 0, {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                tokens[int(out.request_id)] = out.outputs[0].token_ids
        # step() refills the pipeline before it returns (the next micro-batch goes out
        # before the collected one's outputs are built)
        most_in_flight = max(most_in_flight, engine.runner.num_in_flight)
    return [tokens[i] for i in range(len(PROMPTS))], most_in_flight

def test_pp2_pipelines_micro_batches_and_matches_pp1(tiny_llama_dir, reference_tokens):
    with LLM(tiny_llama_dir, pipeline_parallel_size=2, **ENGINE) as llm:
        engine = llm.engine
        pids = engine.runner.pids
        tokens, most_in_flight = _step_all(engine)
        assert tokens == reference_tokens
        assert most_in_flight == 2
        stats = engine.pipeline_stats.summary()
        assert stats["num_stages"] == 2 and all(b > 0 for b in stats["stage_busy_s"])
        assert 0.0 <= stats["bubble_fraction"] < 1.0
        # The engine can be reused after a drained run.
        assert generate_tokens(llm, PROMPTS[:1]) == reference_tokens[:1]
    assert_gone(pids)


def test_pp2_with_three_micro_batches_in_flight_matches_pp1(tiny_llama_dir, reference_tokens):
    # pipeline_microbatches=3: stage 0 holds a queued micro-batch while one returns; the
    # workers take three in flight (sends and receives in order) and the tokens are unchanged.
    with LLM(tiny_llama_dir, pipeline_parallel_size=2, pipeline_microbatches=3, **ENGINE) as llm:
        engine = llm.engine
        tokens, most_in_flight = _step_all(engine)
        assert tokens == reference_tokens
        assert most_in_flight == 3
        assert engine.pipeline_stats.summary()["num_stages"] == 2
        assert generate_tokens(llm) == reference_tokens  # again, through generate()


def test_tp2_pp2_together_match_one_device(tiny_llama_dir, reference_tokens):
    with LLM(tiny_llama_dir, tensor_parallel_size=2, pipeline_parallel_size=2, **ENGINE) as llm:
        assert len(llm.engine.runner.pids) == 4
        assert generate_tokens(llm) == reference_tokens


def test_bench_summary_reports_the_bubble_fraction(tiny_llama_dir):
    from podserve.bench.report import format_summary
    from podserve.bench.runner import run_workload
    from podserve.bench.workloads import WorkloadRequest

    with LLM(tiny_llama_dir, pipeline_parallel_size=2, **ENGINE) as llm:
        run = run_workload(llm.engine, [WorkloadRequest(0.0, 24, 6) for _ in range(6)])
    summary = run.collector.summary()
    assert summary["num_completed"] == 6
    assert summary["pipeline"]["num_stages"] == 2
    assert "bubble fraction" in format_summary(summary)


def test_pp2_long_prompt_chunks_fill_consecutive_micro_batches(tiny_llama_dir):
    # A lone 120-token prompt with chunk 16: its chunks run back to back in both micro-batches
    # (each stage has written a chunk's KV before it meets the next), and the tokens are unchanged.
    prompt = [(7 * i + 3) % 250 + 1 for i in range(120)]
    expected = generate_tokens(LLM(tiny_llama_dir, **ENGINE), [prompt])
    with LLM(tiny_llama_dir, pipeline_parallel_size=2, **ENGINE) as llm:
        engine = llm.engine
        engine.add_request(prompt, GREEDY)
        chunk_batches, tokens = 0, None
        while engine.has_unfinished_requests():
            outs = engine.step()
            chunk_batches = max(chunk_batches, engine.runner.num_in_flight)  # refilled before step() returns
            for out in outs:
                if out.finished:
                    tokens = out.outputs[0].token_ids
        assert [tokens] == expected
        assert chunk_batches == 2  # two chunks of one request were in the pipeline at once
