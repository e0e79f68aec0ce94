"""Events: validation, ingestion (HTTP, files, the NATS log) and the stored event."""
