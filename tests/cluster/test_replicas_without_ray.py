"""Without Ray installed: --replicas fails with one line saying what to install; single-replica serving is unaffected."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def env_without_ray(tmp_path):
    """An environment in which ``import ray`` fails as if it were not installed."""
    shadow = tmp_path / "ray"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'ray'\", name='ray')\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


@pytest.mark.parametrize("flags", [["--replicas", "2"], ["--ray-address", "auto"]])
def test_replica_flags_without_ray_exit_with_one_line_naming_the_package(env_without_ray, flags):
    proc = subprocess.run([sys.executable, "-m", "podserve.entrypoints.cli", "serve", "--model", "tiny-llama", *flags],
                          cwd=REPO_ROOT, env=env_without_ray, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("podserve: error:") and flags[0] in lines[0]
    assert "pip install 'podserve[distributed]'" in lines[0]


def test_require_ray_error_in_process(monkeypatch):
    from podserve.cluster import RayNotInstalled, require_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(RayNotInstalled, match=r"pip install 'podserve\[distributed\]'"):
        require_ray()


def test_serving_without_replica_flags_never_imports_ray():
    """The plain server path (build_app over an AsyncEngine) has no Ray import in it."""
    code = ("import sys; import podserve.entrypoints.openai.server, podserve.entrypoints.cli; "
            "print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr
