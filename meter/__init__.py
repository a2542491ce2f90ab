"""meter: a streaming usage meter for data APIs (calls and records per app and organisation)."""

__version__ = "0.1.0"
