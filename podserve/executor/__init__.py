"""Mechanism: turn a ScheduledBatch into tensors, run the model, sample."""
