"""``HOST:PORT`` addresses: the one parser for every setting that takes one.

Listen addresses (``--listen``, ``--ui-listen``, ``--metrics-listen``), ``--advertise`` and the
etcd endpoints of ``--store`` all use it, so they accept and refuse the same things: an IPv6 host
goes in brackets (``[::1]:50051``; without them ``::1:50051`` is ambiguous and refused), the port
is ASCII digits within range, and white space around the address is ignored but not inside it.
"""

from __future__ import annotations

import re

__all__ = ["join_host_port", "parse_host_port", "with_port"]

# A host name or IPv4 address (underscores too: container names have them), or an IPv6 address in
# brackets, optionally with a zone (``[fe80::1%eth0]``).
_HOST = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?")
_IPV6 = re.compile(r"[0-9A-Fa-f:.]+(%[A-Za-z0-9_.-]+)?")


def parse_host_port(raw: str, what: str, *, default_port: int | None = None,
                    allow_port_zero: bool = False) -> tuple[str, int]:
    """Parse ``host:port`` or ``[ipv6]:port`` into (host, port), the host without brackets.

    Args:
        raw: the address as given.
        what: the setting's name, which starts every error message.
        default_port: the port when ``raw`` has none (None: the port is required).
        allow_port_zero: accept port 0 (a listen address: the system picks a free port).

    Raises:
        ValueError: one line naming ``what`` and what is wrong.
    """
    text = raw.strip()
    port_text: str | None  # None = no port given
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"{what}: bad host in {raw!r} (no closing ']')")
        host, rest = text[1:end], text[end + 1:]
        if not _IPV6.fullmatch(host):
            raise ValueError(f"{what}: bad host in {raw!r}")
        if rest and not rest.startswith(":"):
            raise ValueError(f"{what}: expected [host]:port, got {raw!r}")
        port_text = rest[1:] if rest else None
    elif text.count(":") > 1:
        raise ValueError(f"{what}: an IPv6 address goes in brackets ([::1]:2379), got {raw!r}")
    else:
        host, sep, after = text.partition(":")
        port_text = after if sep else None
        if not _HOST.fullmatch(host):
            raise ValueError(f"{what}: bad host in {raw!r}")
    if port_text is None:
        if default_port is None:
            raise ValueError(f"{what}: expected host:port, got {raw!r}")
        return host, default_port
    low = 0 if allow_port_zero else 1
    port = int(port_text) if port_text.isascii() and port_text.isdigit() and len(port_text) <= 5 else -1
    if not low <= port <= 65535:
        raise ValueError(f"{what}: bad port in {raw!r} ({low}-65535)")
    return host, port


def join_host_port(host: str, port: int) -> str:
    """The inverse of :func:`parse_host_port`: an IPv6 host goes back in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def with_port(address: str, port: int, what: str = "listen") -> str:
    """``address`` (``host:port``) with another port: a listen address with the port actually bound
    (``[::1]:0`` and 50123 give ``[::1]:50123``).

    Raises:
        ValueError: ``address`` is not ``host:port`` (``unix:...`` and the like).
    """
    host, _ = parse_host_port(address, what, allow_port_zero=True)
    return join_host_port(host, port)
