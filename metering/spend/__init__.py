"""Spend control: budgets, counters at ingestion, alerts and their webhooks."""
