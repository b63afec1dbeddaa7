"""Physical KV memory: the paged pool (and, later, virtual-memory backends)."""
