"""The usage store: window totals and alerts from Kafka into SQL (SQLite or PostgreSQL)."""
