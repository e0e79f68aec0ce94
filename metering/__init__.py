"""Metering: task events in, per-task usage and provider cost out. Knows nothing of plans."""
