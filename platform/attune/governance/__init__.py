"""Responsible AI: fairness, reason codes, drift monitoring, model cards."""
