"""Locust load tests and the serving benchmark (development tooling, not shipped)."""
