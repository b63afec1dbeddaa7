"""Predictors, the cost model built from them, the profile format and the fit cache."""
from __future__ import annotations

import numpy as np
import pytest

from podserve.sim import features as F
from podserve.sim.cost_model import CostModel
from podserve.sim.predictors import fit_linear
from podserve.sim.profile_io import load_profile


def test_roofline_fit_extrapolates_to_unseen_shapes():
    rng = np.random.default_rng(0)
    peak_f, peak_b = 100e12, 2e12
    n = rng.integers(1, 4096, 80)
    shapes = [(4096, 6144), (4096, 4096), (4096, 28672), (14336, 4096)]
    i, o = (np.array([shapes[k % 4][j] for k in range(80)]) for j in (0, 1))

    def truth(n, i, o):  # a roofline device with 5 us launch latency, plus 3% noise
        return 5e-6 + np.maximum(2 * n * i * o / peak_f, 2 * (i * o + n * (i + o)) / peak_b)

    x = F.linear_features(n, i, o, 2, peak_f, peak_b)
    pred = fit_linear(x, truth(n, i, o) * rng.normal(1, 0.03, 80), F.linear_shape(n, i, o))
    assert pred.cv_mape < 0.1
    # A 70B-sized GEMM (8192 x 57344) far outside the fitted shapes.
    for tokens in (1, 64, 8192):
        big = truth(tokens, 8192, 57344)
        got = pred.predict(F.linear_features(tokens, 8192, 57344, 2, peak_f, peak_b)[None], F.linear_shape(tokens, 8192, 57344)[None])[0]
        assert got == pytest.approx(big, rel=0.2), tokens


def test_cost_model_is_monotone_and_shards(h100_8b):
    _, fitted, config = h100_8b
    one, two = CostModel(fitted, config, tp=1), CostModel(fitted, config, tp=2)
    table = np.array(one._token_list[1:4097])
    # Measured GEMMs dip at tile-aligned sizes (Vidur's H100 rows: up to 10%; the correction keeps that), but
    # never by much; doubling a compute-bound token count costs far more, a weight-bound one about the same.
    assert np.all(np.diff(table) >= -0.12 * table[1:])
    doubled, single = table[1::2][:2047], table[:2047]  # t(2n), t(n) for n = 1..2047
    assert np.all(doubled >= 0.95 * single) and np.all(doubled[511:] > 1.3 * single[511:])
    assert two._token_list[2048] < one._token_list[2048]
    assert one.decode_attention(32, 32 * 4096, 4096) > one.decode_attention(32, 32 * 512, 512)
    assert one.prefill_attention(512, 3584) > one.prefill_attention(512, 0)
    with pytest.raises(ValueError, match="all_reduce profile for 3 workers"):
        CostModel(fitted, config, tp=3)
    with pytest.raises(ValueError, match="does not divide"):
        CostModel(fitted, config, pp=5)


def test_iteration_time_of_a_real_batch(h100_8b):
    from podserve.config import SchedulerConfig
    from podserve.core.kv.paged import BlockManager
    from podserve.core.scheduler import make_scheduler
    from podserve.sim.sim_request import make_request

    _, fitted, config = h100_8b
    cm = CostModel(fitted, config)
    sched = make_scheduler(SchedulerConfig(chunk_size=512, max_model_len=8192), BlockManager(4096, 16))
    sched.add_request(make_request(0, 0.0, 2000, 4))
    batch = sched.schedule(0.0)
    t = cm.iteration_time(batch)
    # Llama-3-8B, 512 tokens on an H100: ~8 TFLOP at <= 989 TFLOP/s, plus weights read: 5-40 ms.
    assert 5e-3 < t < 40e-3


def test_profile_roundtrip_and_errors(h100_8b, tmp_path):
    profile, _, _ = h100_8b
    profile.save(tmp_path / "p")
    back = load_profile(tmp_path / "p")
    assert back.content_hash() == profile.content_hash()
    assert back.model_config == profile.model_config
    with pytest.raises(ValueError, match="no meta.json"):
        load_profile(tmp_path)


