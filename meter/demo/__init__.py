"""`meter demo`: the 2022 case end to end on this machine, checked against the ground truth."""

from meter.demo.run import add_demo_parser

__all__ = ["add_demo_parser"]
