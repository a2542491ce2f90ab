"""Sub-commands beyond the broker: worker, policy. Kept apart so `meter kafka` stays light."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the worker and policy commands to the `meter` parser."""
