"""How the client and the worker reach sessiond: channel, TLS and bearer-token metadata.

Channels are created by :meth:`ConnectionConfig.open_channel`, which must run inside the event
loop that will use the channel (grpc.aio binds a channel to the running loop).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import grpc.aio

Metadata = tuple[tuple[str, str], ...]

_GRPC_INT_MAX = 2**31 - 1


@dataclass(frozen=True, slots=True)
class ConnectionConfig:
    """Where sessiond is and how to authenticate to it."""

    target: str
    tls: bool = False
    root_certificates: bytes | None = None
    private_key: bytes | None = None
    certificate_chain: bytes | None = None
    auth_token: str | None = None
    channel_options: tuple[tuple[str, int | str], ...] = ()
    # A file whose first line is the bearer token: read when metadata is made (each worker stream,
    # each client), so a rotated file is picked up without restarting the process.
    auth_token_file: str | os.PathLike[str] | None = None
    # The message-size limit the library checks itself (bytes); the channel's grpc limits are set
    # to twice it, as the server's are, so the library's own check always speaks first. None: no
    # grpc limit (the worker, which checks against the limit its server announces).
    max_message_size: int | None = None

    def __post_init__(self) -> None:
        if not self.target:
            raise ValueError("target must not be empty (for example '127.0.0.1:50051')")
        channel_target(self.target)  # a bad list of addresses fails here, with its reason
        if (self.private_key is None) != (self.certificate_chain is None):
            raise ValueError("private_key and certificate_chain go together (mTLS)")
        if self.auth_token is not None and self.auth_token_file is not None:
            raise ValueError("give auth_token or auth_token_file, not both")
        if self.auth_token_file is not None:
            self.token()  # a missing or empty file is a mistake to report now, not at the first call
        if self.max_message_size is not None and self.max_message_size < 1:
            raise ValueError("max_message_size must be positive")

    @property
    def uses_tls(self) -> bool:
        """TLS is on when asked for, or implied by any certificate material."""
        return self.tls or any(
            v is not None for v in (self.root_certificates, self.private_key, self.certificate_chain)
        )

    def token(self) -> str | None:
        """The bearer token: ``auth_token``, or the first line of ``auth_token_file`` read now.

        Raises:
            ValueError: The token file cannot be read or its first line is empty.
        """
        if self.auth_token_file is None:
            return self.auth_token or None
        path = Path(self.auth_token_file)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"auth_token_file {path}: {exc}") from None
        token = lines[0].strip() if lines else ""
        if not token:
            raise ValueError(f"auth_token_file {path}: the first line is empty")
        return token

    def call_metadata(self) -> Metadata:
        """Metadata sent with every call: the bearer token, if any."""
        token = self.token()
        if token:
            return (("authorization", f"Bearer {token}"),)
        return ()

    def open_channel(self, extra_options: Sequence[tuple[str, int | str]] = (), *,
                     defaults: Sequence[tuple[str, int | str]] = ()) -> grpc.aio.Channel:
        """Open a channel in the running loop; ``defaults`` go before the user's ``channel_options``."""
        cap = -1 if self.max_message_size is None else min(2 * self.max_message_size, _GRPC_INT_MAX)
        limits = [("grpc.max_receive_message_length", cap), ("grpc.max_send_message_length", cap)]
        options = [*limits, *defaults, *self.channel_options, *extra_options]
        if self.uses_tls:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=self.root_certificates,
                private_key=self.private_key,
                certificate_chain=self.certificate_chain,
            )
            return grpc.aio.secure_channel(channel_target(self.target), credentials, options=options)
        return grpc.aio.insecure_channel(channel_target(self.target), options=options)


def channel_target(target: str) -> str:
    """The gRPC target for ``target``: one address (``host:port``, or any gRPC target such as
    ``dns:///sessiond.internal:50051``) is used as it is; several comma-separated IP addresses
    (``10.0.0.1:50051,10.0.0.2:50051``: the replicas of one sessiond) become one channel that uses
    the first that answers and moves to the next when it fails.

    Raises:
        ValueError: a list names a host name (use one DNS name that resolves to every replica) or
            mixes IPv4 and IPv6.
    """
    if "," not in target or ":/" in target.split(",", 1)[0] or target.startswith(("ipv4:", "ipv6:")):
        return target
    families = set()
    for item in target.split(","):
        host, sep, port = item.strip().rpartition(":")
        try:
            address = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            raise ValueError(f"target: several addresses must be IP addresses (host:port), got {item!r}; "
                             "for host names use one DNS name that resolves to every replica") from None
        if not sep or not port.isdigit():
            raise ValueError(f"target: expected host:port, got {item!r}")
        families.add(address.version)
    if len(families) > 1:
        raise ValueError("target: several addresses must all be IPv4 or all IPv6")
    scheme = "ipv4" if families == {4} else "ipv6"
    return f"{scheme}:{','.join(item.strip() for item in target.split(','))}"
