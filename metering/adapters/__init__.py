"""Adapters: OpenTelemetry GenAI spans and CloudEvents into taskmeter events."""
