"""podserve: an LLM inference engine and performance simulator.

Offline use mirrors vLLM::

    from podserve import LLM, SamplingParams
    llm = LLM()  # SmolLM2-135M-Instruct on CPU
    out = llm.generate(["Hello"], SamplingParams(max_tokens=16, temperature=0))
"""
from podserve.config import CacheConfig, EngineConfig, SchedulerConfig
from podserve.request import SamplingParams

__version__ = "0.1.0"


def __getattr__(name):
    # Lazy: importing podserve for its pure-Python policy layer must not import torch.
    if name == "LLM":
        from podserve.engine.llm import LLM

        return LLM
    if name == "Engine":
        from podserve.engine.engine import Engine

        return Engine
    raise AttributeError(name)


__all__ = ["LLM", "Engine", "SamplingParams", "EngineConfig", "SchedulerConfig", "CacheConfig", "__version__"]
