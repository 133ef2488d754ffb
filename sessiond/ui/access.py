"""Who may use the dashboard: one decision point, :meth:`Access.authorize`.

The dashboard shows and completes every principal's sessions, so it needs the ``operator`` role:
a bearer token (the page asks for one and keeps it in the tab's memory) whose principal has it —
the same credentials as gRPC, through the server's one :class:`~sessiond.server.auth.Authenticator`
(so a SIGHUP reload applies here too). With the operator role unprotected (no credential grants a
caller-side role) the dashboard is open, like the gRPC caller role: who can reach it is then
decided by the address it is bound to (loopback in the examples; a WARNING otherwise).

Two browser-only attacks are blocked here as well, because a loopback dashboard without a
token is otherwise reachable from any web page the operator opens:

- cross-site request forgery: a request that carries an ``Origin`` header must come from the
  dashboard's own origin (curl and scripts send none);
- DNS rebinding: a dashboard bound to a loopback address answers only requests whose ``Host``
  names a loopback address or ``localhost``.
"""

from __future__ import annotations

import enum
import ipaddress

from sessiond.server.auth import Authenticator, Role


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

    def __init__(self, auth: Authenticator, bound_host: str) -> None:
        """Args:
            auth: the server's authenticator (its credentials, reloaded on SIGHUP).
            bound_host: the host the dashboard listens on (decides the DNS-rebinding guard).
        """
        self._auth = auth
        self._loopback = is_loopback_host(bound_host)

    @property
    def protected(self) -> bool:
        """True when the API needs a credential (the operator role is not open to anyone)."""
        return Role.OPERATOR not in self._auth.unprotected

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

        The one place the dashboard decides it: the header's principal must have the operator role.
        """
        principal = self._auth.from_bearer(authorization)
        if principal is not None and Role.OPERATOR in principal.roles:
            return Verdict.OPERATOR
        if principal is None or not principal.name:
            return Verdict.UNAUTHENTICATED
        return Verdict.FORBIDDEN

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