def test_fit_is_cached_by_profile_hash(h100_8b, tmp_path, monkeypatch):
    import copy

    from podserve.sim import cache

    monkeypatch.setenv("PODSERVE_CACHE", str(tmp_path))
    profile, _, _ = h100_8b
    first = cache.fitted_profile(profile)
    assert list(cache.cache_dir().glob("*.pkl"))
    calls = []
    monkeypatch.setattr(cache, "fit_profile", lambda p: calls.append(p) or first)
    again = cache.fitted_profile(profile)
    assert not calls and again.profile_hash == first.profile_hash
    changed = copy.deepcopy(profile)
    changed.tables["linear"][0]["time_s"] *= 2
    cache.fitted_profile(changed)
    assert len(calls) == 1  # different content, different key: refitted


def test_whole_forward_calibration_is_fitted_from_engine_iterations(tmp_path):
    """Engine iterations (``engine_forward``) slower than the operators' sum by a fixed cost
    plus a factor: the fit recovers both, the profile round-trips, the cost model applies it."""
    from podserve.model.presets import preset_config
    from podserve.sim.derive import derive_profile
    from podserve.sim.predictors import fit_profile

    config = preset_config("llama-3-8b")
    profile = derive_profile("llama-3-8b", config)
    ops_only = CostModel(fit_profile(profile), config)
    batches = [(nd, 300 * nd, 400, chunks, nd + len(chunks)) for nd in (0, 1, 4, 16, 64)
               for chunks in ([], [(128, 0)], [(512, 256), (64, 0)]) if nd or chunks]

    def ops(nd, s, m, chunks, k):
        c = ops_only.estimate(nd, s, m, chunks, k)
        return c.stage + c.last_stage_extra

    profile.tables["engine_forward"] = [
        {"num_decodes": nd, "decode_sum_kv": s, "decode_max_kv": m if nd else 0,
         "prefill_chunks": ";".join(f"{q}:{st}" for q, st in chunks), "num_sampled": k,
         "time_s": 0.002 + 1.15 * ops(nd, s, m, chunks, k)} for nd, s, m, chunks, k in batches]
    profile.save(tmp_path)
    fitted = fit_profile(load_profile(tmp_path))
    assert fitted.forward.intercept == pytest.approx(0.002, rel=0.05)
    assert fitted.forward.coef[0] == pytest.approx(1.15, rel=0.02)
    assert "forward_calibration" in fitted.errors()
    c = CostModel(fitted, config).estimate(8, 8000, 2000, [(256, 0)], 9)
    assert c.stage + c.last_stage_extra == pytest.approx(0.002 + 1.15 * ops(8, 8000, 2000, [(256, 0)], 9), rel=1e-6)
    assert c.host == ops_only.estimate(8, 8000, 2000, [(256, 0)], 9).host  # the CPU overhead is apart


