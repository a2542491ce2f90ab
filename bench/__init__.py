"""Benchmarks, run on demand (never as timed tests)."""
