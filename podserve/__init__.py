"""podserve: LLM inference engine and performance simulator."""
