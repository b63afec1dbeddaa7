"""Shared fixtures: the default SmolLM2 GGUF, read by podserve and by transformers (the reference)."""
import os
import warnings

import gguf
import pytest

from podserve.model.default_model import default_gguf_path


@pytest.fixture(scope="session")
def gguf_path():
    return default_gguf_path()


@pytest.fixture(scope="session")
def gguf_reader(gguf_path):
    return gguf.GGUFReader(gguf_path)


@pytest.fixture(scope="session")
def hf_gguf_tokenizer(gguf_path):
    """transformers' own tokenizer built from the same GGUF file."""
    transformers = pytest.importorskip("transformers")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return transformers.AutoTokenizer.from_pretrained(os.fspath(gguf_path.parent), gguf_file=gguf_path.name)
