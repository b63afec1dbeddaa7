"""Benchmarks: workloads and traces, the in-process load runner, capacity search, plots."""
