"""Shared plumbing: the database adapter, errors, money, periods, tenants, audit, the schema."""
