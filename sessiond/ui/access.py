"""Who may use the dashboard: one decision point, :meth:`Access.authorize`.

Today sessiond has two bearer tokens: the worker token and the caller token. The caller token
is the one that can already list and complete every session over gRPC (``ListSessions``,
``CompleteSession``), so it is the dashboard's operator credential. With no caller token the
caller role is open over gRPC, and the dashboard is open too: who can reach it is then decided by
the address it is bound to (loopback in the examples; a WARNING otherwise).

Issue 10 (principals with roles) replaces the body of :meth:`Access.authorize` with "does the
request's principal have the ``operator`` role", and nothing else changes.

Two browser-only attacks are blocked here as well, because a loopback dashboard without a
token is otherwise reachable from any web page the operator opens:

- cross-site request forgery: a request that carries an ``Origin`` header must come from the
  dashboard's own origin (curl and scripts send none);
- DNS rebinding: a dashboard bound to a loopback address answers only requests whose ``Host``
  names a loopback address or ``localhost``.
"""

from __future__ import annotations

import enum
import hmac
import ipaddress

from sessiond.config import ServerConfig


class Verdict(enum.Enum):
    """The outcome of :meth:`Access.authorize`."""

    OPERATOR = "operator"
    UNAUTHENTICATED = "unauthenticated"  # no credential, or one the server does not know: HTTP 401
    FORBIDDEN = "forbidden"  # a known credential without the operator role: HTTP 403


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback IP literals (``127.0.0.0/8``, ``::1``)."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_name(host_header: str) -> str:
    """The name part of a ``Host`` header (``[::1]:8080`` → ``::1``, ``a:80`` → ``a``)."""
    if host_header.startswith("["):
        return host_header[1:].partition("]")[0]
    return host_header.rpartition(":")[0] if host_header.count(":") == 1 else host_header


class Access:
    """The dashboard's access policy for one server configuration."""

    def __init__(self, config: ServerConfig, bound_host: str) -> None:
        """Args:
            config: the server's configuration (its tokens).
            bound_host: the host the dashboard listens on (decides the DNS-rebinding guard).
        """
        # An empty token protects nothing (today's gRPC interceptor treats it the same way).
        self._token = config.caller_token or None
        self._worker_token = config.worker_token or None
        self._loopback = is_loopback_host(bound_host)

    @property
    def protected(self) -> bool:
        """True when the API needs a credential."""
        return self._token is not None

    @property
    def loopback(self) -> bool:
        """True when the dashboard listens on a loopback address (only this machine reaches it)."""
        return self._loopback

    @property
    def mode(self) -> str:
        """How requests are authenticated, as the overview reports it (``token`` or ``none``)."""
        return "token" if self.protected else "none"

    def authorize(self, authorization: str | None) -> Verdict:
        """Is the request with this ``Authorization`` header an operator's?

        The one place the dashboard decides it (issue 10 swaps in the principal's role check).
        """
        if self._token is None:
            return Verdict.OPERATOR
        scheme, _, credential = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not credential:
            return Verdict.UNAUTHENTICATED
        if hmac.compare_digest(credential.encode(), self._token.encode()):
            return Verdict.OPERATOR
        if self._worker_token is not None and hmac.compare_digest(credential.encode(), self._worker_token.encode()):
            return Verdict.FORBIDDEN
        return Verdict.UNAUTHENTICATED

    def host_allowed(self, host_header: str | None) -> bool:
        """The DNS-rebinding guard: a loopback dashboard answers only loopback ``Host`` names."""
        if not self._loopback or not host_header:
            return True
        return is_loopback_host(_host_name(host_header))

    @staticmethod
    def origin_allowed(origin: str | None, scheme: str, host_header: str | None) -> bool:
        """The CSRF guard: a request with an ``Origin`` must come from the dashboard's own origin."""
        if origin is None:
            return True
        return host_header is not None and origin == f"{scheme}://{host_header}"


__all__ = ["Access", "Verdict", "is_loopback_host"]
