"""Fit the execution-time predictors of a profile (scikit-learn) and cross-validate them.

Each operator gets a non-negative linear model over roofline features (see
``features.py``), fitted by relative least squares (sample weight 1/time^2) so a 10 us
decode GEMM counts as much as a 10 ms prefill. Non-negative coefficients keep every
prediction monotone in FLOPs and bytes, which is what makes extrapolation safe.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from podserve.sim import features as F
from podserve.sim.profile_io import Profile

CV_FOLDS = 5


@dataclass
class LinearPredictor:
    """``time = (intercept + features @ coef) * exp(correction(shape))``.

    The first factor is the roofline part: non-negative in FLOPs and bytes, so it scales
    to shapes never profiled. The optional correction is a distance-weighted 2-nearest-
    neighbour interpolation of log(measured / roofline) over log-shape coordinates: it
    captures what a roofline cannot (a BLAS kernel switch, cache-size cliffs) inside the
    profiled grid, and holds the nearest edge's ratio outside it.
    """

    coef: np.ndarray
    intercept: float
    correction: object | None = None
    """sklearn regressor over ``log`` shape coordinates, or None."""
    cv_mape: float | None = None
    """Cross-validated mean absolute percentage error on the profile rows (fraction)."""
    cv_p90_ape: float | None = None
    num_rows: int = 0

    def base(self, x: np.ndarray) -> np.ndarray:
        return self.intercept + np.asarray(x, dtype=float) @ self.coef

    def ratio(self, z: np.ndarray | None) -> np.ndarray | float:
        if self.correction is None or z is None:
            return 1.0
        return np.exp(self.correction.predict(np.log(np.maximum(np.atleast_2d(z), 1.0))))

    def predict(self, x: np.ndarray, z: np.ndarray | None = None) -> np.ndarray:
        return self.base(x) * self.ratio(z)


@dataclass
class FittedProfile:
    """Every predictor of one profile, plus what is needed to evaluate them on new shapes."""

    meta: dict
    profile_hash: str
    linear: dict[str, LinearPredictor]
    """Per GEMM op: qkv, o, gate_up, down, lm_head."""
    elementwise: dict[str, LinearPredictor]
    prefill: LinearPredictor
    decode: LinearPredictor
    overhead: LinearPredictor | None
    all_reduce: dict[int, LinearPredictor] = field(default_factory=dict)
    """Per number of workers."""
    send_recv: LinearPredictor | None = None
    peak_flops: float = 1.0
    peak_bw: float = 1.0
    fit_seconds: float = 0.0
    forward: LinearPredictor | None = None
    """Calibration of a whole forward (model + LM head) on the operators' sum:
    ``forward = intercept + coef[0] * sum``, fitted on real engine iterations
    (``engine_forward`` table); None when the profile has none (derived profiles).
    Fitted on the steps that ran eagerly when the profile also has graphed ones."""
    forward_graphed: LinearPredictor | None = None
    """The same calibration for decode-only steps replayed as CUDA graphs (no per-kernel
    launch cost): used for decode-only batches up to ``meta["cuda_graph_max_batch"]``."""
    graphed_decode: LinearPredictor | None = None
    """Graphed decode-only steps fitted directly: ``time = a + b * decodes + c * KV tokens``.
    Operators timed one by one are dominated by launch latency at decode sizes (30 ms of
    operators for a 9-16 ms graphed step on an H100), so they say little about a graph's
    time; this predicts the profiled deployment's graphed steps (tp = pp = 1) better."""

    def errors(self) -> dict[str, dict]:
        """Cross-validated error of every operator: {name: {rows, mape, p90_ape}}."""
        items = {f"linear.{k}": v for k, v in self.linear.items()}
        items.update({f"elementwise.{k}": v for k, v in self.elementwise.items()})
        items["attention.prefill"] = self.prefill
        items["attention.decode"] = self.decode
        if self.overhead is not None:
            items["cpu_overhead"] = self.overhead
        if self.forward is not None:
            items["forward_calibration"] = self.forward
        if getattr(self, "graphed_decode", None) is not None:
            items["graphed_decode_step"] = self.graphed_decode
        items.update({f"all_reduce.{k}": v for k, v in self.all_reduce.items()})
        if self.send_recv is not None:
            items["send_recv"] = self.send_recv
        return {k: {"rows": v.num_rows, "mape": v.cv_mape, "p90_ape": v.cv_p90_ape} for k, v in items.items()}


def _fit_base(x, y, w, scale):
    from sklearn.linear_model import LinearRegression

    m = LinearRegression(positive=True)
    m.fit(x / scale, y, sample_weight=w)
    return m.coef_ / scale, float(max(m.intercept_, 0.0))


