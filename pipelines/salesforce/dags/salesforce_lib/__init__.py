"""Salesforce reference pipeline helpers (extraction sources and the raw landing store)."""
