"""Telemetry at the edge: tracing and metrics, configured once at start-up and injected.

With no exporter configured, tracing and metrics are no-ops that cost a flag check.
"""

from sessiond.telemetry.metrics import Metrics, NoMetrics, SessionMetrics, configure_metrics
from sessiond.telemetry.tracing import configure_tracing, tracing_enabled

__all__ = ["Metrics", "NoMetrics", "SessionMetrics", "configure_metrics", "configure_tracing", "tracing_enabled"]
