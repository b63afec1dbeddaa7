"""Policy: scheduling and KV accounting over request state. Never imports torch."""
