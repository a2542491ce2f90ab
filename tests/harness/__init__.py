"""Test helpers: data, the independent oracle, Kafka clients, worker processes, deployments."""
