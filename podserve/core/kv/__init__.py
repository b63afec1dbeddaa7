"""KV-cache accounting (pure Python): which physical blocks or slots each request owns."""
from podserve.core.kv.paged import BlockManager

__all__ = ["BlockManager"]
