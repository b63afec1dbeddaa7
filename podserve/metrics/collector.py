"""MetricsCollector: the one sink the engine and the simulator both report to."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from podserve.core.batch import ScheduledBatch
from podserve.metrics.records import IterationRecord, RequestMetrics
from podserve.metrics.summary import distribution, host_device_split, piggyback_table
from podserve.request import Request


class MetricsCollector:
    """Accumulates per-request and per-iteration records and summarises them.

    Times are whatever clock the caller uses (wall-clock seconds in the engine, virtual
    seconds in the simulator); only differences are reported.
    """

    def __init__(self):
        self.requests: list[RequestMetrics] = []
        self._iterations: list[IterationRecord] = []
        self._pending: list[tuple[IterationRecord, object]] = []  # device time still to come
        self.pipeline: dict | None = None
        """``PipelineStats.summary()`` of the run (tensor/pipeline-parallel engines): per-stage
        busy time and the bubble fraction; reported as ``summary()["pipeline"]``."""

    @property
    def iterations(self) -> list[IterationRecord]:
        """Every recorded iteration, with the device times that have arrived since."""
        if self._pending:
            keep = []
            for record, timing in self._pending:
                if timing.gpu_s is None:
                    keep.append((record, timing))
                else:
                    record.gpu_time = timing.gpu_s
            self._pending = keep
        return self._iterations

    # --- feeding -----------------------------------------------------------------------
    def on_iteration(self, batch: ScheduledBatch, start: float, end: float, timing=None) -> None:
        """Record one executed batch that ran from ``start`` to ``end``; ``timing`` (an
        ``IterationTiming``) adds its host/device split, the device part possibly later."""
        if batch.is_empty:
            return
        record = IterationRecord.from_batch(batch, start, end)
        if timing is not None:
            record.cpu_time = timing.cpu_s
            record.gpu_time = timing.gpu_s
            if timing.gpu_s is None:
                self._pending.append((record, timing))
        self._iterations.append(record)

    def on_request_finished(self, request: Request) -> None:
        """Record a request once it has finished (any reason, aborts included)."""
        self.requests.append(RequestMetrics.from_request(request))

    # --- summaries ---------------------------------------------------------------------
    def completed(self) -> list[RequestMetrics]:
        """Requests that ran to their end (aborted ones excluded)."""
        return [r for r in self.requests if r.finish_reason not in (None, "abort")]

    def summary(self) -> dict:
        """Latency distributions, throughput and iteration statistics as plain JSON data."""
        done = self.completed()
        tbt = [x for r in done for x in r.tbt]
        out: dict = {
            "num_requests": len(self.requests),
            "num_completed": len(done),
            "num_aborted": len(self.requests) - len(done),
            "num_preemptions": int(sum(r.num_preemptions for r in self.requests)),
            "scheduling_delay": distribution(r.scheduling_delay for r in done),
            "ttft": distribution(r.ttft for r in done),
            "tbt": distribution(tbt),
            "e2e": distribution(r.e2e for r in done),
            "normalized_e2e": distribution(r.normalized_e2e for r in done),
        }
        if done:
            start = min(r.arrival for r in done)
            end = max(r.arrival + r.e2e for r in done if r.e2e is not None)
            span = max(end - start, 1e-12)
            out["duration_s"] = end - start
            out["throughput_requests_per_s"] = len(done) / span
            out["throughput_output_tokens_per_s"] = sum(r.num_output_tokens for r in done) / span
            out["throughput_total_tokens_per_s"] = sum(r.num_output_tokens + r.num_prompt_tokens for r in done) / span
        out["iterations"] = self.iteration_summary()
        if self.pipeline is not None:
            out["pipeline"] = self.pipeline
        return out

    def iteration_summary(self) -> dict:
        its = self.iterations
        by_kind = {k: distribution(it.duration for it in its if it.kind == k) for k in ("decode", "prefill", "hybrid")}
        return {
            "count": len(its),
            "duration": distribution(it.duration for it in its),
            "duration_by_kind": by_kind,
            **host_device_split(its),
            "batch_size_mean": float(np.mean([it.batch_size for it in its])) if its else None,
            "tokens_mean": float(np.mean([it.num_prefill_tokens + it.num_decode_tokens for it in its])) if its else None,
            "piggyback": piggyback_table(its),
        }

    # --- export ------------------------------------------------------------------------
    def write_csv(self, directory: str | Path, prefix: str = "") -> tuple[Path, Path]:
        """Write ``{prefix}requests.csv`` and ``{prefix}iterations.csv``; return their paths."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        paths = directory / f"{prefix}requests.csv", directory / f"{prefix}iterations.csv"
        for path, rows, fields in (
            (paths[0], [r.row() for r in self.requests], _request_fields()),
            (paths[1], [it.row() for it in self.iterations], _iteration_fields()),
        ):
            with open(path, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=fields)
                writer.writeheader()
                writer.writerows(rows)
        return paths

    def to_json(self, include_records: bool = False) -> dict:
        data = {"summary": self.summary()}
        if include_records:
            data["requests"] = [r.row() for r in self.requests]
            data["iterations"] = [it.row() for it in self.iterations]
        return data

    def write_json(self, path: str | Path, include_records: bool = False, extra: dict | None = None) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**(extra or {}), **self.to_json(include_records)}, indent=2))
        return path


def _request_fields() -> list[str]:
    return list(RequestMetrics("", 0.0, 0, 0, None, 0, None, None, None).row())


def _iteration_fields() -> list[str]:
    return list(IterationRecord(0, 0.0, 0.0, 0, 0, 0, 0, 0, 0).row())
