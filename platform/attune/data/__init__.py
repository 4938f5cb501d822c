"""Servicing histories -> ranking datasets: schema, simulator, features, Ray Data pipeline."""
