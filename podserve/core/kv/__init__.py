"""KV-cache accounting (pure Python): which physical blocks or slots each request owns."""
from podserve.core.kv.paged import BlockManager
from podserve.core.kv.virtual import MemoryPlan, VirtualKVManager

__all__ = ["BlockManager", "MemoryPlan", "VirtualKVManager"]
