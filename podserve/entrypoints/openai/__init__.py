"""OpenAI-compatible HTTP server: protocol (pydantic models), serving (logic), server (app + runner)."""
