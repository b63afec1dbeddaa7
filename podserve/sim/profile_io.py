"""A profile: a versioned directory of CSV tables plus ``meta.json``.

Tables (every time in seconds, medians over repetitions):

- ``linear.csv``: ``op,num_tokens,in_features,out_features,time_s`` -- one GEMM of a layer
  (qkv, o, gate_up, down) or the LM head, at the (possibly tensor-sharded) shape given.
- ``elementwise.csv``: ``op,num_tokens,time_s`` -- per-token work outside GEMMs and
  attention: ``layer_misc`` (norms, RoPE, SwiGLU activation, residual adds of one layer)
  and ``embed``.
- ``attention_prefill.csv``: ``q_len,kv_len,time_s`` -- one layer, one prefill chunk of
  ``q_len`` tokens attending to ``kv_len`` tokens (cached prefix included).
- ``attention_decode.csv``: ``batch_size,sum_kv,max_kv,time_s`` -- one layer, a batch
  of decodes whose contexts sum to ``sum_kv`` (longest ``max_kv``).
- ``cpu_overhead.csv``: ``num_seqs,num_tokens,num_prefills,time_s`` -- per-iteration
  time outside the model forward (scheduling, input preparation, sampling, updates).
- ``engine_forward.csv``: ``num_decodes,decode_sum_kv,decode_max_kv,prefill_chunks,num_sampled,time_s`` (and
  ``graphed``: 1 where the step replayed a CUDA graph; ``meta.json`` then has ``cuda_graph_max_batch``)
  -- whole forwards (model + LM head) of real engine iterations, with the batch that ran
  (``prefill_chunks`` is ``q:start;q:start...``); they calibrate the sum of the operators
  against the forward they make up (optional).
- ``all_reduce.csv``: ``num_workers,size_bytes,time_s`` and ``send_recv.csv``:
  ``size_bytes,time_s`` -- collectives for tensor/pipeline parallelism (optional).

``meta.json`` names the device, model shape, dtype, attention backend, podserve version,
date and where the numbers came from (``source``).
"""
from __future__ import annotations

import csv
import datetime
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

FORMAT_VERSION = 1
TABLES = ("linear", "elementwise", "attention_prefill", "attention_decode", "cpu_overhead", "engine_forward",
          "all_reduce", "send_recv")
REQUIRED = ("linear", "elementwise", "attention_prefill", "attention_decode")
_TEXT_COLUMNS = {"op", "prefill_chunks"}


@dataclass
class Profile:
    """Operator timings of one model on one device (see the module docstring for tables)."""

    meta: dict
    tables: dict[str, list[dict]] = field(default_factory=dict)
    path: Path | None = None

    def table(self, name: str) -> list[dict]:
        """Rows of table ``name`` (empty if the profile lacks it)."""
        return self.tables.get(name, [])

    @property
    def model_config(self):
        """The profiled model's LlamaConfig (shape only)."""
        from podserve.model.config import LlamaConfig

        return LlamaConfig(**self.meta["model_config"])

    def content_hash(self) -> str:
        """Hash of meta and every table: the cache key of the fitted cost model."""
        # The date is provenance, not content: a re-derived identical profile reuses the cached fit.
        h = hashlib.sha256(json.dumps({k: v for k, v in self.meta.items() if k != "date"}, sort_keys=True).encode())
        for name in sorted(self.tables):
            h.update(name.encode())
            for row in self.tables[name]:
                # Numbers as floats: a table read back from CSV hashes like the one written.
                row = {k: v if isinstance(v, str) else float(v) for k, v in row.items()}
                h.update(json.dumps(row, sort_keys=True).encode())
        return h.hexdigest()[:16]

    def save(self, directory: str | Path) -> Path:
        """Write ``meta.json`` and one CSV per non-empty table."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "meta.json").write_text(json.dumps(self.meta, indent=2, sort_keys=True))
        for name, rows in self.tables.items():
            if not rows:
                continue
            with open(directory / f"{name}.csv", "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
        self.path = directory
        return directory


def load_profile(directory: str | Path) -> Profile:
    """Read a profile directory; raise ValueError naming what is missing or malformed."""
    directory = Path(directory)
    meta_path = directory / "meta.json"
    if not meta_path.is_file():
        raise ValueError(f"{directory} is not a podserve profile: no meta.json (run `podserve profile` or import one)")
    meta = json.loads(meta_path.read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{directory}: profile format {meta.get('format_version')} is not {FORMAT_VERSION}; re-run `podserve profile`")
    tables = {}
    for name in TABLES:
        path = directory / f"{name}.csv"
        if path.is_file():
            with open(path, newline="") as f:
                tables[name] = [{k: (v if k in _TEXT_COLUMNS else float(v)) for k, v in row.items()} for row in csv.DictReader(f)]
    missing = [t for t in REQUIRED if not tables.get(t)]
    if missing:
        raise ValueError(f"{directory}: profile lacks table(s) {', '.join(missing)}")
    return Profile(meta, tables, directory)


def base_meta(*, device: str, device_name: str, model_name: str, model_config, dtype: str, dtype_bytes: int,
              attention: str, source: str, **extra) -> dict:
    """The fields every profile's meta.json carries."""
    from dataclasses import asdict

    import podserve

    cfg = {k: v for k, v in asdict(model_config).items()}
    return {
        "format_version": FORMAT_VERSION,
        "podserve_version": podserve.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device,
        "device_name": device_name,
        "model": model_name,
        "model_config": cfg,
        "dtype": dtype,
        "dtype_bytes": dtype_bytes,
        "attention": attention,
        "source": source,
        **extra,
    }