def test_graphed_decode_steps_get_their_own_calibration(tmp_path):
    """A CUDA profile whose decode-only steps replayed graphs (no launch overhead): those rows
    fit a separate calibration, used for decode-only batches up to the largest graph bucket;
    hybrid steps and bigger decode batches keep the eager one. Steps too alike in size to
    fit a slope (the decodes here) get a ratio."""
    from podserve.model.presets import preset_config
    from podserve.sim.derive import derive_profile
    from podserve.sim.predictors import fit_profile

    config = preset_config("llama-3-8b")
    profile = derive_profile("llama-3-8b", config)
    ops_only = CostModel(fit_profile(profile), config)

    def ops(nd, chunks):
        c = ops_only.estimate(nd, 300 * nd, 400, chunks, nd + len(chunks))
        return c.stage + c.last_stage_extra

    rows = []
    for nd in (1, 2, 4, 8, 16, 32, 64):
        for chunks, graphed in (([], 1), ([(128, 0)], 0), ([(512, 256)], 0), ([(4096, 0)], 0)):
            t = 0.0005 + 0.9 * ops(nd, chunks) if graphed else 0.004 + 1.2 * ops(nd, chunks)
            rows.append({"num_decodes": nd, "decode_sum_kv": 300 * nd, "decode_max_kv": 400,
                         "prefill_chunks": ";".join(f"{q}:{st}" for q, st in chunks), "num_sampled": nd + len(chunks),
                         "graphed": graphed, "time_s": t})
    profile.tables["engine_forward"] = rows
    profile.meta["cuda_graph_max_batch"] = 64
    profile.save(tmp_path)
    fitted = fit_profile(load_profile(tmp_path))
    cm = CostModel(fitted, config)

    def fwd(nd, chunks):
        c = cm.estimate(nd, 300 * nd, 400, chunks, nd + len(chunks))
        return c.stage + c.last_stage_extra

    # Decode steps of 1..64 sequences span a narrow range of operator sums: a ratio, not a slope.
    assert fwd(32, []) == pytest.approx(0.0005 + 0.9 * ops(32, []), rel=0.05)  # graphed
    # Eager steps from 128- to 4096-token chunks: wide enough for the affine fit, exact.
    assert fitted.forward.coef[0] == pytest.approx(1.2, rel=0.02)
    assert fwd(32, [(128, 0)]) == pytest.approx(0.004 + 1.2 * ops(32, [(128, 0)]), rel=1e-3)  # hybrid: eager
    assert fwd(128, []) == pytest.approx(0.004 + 1.2 * ops(128, []), rel=1e-3)  # beyond the buckets: eager
    assert fwd(32, []) < 0.85 * fwd(32, [(1, 0)])  # the graphed calibration, not the eager one


def test_graphed_decode_steps_are_predicted_from_decodes_and_kv_tokens(tmp_path):
    """With enough graphed steps, a graphed decode step's time is fitted directly on
    (decodes, KV tokens) -- operators timed one by one are launch-bound at decode sizes --
    for the profiled deployment only; a sharded cost model keeps the calibrated operators."""
    from podserve.model.presets import preset_config
    from podserve.sim.derive import derive_profile
    from podserve.sim.predictors import fit_profile

    config = preset_config("llama-3-8b")
    profile = derive_profile("llama-3-8b", config)
    rows = []
    for nd in (1, 2, 4, 8, 16, 32, 48, 64, 96, 128):
        for ctx in (300, 1500, 4000):
            rows.append({"num_decodes": nd, "decode_sum_kv": nd * ctx, "decode_max_kv": ctx, "prefill_chunks": "",
                         "num_sampled": nd, "graphed": 1, "time_s": 0.009 + 2e-5 * nd + 4e-8 * nd * ctx})
    rows += [{"num_decodes": 4, "decode_sum_kv": 4000, "decode_max_kv": 1000, "prefill_chunks": f"{q}:0",
              "num_sampled": 5, "graphed": 0, "time_s": 0.02 + 1e-5 * q} for q in (64, 256, 512, 1024, 2048)]
    profile.tables["engine_forward"] = rows
    profile.meta["cuda_graph_max_batch"] = 128
    profile.save(tmp_path)
    fitted = fit_profile(load_profile(tmp_path))
    assert fitted.graphed_decode is not None and "graphed_decode_step" in fitted.errors()
    c = CostModel(fitted, config).estimate(40, 40 * 2000, 2000, [], 40)
    assert c.stage + c.last_stage_extra == pytest.approx(0.009 + 2e-5 * 40 + 4e-8 * 40 * 2000, rel=0.02)
    sharded = CostModel(fitted, config, tp=2).estimate(40, 40 * 2000, 2000, [], 40)
    assert sharded.stage + sharded.last_stage_extra != pytest.approx(c.stage + c.last_stage_extra, rel=0.02)
