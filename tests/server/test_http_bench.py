"""``podserve bench --http``: the bench workload over the OpenAI API, against the live server."""
from __future__ import annotations

import json

from podserve.bench.http_client import HttpRequestSpec, percentile, run_http
from podserve.entrypoints.cli import main


def test_run_http_measures_every_request(server):
    specs = [HttpRequestSpec(0.05 * i, [100 + i, 200, 300], 4) for i in range(4)] + [HttpRequestSpec(0.0, "Hello", 3)]
    records, wall = run_http(server.base_url, specs, max_concurrency=3)
    assert [r.error for r in records] == [None] * 5
    assert [r.num_output_tokens for r in records] == [4, 4, 4, 4, 3]
    for r in records:
        assert 0 < r.ttft < wall and r.first_token_time == r.chunk_times[0]
        assert all(t >= 0 for t in r.tbts)


def test_bench_cli_http_mode_writes_results(server, tmp_path, capsys):
    rc = main(["bench", "--http", server.base_url, "--lengths", "fixed", "--prompt-tokens", "8", "--output-tokens", "3",
               "--num-requests", "4", "--arrival", "static", "--output-dir", str(tmp_path), "--no-plots"])
    assert rc == 0
    result = json.loads((tmp_path / "results_http.json").read_text())
    assert result["summary"]["num_errors"] == 0 and result["summary"]["output_tokens"] == 12
    assert [r["num_output_tokens"] for r in result["requests"]] == [3, 3, 3, 3]
    assert "output tok/s" in capsys.readouterr().out


def test_percentile_interpolates():
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([5.0], 99) == 5.0
