"""Benchmark peers run as their own processes: each drains a topic and reports a `Sample`."""
