"""Fitted predictors cached by profile hash (pickle under ~/.cache/podserve/costmodel)."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

from podserve.sim.predictors import FittedProfile, fit_profile
from podserve.sim.profile_io import Profile, load_profile

CACHE_VERSION = 2
"""Bump when predictors or features change: old pickles are then ignored."""


def cache_dir() -> Path:
    """``$PODSERVE_CACHE`` or ``~/.cache/podserve``, plus ``costmodel/``."""
    root = os.environ.get("PODSERVE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "podserve")
    return Path(root) / "costmodel"


def fitted_profile(profile: Profile | str | Path, use_cache: bool = True) -> FittedProfile:
    """Fit ``profile`` (a Profile or a directory), reusing a cached fit of identical content."""
    if not isinstance(profile, Profile):
        profile = load_profile(profile)
    path = cache_dir() / f"v{CACHE_VERSION}-{profile.content_hash()}.pkl"
    if use_cache and path.is_file():
        try:
            with open(path, "rb") as f:
                return pickle.load(f)
        except Exception:  # a truncated or stale pickle: refit below
            pass
    fitted = fit_profile(profile)
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            pickle.dump(fitted, f)
        os.replace(tmp, path)  # atomic: parallel search workers never read half a file
    return fitted
