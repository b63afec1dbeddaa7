"""--kv flags reach CacheConfig; the virtual accounting stays free of torch."""
from __future__ import annotations

import argparse
import subprocess
import sys

from podserve.entrypoints.engine_args import add_engine_args, engine_config_from_args


def parse(*argv: str):
    parser = argparse.ArgumentParser()
    add_engine_args(parser)
    return engine_config_from_args(parser.parse_args(list(argv))).cache


def test_kv_flags():
    assert parse().kv_layout == "paged"
    cache = parse("--kv", "virtual", "--kv-page-size", "12KiB", "--kv-sync-map")
    assert (cache.kv_layout, cache.page_size, cache.kv_background_map) == ("virtual", 12288, False)
    assert parse("--kv", "virtual").kv_background_map


def test_virtual_accounting_imports_no_torch():
    code = "import sys, podserve.core.kv.virtual, podserve.core.scheduler; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr
