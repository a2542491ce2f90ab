"""The pure domain core: events, windows, policy, usage and alerts. Standard library only, no I/O."""
