"""Metrics: the catalogue, their export (a /metrics port, the Pushgateway) and the Grafana dashboard."""
