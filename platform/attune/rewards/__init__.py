"""Rewards: servicing events attributed to the served decisions that preceded them."""