def _fit_correction(z, log_ratio):
    from sklearn.neighbors import KNeighborsRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    k = min(2, len(log_ratio))
    return make_pipeline(StandardScaler(), KNeighborsRegressor(n_neighbors=k, weights="distance")).fit(np.log(np.maximum(z, 1.0)), log_ratio)


def fit_linear(x: np.ndarray, y: np.ndarray, z: np.ndarray | None = None, cv: bool = True) -> LinearPredictor:
    """Fit a LinearPredictor (roofline part by non-negative relative least squares, then
    the correction on shape coordinates ``z`` if given) and its K-fold CV error."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    # Scale columns to O(1): the solver works in one precision for FLOPs (1e12) and counts (1e2).
    scale = np.maximum(np.abs(x).max(axis=0), 1e-30)
    w = 1.0 / np.maximum(y, 1e-9) ** 2

    def fit(idx) -> LinearPredictor:
        coef, intercept = _fit_base(x[idx], y[idx], w[idx], scale)
        pred = LinearPredictor(coef, intercept, num_rows=len(idx))
        if z is not None and len(idx) >= 3:
            base = np.maximum(pred.base(x[idx]), 1e-12)
            pred.correction = _fit_correction(z[idx], np.log(y[idx] / base))
        return pred

    pred = fit(np.arange(len(y)))
    if cv and len(y) >= 2 * CV_FOLDS:
        from sklearn.model_selection import KFold

        ape = np.empty(len(y))
        for train, test in KFold(CV_FOLDS, shuffle=True, random_state=0).split(x):
            p = fit(train).predict(x[test], None if z is None else z[test])
            ape[test] = np.abs(p - y[test]) / y[test]
        pred.cv_mape, pred.cv_p90_ape = float(ape.mean()), float(np.percentile(ape, 90))
    return pred


def _median_rows(rows: list[dict], keys: tuple[str, ...]) -> list[dict]:
    """One row per distinct ``keys`` with the median time: repeated engine iterations of
    the same shape, whose outliers are other processes' time slices, not the engine's."""
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r["time_s"])
    return [{**dict(zip(keys, k)), "time_s": float(np.median(v))} for k, v in groups.items()]


def _col(rows: list[dict], key: str) -> np.ndarray:
    return np.array([r[key] for r in rows], dtype=float)


def fit_profile(profile: Profile) -> FittedProfile:
    """Fit every predictor of ``profile`` (seconds, not minutes: a few small regressions)."""
    import time

    t0 = time.perf_counter()
    meta = profile.meta
    cfg = profile.model_config
    db = int(meta["dtype_bytes"])
    from podserve.sim.roofline import LayerShapes

    shapes = LayerShapes.of(cfg, int(meta.get("tp", 1)))

    lin = profile.table("linear")
    n, i, o, t = (_col(lin, k) for k in ("num_tokens", "in_features", "out_features", "time_s"))
    # Empirical roofline peaks: the best FLOP rate and byte rate any profiled GEMM reached.
    flops = 2 * n * i * o
    nbytes = db * (i * o + n * (i + o))
    peak_flops, peak_bw = float((flops / t).max()), float((nbytes / t).max())
    linear = {}
    for op in sorted({r["op"] for r in lin}):
        m = np.array([r["op"] == op for r in lin])
        linear[op] = fit_linear(F.linear_features(n[m], i[m], o[m], db, peak_flops, peak_bw), t[m],
                                F.linear_shape(n[m], i[m], o[m]))

    elementwise = {}
    for op in sorted({r["op"] for r in profile.table("elementwise")}):
        rows = [r for r in profile.table("elementwise") if r["op"] == op]
        n_el = _col(rows, "num_tokens")
        elementwise[op] = fit_linear(F.elementwise_features(n_el), _col(rows, "time_s"), n_el[:, None])

    pre = profile.table("attention_prefill")
    prefill = fit_linear(F.prefill_features(_col(pre, "q_len"), _col(pre, "kv_len"), shapes.num_heads,
                                            shapes.num_kv_heads, shapes.head_dim, db), _col(pre, "time_s"),
                         F.prefill_shape(_col(pre, "q_len"), _col(pre, "kv_len")))
    dec = profile.table("attention_decode")
    decode = fit_linear(F.decode_features(_col(dec, "batch_size"), _col(dec, "sum_kv"), _col(dec, "max_kv"),
                                          shapes.num_kv_heads, shapes.head_dim, db), _col(dec, "time_s"),
                        F.decode_shape(_col(dec, "batch_size"), _col(dec, "sum_kv")))
    ovh = _median_rows(profile.table("cpu_overhead"), ("num_seqs", "num_tokens", "num_prefills"))
    overhead = fit_linear(F.overhead_features(_col(ovh, "num_seqs"), _col(ovh, "num_tokens"), _col(ovh, "num_prefills")),
                          _col(ovh, "time_s")) if ovh else None

    all_reduce = {}
    ar = profile.table("all_reduce")
    for workers in sorted({int(r["num_workers"]) for r in ar}):
        rows = [r for r in ar if int(r["num_workers"]) == workers]
        size = _col(rows, "size_bytes")
        all_reduce[workers] = fit_linear(F.collective_features(size), _col(rows, "time_s"), size[:, None])
    sr = profile.table("send_recv")
    send_recv = fit_linear(F.collective_features(_col(sr, "size_bytes")), _col(sr, "time_s"),
                           _col(sr, "size_bytes")[:, None]) if sr else None

    fitted = FittedProfile(meta, profile.content_hash(), linear, elementwise, prefill, decode, overhead,
                           all_reduce, send_recv, peak_flops, peak_bw)
    rows = profile.table("engine_forward")
    graphed = [r for r in rows if int(float(r.get("graphed") or 0))]
    eager = [r for r in rows if not int(float(r.get("graphed") or 0))]
    # Both against the operators alone (``fitted.forward`` must still be None while fitting).
    forward_graphed = _fit_forward(fitted, graphed) if "cuda_graph_max_batch" in meta else None
    fitted.forward = _fit_forward(fitted, eager if len(eager) >= 4 else rows)
    fitted.forward_graphed = forward_graphed
    if forward_graphed is not None and len(graphed) >= 2 * CV_FOLDS:
        x = np.array([[float(r["num_decodes"]), float(r["decode_sum_kv"])] for r in graphed])
        fitted.graphed_decode = fit_linear(x, _col(graphed, "time_s"))
    fitted.fit_seconds = time.perf_counter() - t0
    return fitted


MIN_CALIBRATION_SPREAD = 3.0
"""A whole-forward calibration fits a slope only over steps whose operator sums span this factor."""
MIN_CALIBRATION_SLOPE = 0.25
"""Below this slope a whole-forward calibration is taken for a degenerate fit (a ratio is used)."""


def _fit_forward(fitted: FittedProfile, rows: list[dict]) -> LinearPredictor | None:
    """Fit ``measured forward = a + b * (operators' predicted sum)`` over real engine
    iterations (``b * sum`` alone when the steps are too alike to fit a slope). Operators
    timed one at a time miss what a whole forward adds (module calls between them, caches
    cold from the other operators' data); this puts it back, measured rather than assumed.
    Needs a few rows; None otherwise."""
    if len(rows) < 4:
        return None
    from podserve.sim.cost_model import CostModel

    cost = CostModel(fitted)  # the operators alone: ``fitted.forward`` is still None here
    ops = []
    for r in rows:
        chunks = [tuple(int(v) for v in c.split(":")) for c in str(r["prefill_chunks"]).split(";") if c]
        c = cost.estimate(int(r["num_decodes"]), int(r["decode_sum_kv"]), int(r["decode_max_kv"]), chunks, int(r["num_sampled"]))
        ops.append(c.stage + c.last_stage_extra)
    x, y = np.array(ops), _col(rows, "time_s")
    linear = fit_linear(x[:, None], y)
    ratio = _fit_ratio(x, y)
    wide = x.max() >= MIN_CALIBRATION_SPREAD * x.min()
    better = linear.cv_mape is not None and ratio.cv_mape is not None and linear.cv_mape < ratio.cv_mape
    if linear.coef[0] >= MIN_CALIBRATION_SLOPE and (wide or better):
        return linear
    # The steps span too narrow a range of sizes to tell a slope from noise (a profile of
    # equal 512-token chunks once fitted a constant: every bigger step predicted as fast):
    # keep the measured ratio, which scales with the operators.
    return ratio


def _fit_ratio(x: np.ndarray, y: np.ndarray) -> LinearPredictor:
    """``y = r * x`` with ``r`` the median ratio; K-fold error like ``fit_linear``'s."""
    pred = LinearPredictor(np.array([float(np.median(y / x))]), 0.0, num_rows=len(y))
    if len(y) >= 2 * CV_FOLDS:
        from sklearn.model_selection import KFold

        ape = np.empty(len(y))
        for train, test in KFold(CV_FOLDS, shuffle=True, random_state=0).split(x):
            r = float(np.median(y[train] / x[train]))
            ape[test] = np.abs(r * x[test] - y[test]) / y[test]
    else:
        ape = np.abs(pred.coef[0] * x - y) / y
    pred.cv_mape, pred.cv_p90_ape = float(ape.mean()), float(np.percentile(ape, 90))
    return pred
