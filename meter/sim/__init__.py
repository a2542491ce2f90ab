"""`meter simulate`: seeded, realistic API-call traffic for the input topic, and its ground truth.

scenario (what is sent, in send order) -> framing (Kafka records per format) -> produce (Kafka);
truth (what meter must report) and compare (meter's outputs against the truth) are pure.
"""

from __future__ import annotations

from meter.core.errors import MeterError

__all__ = ["SimulationError"]


class SimulationError(MeterError):
    """The simulation cannot go on: a send failed, or the truth cannot be exact."""
