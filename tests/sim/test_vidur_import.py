"""Vidur's CSV layout: import, units, sharded shapes, and the derived H100 profile."""
from __future__ import annotations

import pytest

from podserve.sim.derive import VIDUR_DIR
from podserve.sim.vidur_import import import_mlp, import_network

MLP = VIDUR_DIR / "compute" / "h100" / "meta-llama" / "Llama-2-7b-hf" / "mlp.csv"
pytestmark = pytest.mark.skipif(not MLP.is_file(), reason="Vidur sample profiles not on hand")


def test_mlp_import_units_and_shapes():
    shape, linear, elementwise = import_mlp(MLP)
    assert shape["hidden_size"] == 4096 and shape["intermediate_size"] == 11008
    tp8_gate_up = {r["out_features"] for r in linear if r["op"] == "gate_up" and r["tp"] == 8}
    assert tp8_gate_up == {2 * 11008 // 8}
    one_token = [r for r in linear if r["op"] == "gate_up" and r["tp"] == 1 and r["num_tokens"] == 1][0]
    assert 1e-5 < one_token["time_s"] < 1e-3  # milliseconds converted to seconds
    assert {r["op"] for r in elementwise} == {"layer_misc", "embed"}


def test_network_import():
    all_reduce, send_recv = import_network(VIDUR_DIR / "network" / "h100_dgx")
    assert {r["num_workers"] for r in all_reduce} == {2, 4, 8}
    assert send_recv and all(r["time_s"] > 0 for r in send_recv)


def test_derived_profile_fits_with_small_error(h100_8b):
    _, fitted, _ = h100_8b
    errors = fitted.errors()
    for op in ("linear.qkv", "linear.o", "linear.gate_up", "linear.down", "all_reduce.8", "send_recv"):
        assert errors[op]["mape"] < 0.15, (op, errors[op])
    assert fitted.meta["source"] == "derived" and "synthesised" in fitted.meta["derivation"]["attention"]
