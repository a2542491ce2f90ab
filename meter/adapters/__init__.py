"""Adapters: the only place faust, Kafka clients, HTTP and Prometheus are imported."""
