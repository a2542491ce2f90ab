"""The pure domain core: events, windows, policy, usage, alerts. Standard library only, no I/O."""
