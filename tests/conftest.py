"""Session-wide fixtures: the default model loaded once by podserve and once by transformers."""
from __future__ import annotations

import os
import warnings

import pytest
import torch

# Triton reads TRITON_INTERPRET once, when it is first imported: set it here, before any test
# module can import it, so CPU machines run every kernel test in Triton's interpreter whatever
# order the modules are collected in.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def default_llm():
    """podserve's LLM on the default SmolLM2-135M-Instruct GGUF (CPU, float32)."""
    from podserve import LLM

    return LLM(max_model_len=2048)


@pytest.fixture(scope="session")
def hf_default_model():
    """transformers' float32 model and tokenizer from the same GGUF file: the reference."""
    transformers = pytest.importorskip("transformers")
    from podserve.model.default_model import default_gguf_path

    path = default_gguf_path()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import torch

        tok = transformers.AutoTokenizer.from_pretrained(os.fspath(path.parent), gguf_file=path.name)
        model = transformers.AutoModelForCausalLM.from_pretrained(
            os.fspath(path.parent), gguf_file=path.name, dtype=torch.float32
        ).eval()
    return model, tok
