"""Observability: OpenTelemetry traces (tracing.py) and structured logs (logs.py).

Prometheus metrics live with the events they count: gateway/events/metrics.py.
"""
