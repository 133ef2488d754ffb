"""``OTEL_EXPORTER_OTLP_PROTOCOL``: which OTLP transport the exporters use.

The standard variable (and its per-signal form, ``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`` /
``OTEL_EXPORTER_OTLP_METRICS_PROTOCOL``, which wins) is ``grpc`` (the default) or
``http/protobuf``. ``http/json`` has no Python exporter: it is a start-up error, never a silent
fallback to another transport.
"""

from __future__ import annotations

from collections.abc import Mapping

PROTOCOLS = ("grpc", "http/protobuf")


def otlp_protocol(env: Mapping[str, str], signal: str) -> str:
    """The OTLP protocol for ``signal`` (``TRACES`` or ``METRICS``) from the environment.

    Raises:
        ValueError: An unsupported protocol (the message names the variable and the choices).
    """
    for name in (f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        value = env.get(name, "").strip().lower()
        if value:
            if value not in PROTOCOLS:
                raise ValueError(f"{name}: unsupported OTLP protocol {value!r} (grpc or http/protobuf)")
            return value
    return "grpc"
