"""Experiments: assignment, A/B analysis, bandit policies, off-policy evaluation."""
