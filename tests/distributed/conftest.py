"""A tiny random Llama on disk (8 query heads, 2 KV heads, 4 layers) and its TP=1/PP=1 tokens."""
from __future__ import annotations

import pytest

from tests.distributed.parallel_helpers import ENGINE, generate_tokens


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    from tests.engine.tiny_model import write_tiny_llama

    path = tmp_path_factory.mktemp("tiny-llama-parallel")
    write_tiny_llama(path, num_hidden_layers=4)
    return str(path)


@pytest.fixture(scope="session")
def reference_tokens(tiny_llama_dir):
    """Greedy tokens of the unsharded engine (one process, no workers)."""
    from podserve import LLM

    return generate_tokens(LLM(tiny_llama_dir, **ENGINE))
