"""Resolve what a simulation runs on: a profile (a directory or a derived device), a model
shape, and a replica's KV capacity -- shared by ``simulate`` and ``search``."""
from __future__ import annotations

from pathlib import Path

from podserve.sim.derive import DEVICES, derive_profile
from podserve.sim.profile_io import Profile, load_profile

CPU_MAX_MODEL_LEN = 8192
"""Mirrors podserve.engine.engine.CPU_MAX_MODEL_LEN (that module imports torch)."""


def model_shape(model: str | None, profile: Profile | None = None):
    """(name, LlamaConfig) of ``model``: a preset name, else the profile's own model."""
    from podserve.model.presets import PRESET_NAMES, preset_config

    if model is None:
        if profile is None:
            raise ValueError("name a model (--model PRESET) or a profile whose model to simulate")
        return profile.meta["model"], profile.model_config
    if model in PRESET_NAMES:
        return model, preset_config(model)
    if profile is not None and model == profile.meta.get("model"):
        return model, profile.model_config
    raise ValueError(f"model {model!r}: the simulator takes a preset name ({', '.join(PRESET_NAMES)}) "
                     "or the profiled model's own name")


def resolve_profile(spec: str, model: str | None = None) -> Profile:
    """``spec`` is a profile directory, or a device name (``h100``) to derive one for ``model``."""
    path = Path(spec)
    if path.is_dir():
        return load_profile(path)
    if spec.lower() in DEVICES:
        if model is None:
            raise ValueError(f"profile {spec!r} is derived per model: name a preset with --model")
        name, config = model_shape(model)
        return derive_profile(name, config, device=spec.lower())
    raise ValueError(f"profile {spec!r} is neither a profile directory nor a derivable device ({', '.join(DEVICES)})")


def default_max_model_len(config, profile: Profile) -> int:
    """The engine's rule: the model's context, clipped to 8192 on CPU."""
    n = config.max_position_embeddings
    return min(n, CPU_MAX_MODEL_LEN) if profile.meta.get("device", "cpu") == "cpu" else n
