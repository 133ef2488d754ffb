"""Server configuration: one frozen dataclass, one function that reads the environment."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from sessiond.core.token import MIN_KEY_BYTES
from sessiond.hostport import parse_host_port
from sessiond.store.spec import EtcdStoreSpec, StoreSpec, parse_store

ENV_PREFIX = "SESSIOND_"
DURATION_FORMS = "600s, 10m, 1.5 (seconds), 250ms, 2h, 1m30s"
MAX_PENDING_REQUESTS = 2**31 - 1  # a C int inside grpc core
_NUMBER = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
_DURATION_PART = re.compile(rf"({_NUMBER})(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
MAX_MESSAGE_SIZE = 1024 * 1024 * 1024


@dataclass(frozen=True)
class ServerConfig:
    """Everything ``sessiond serve`` can be told. Durations are ``timedelta``.

    Each field can also be set with the environment variable ``SESSIOND_<FIELD NAME IN CAPS>``
    (durations as ``600s``, ``10m``, ``1.5`` seconds, ``250ms``, ``2h``; booleans as 1/0/true/false);
    command-line flags win over the environment.
    """

    listen: str = field(
        default="127.0.0.1:50051", metadata={"help": "Address to listen on (host:port; port 0 picks a free one)."}
    )
    tls_cert: Path | None = field(
        default=None, metadata={"help": "PEM certificate chain: serve TLS when set (with tls_key)."}
    )
    tls_key: Path | None = field(default=None, metadata={"help": "PEM private key for tls_cert."})
    tls_client_ca: Path | None = field(
        default=None, metadata={"help": "PEM CA bundle: require client certificates signed by it (mTLS)."}
    )
    tls_client_roles: Path | None = field(
        default=None,
        metadata={"help": "File of client-certificate identities and their roles, one 'IDENTITY ROLE[,ROLE...]' per "
                          "line (IDENTITY: a SAN, else the CN; roles worker, caller, operator); re-read on SIGHUP. "
                          "Needs tls_client_ca."},
    )
    worker_token: str | None = field(
        default=None,
        metadata={"help": "Bearer token of the principal 'worker' (role worker); prefer worker_token_file or the "
                          "environment (flags show in ps)."},
    )
    worker_token_file: Path | None = field(
        default=None, metadata={"help": "File whose first line is the worker token (re-read on SIGHUP)."}
    )
    caller_token: str | None = field(
        default=None,
        metadata={"help": "Bearer token of the principal 'caller' (roles caller and operator); prefer "
                          "caller_token_file or the environment (flags show in ps)."},
    )
    caller_token_file: Path | None = field(
        default=None, metadata={"help": "File whose first line is the caller token (re-read on SIGHUP)."}
    )
    tokens_file: Path | None = field(
        default=None,
        metadata={"help": "File of bearer tokens, one 'TOKEN PRINCIPAL ROLE[,ROLE...]' per line (roles worker, "
                          "caller, operator; TOKEN may be sha256:HEX); re-read on SIGHUP."},
    )
    token_key: str | None = field(
        default=None,
        metadata={"help": "Key (at least 32 bytes) that signs recreate tokens and session records; prefer "
                          "token_key_file or the environment. Unset: a random key per process (tokens and "
                          "verified session reports do not survive a restart)."},
    )
    token_key_file: Path | None = field(
        default=None, metadata={"help": "File holding the token key (surrounding whitespace is ignored)."}
    )
    previous_token_key: str | None = field(
        default=None,
        metadata={"help": "The key before the last rotation: it still verifies (never signs) for "
                          "previous_token_key_period after start; prefer previous_token_key_file."},
    )
    previous_token_key_file: Path | None = field(
        default=None, metadata={"help": "File holding the previous token key."}
    )
    previous_token_key_period: timedelta = field(
        default=timedelta(hours=24),
        metadata={"help": "How long after start the previous token key is still accepted."},
    )
    reflection: str = field(
        default="caller",
        metadata={"help": "Server reflection: off, caller (needs the caller or operator role) or open."},
    )
    creation_timeout: timedelta = field(
        default=timedelta(seconds=60), metadata={"help": "Default creation_timeout of a session."}
    )
    execution_timeout: timedelta = field(
        default=timedelta(hours=24), metadata={"help": "Default execution_timeout of a session."}
    )
    heartbeat_timeout: timedelta = field(
        default=timedelta(seconds=20), metadata={"help": "Default heartbeat_timeout of a session."}
    )
    caller_timeout: timedelta = field(
        default=timedelta(0),
        metadata={"help": "Default caller_timeout of a session: unattended this long, it fails CALLER_LOST "
                          "(0 = never)."},
    )
    reattach_timeout: timedelta = field(
        default=timedelta(0),
        metadata={"help": "Default reattach_timeout of a session: how long it waits, detached, for its worker to "
                          "register again after its stream ended without a goodbye (0 = fail WORKER_LOST at once)."},
    )
    recovery_window: timedelta = field(
        default=timedelta(seconds=30),
        metadata={"help": "After start, how long sessions that reconnecting workers report are adopted (unknown "
                          "ids answer UNAVAILABLE RECOVERING meanwhile); workers hold their sessions this long."},
    )
    activity_timeout: timedelta = field(
        default=timedelta(minutes=5), metadata={"help": "Default start_to_close_timeout of an activity."}
    )
    retention: timedelta = field(
        default=timedelta(minutes=10), metadata={"help": "How long a FAILED or CLOSED session stays readable."}
    )
    max_heartbeat_interval: timedelta = field(
        default=timedelta(seconds=10), metadata={"help": "Longest heartbeat interval a worker is given."}
    )
    drain_timeout: timedelta = field(
        default=timedelta(seconds=10),
        metadata={"help": "On SIGTERM, first how long activities in flight get to finish (their callers get their "
                          "results) while nothing new starts (UNAVAILABLE RECOVERING, retried); then workers are "
                          "told the server restarts (0 = at once: in-flight activities end SHUTTING_DOWN)."},
    )
    shutdown_grace: timedelta = field(
        default=timedelta(seconds=5),
        metadata={"help": "On SIGTERM, after the drain, how long open RPCs and streams get to finish."},
    )
    max_pending_requests: int = field(
        default=100_000,
        metadata={"help": "grpc core's queue of not-yet-handled RPCs; the default (1000) sheds reconnect storms."},
    )
    max_message_size: int = field(
        default=16 * 1024 * 1024,
        metadata={
            "help": "Largest message (bytes) accepted or sent, callers and workers alike; announced to workers. "
            "A bigger activity input is refused (MESSAGE_TOO_LARGE), a bigger result fails that activity "
            "(ResultTooLarge)."
        },
    )
    max_worker_backlog: int = field(
        default=32 * 1024 * 1024,
        metadata={
            "help": "Bytes queued for one worker that its stream has not taken yet; past it, ExecuteActivity "
            "on that worker is refused (WORKER_BACKLOGGED)."
        },
    )
    max_waiters: int = field(
        default=10_000,
        metadata={"help": "Creates/Recreates waiting for capacity at once, all task queues (TOO_MANY_WAITERS)."},
    )
    max_waiters_per_queue: int = field(
        default=1_000, metadata={"help": "Creates/Recreates waiting for capacity at once, per task queue."}
    )
    gc_freeze: bool = field(
        default=True,
        metadata={
            "help": "Freeze the start-up heap out of the garbage collector (shorter GC pauses with many streams)."
        },
    )
    loop: str = field(
        default="asyncio",
        metadata={"help": "The event loop: asyncio, or uvloop (opt-in: pip install 'sessiond[uvloop]')."},
    )
    log_level: str = field(default="INFO", metadata={"help": "DEBUG, INFO, WARNING or ERROR."})
    log_format: str = field(default="text", metadata={"help": "text or json."})
    metrics_listen: str | None = field(
        default=None, metadata={"help": "host:port of a Prometheus scrape endpoint for the metrics (unset = none)."}
    )
    ui_listen: str | None = field(
        default=None,
        metadata={"help": "host:port of the operator dashboard, HTTP (unset = off; protected by the caller token)."},
    )
    store: str = field(
        default="memory",
        metadata={
            "help": "memory (one process), or etcd://HOST:PORT,.../CLUSTER[?lease_ttl=5&failover_window=10] "
            "to run as one replica of a service whose sessions live in etcd."
        },
    )
    advertise: str | None = field(
        default=None,
        metadata={"help": "host:port at which other replicas reach this one (etcd store; default: listen)."},
    )
    etcd_tls_ca: Path | None = field(
        default=None, metadata={"help": "PEM CA bundle that signed the etcd members' certificates: use TLS to etcd."}
    )
    etcd_tls_cert: Path | None = field(
        default=None, metadata={"help": "PEM client certificate for etcd (with etcd_tls_key and etcd_tls_ca)."}
    )
    etcd_tls_key: Path | None = field(default=None, metadata={"help": "PEM private key for etcd_tls_cert."})
    etcd_user: str | None = field(
        default=None, metadata={"help": "etcd user name (with etcd_password_file or etcd_password)."}
    )
    etcd_password: str | None = field(
        default=None,
        metadata={"help": "etcd password; prefer etcd_password_file or the environment (flags show in ps)."},
    )
    etcd_password_file: Path | None = field(
        default=None, metadata={"help": "File whose first line is the etcd password."}
    )
    peer_token: str | None = field(
        default=None, metadata={"help": "Bearer token the replicas of one service present to each other (etcd store)."}
    )
    peer_token_file: Path | None = field(default=None, metadata={"help": "File whose first line is the peer token."})
    peer_tls_ca: Path | None = field(
        default=None,
        metadata={"help": "PEM CA bundle that signed the replicas' serving certificates (tls_cert): replicas "
                          "forward calls to each other over TLS (etcd store; required with tls_cert)."},
    )
    peer_tls_cert: Path | None = field(
        default=None,
        metadata={"help": "PEM client certificate a replica presents to the others (with peer_tls_key; required "
                          "when tls_client_ca makes the replicas ask for client certificates)."},
    )
    peer_tls_key: Path | None = field(default=None, metadata={"help": "PEM private key for peer_tls_cert."})

    def __post_init__(self) -> None:
        for name in (
            "creation_timeout",
            "execution_timeout",
            "heartbeat_timeout",
            "activity_timeout",
            "retention",
            "max_heartbeat_interval",
            "shutdown_grace",
            "drain_timeout",
            "caller_timeout",
            "reattach_timeout",
            "recovery_window",
            "previous_token_key_period",
        ):
            if getattr(self, name) < timedelta(0):
                raise ValueError(f"{name} must not be negative")
        for name in ("execution_timeout", "heartbeat_timeout", "activity_timeout", "max_heartbeat_interval"):
            if getattr(self, name) <= timedelta(0):
                raise ValueError(f"{name} must be positive")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca needs tls_cert and tls_key")
        if self.loop not in ("asyncio", "uvloop"):
            raise ValueError("loop must be asyncio or uvloop")
        if self.log_format not in ("text", "json"):
            raise ValueError("log_format must be text or json")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError("log_level must be DEBUG, INFO, WARNING or ERROR")
        if not 1 <= self.max_pending_requests <= MAX_PENDING_REQUESTS:
            raise ValueError(f"max_pending_requests must be between 1 and {MAX_PENDING_REQUESTS}")
        for name in ("worker_token", "caller_token"):
            token = getattr(self, name)
            # A bearer token travels in an HTTP/2 header: visible ASCII, no spaces. Anything else
            # (an empty value from an unset shell variable, a pasted newline) could never match.
            if token is not None and not valid_token(token):
                raise ValueError(f"{name} must be non-empty visible ASCII without spaces")
        for secret in ("worker_token", "caller_token", "token_key", "previous_token_key"):
            if getattr(self, secret) is not None and getattr(self, secret + "_file") is not None:
                raise ValueError(f"give {secret} or {secret}_file, not both")
        for name in ("token_key", "previous_token_key"):
            key = getattr(self, name)
            if key is not None and len(key.strip().encode()) < MIN_KEY_BYTES:
                raise ValueError(f"{name} must be at least {MIN_KEY_BYTES} bytes (e.g. openssl rand -base64 48)")
        if self.tls_client_roles is not None and self.tls_client_ca is None:
            raise ValueError("tls_client_roles needs tls_client_ca (client certificates are only asked for with it)")
        if self.reflection not in ("off", "caller", "open"):
            raise ValueError("reflection must be off, caller or open")
        has_previous = self.previous_token_key is not None or self.previous_token_key_file is not None
        if has_previous and self.token_key is None and self.token_key_file is None:
            raise ValueError("a previous token key needs the current one (token_key_file or token_key)")
        for name in ("max_message_size", "max_worker_backlog", "max_waiters", "max_waiters_per_queue"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive")
        if self.max_message_size > MAX_MESSAGE_SIZE:
            # grpc's transport cap is twice the limit and is a 32-bit signed int.
            raise ValueError(f"max_message_size must be at most {MAX_MESSAGE_SIZE} bytes (1 GiB)")
        if self.ui_listen is not None:
            parse_host_port(self.ui_listen, "ui_listen", allow_port_zero=True)
        self._validate_store()

    @property
    def store_spec(self) -> StoreSpec:
        """The parsed ``store`` setting."""
        return parse_store(self.store)

    def _validate_store(self) -> None:
        spec = parse_store(self.store)
        etcd_only = ("advertise", "etcd_tls_ca", "etcd_tls_cert", "etcd_tls_key", "etcd_user", "etcd_password",
                     "etcd_password_file", "peer_token", "peer_token_file", "peer_tls_ca", "peer_tls_cert",
                     "peer_tls_key")
        if not isinstance(spec, EtcdStoreSpec):
            for name in etcd_only:
                if getattr(self, name) is not None:
                    raise ValueError(f"{name} only applies with store etcd://...")
            return
        if self.advertise is not None:
            host, _ = parse_host_port(self.advertise, "advertise")
            if host in ("0.0.0.0", "::"):
                raise ValueError("advertise must be an address other replicas can reach, not a wildcard")
        else:
            try:
                host, port = parse_host_port(self.listen, "listen", allow_port_zero=True)
            except ValueError as exc:  # unix:..., or a malformed address: no address a peer can dial
                raise ValueError(f"advertise is needed with store etcd:// when listen is not host:port ({exc})"
                                 ) from None
            if host in ("0.0.0.0", "::") or port == 0:
                raise ValueError("advertise is needed with store etcd:// when listen is a wildcard or port 0")
        if (self.etcd_tls_cert is None) != (self.etcd_tls_key is None):
            raise ValueError("etcd_tls_cert and etcd_tls_key go together")
        if self.etcd_tls_cert is not None and self.etcd_tls_ca is None:
            raise ValueError("etcd_tls_cert needs etcd_tls_ca")
        if self.etcd_password is not None and self.etcd_password_file is not None:
            raise ValueError("give etcd_password or etcd_password_file, not both")
        has_password = self.etcd_password is not None or self.etcd_password_file is not None
        if (self.etcd_user is None) == has_password:
            raise ValueError("etcd_user needs etcd_password_file or etcd_password" if self.etcd_user is not None
                             else "an etcd password needs etcd_user")
        if self.etcd_user == "" or self.etcd_password == "":
            raise ValueError("etcd_user and etcd_password must not be empty")
        if self.peer_token is not None and self.peer_token_file is not None:
            raise ValueError("give peer_token or peer_token_file, not both")
        if self.peer_token is not None and not valid_token(self.peer_token):
            raise ValueError("peer_token must be non-empty visible ASCII without spaces")
        self._validate_peers()
        for name in ("etcd_tls_ca", "etcd_tls_cert", "etcd_tls_key", "etcd_password_file", "peer_token_file",
                     "peer_tls_ca", "peer_tls_cert", "peer_tls_key"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{name}: no such file: {path}")

    def _validate_peers(self) -> None:
        """How replicas reach each other (etcd store): every combination of the server's own TLS and
        credentials either has a peer setting that works with it or is refused here, in one line."""
        if (self.peer_tls_cert is None) != (self.peer_tls_key is None):
            raise ValueError("peer_tls_cert and peer_tls_key go together")
        if self.tls_cert is None:
            for name in ("peer_tls_ca", "peer_tls_cert"):
                if getattr(self, name) is not None:
                    raise ValueError(f"{name} only applies when the replicas serve TLS (tls_cert)")
        elif self.peer_tls_ca is None:
            raise ValueError("store etcd:// with tls_cert needs peer_tls_ca (the CA of the replicas' certificates): "
                             "replicas forward calls to each other over TLS")
        if self.tls_client_ca is not None and self.peer_tls_cert is None:
            raise ValueError("store etcd:// with tls_client_ca needs peer_tls_cert and peer_tls_key: replicas "
                             "present a client certificate when they forward calls to each other")
        has_peer_token = self.peer_token is not None or self.peer_token_file is not None
        credentials = ("worker_token", "worker_token_file", "caller_token", "caller_token_file", "tokens_file",
                       "tls_client_roles")
        if not has_peer_token and any(getattr(self, name) is not None for name in credentials):
            raise ValueError("store etcd:// with credentials needs peer_token or peer_token_file: a replica "
                             "forwards a caller's call to another as a peer, vouching for the caller's identity")

    def with_overrides(self, **overrides: Any) -> ServerConfig:
        """A copy with the given fields replaced (None values are ignored)."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


def valid_token(token: str) -> bool:
    """A bearer token sessiond can match: non-empty visible ASCII without spaces."""
    return bool(token) and token.isascii() and token.isprintable() and " " not in token


# Settings that are secrets: set but empty in the environment is a mistake (an unset shell variable
# expanded to nothing), never "off".
SECRET_FIELDS = frozenset({"worker_token", "caller_token", "token_key", "previous_token_key", "peer_token",
                           "etcd_password"})


def parse_duration(text: str) -> timedelta:
    """A duration as ``--help`` prints them: ``600s``, ``10m``, ``1.5`` (seconds), ``250ms``, ``2h``,
    or several parts (``1m30s``). Raises ValueError for anything else, negative or too large."""
    raw = text.strip()
    if re.fullmatch(_NUMBER, raw, flags=re.ASCII):
        seconds = float(raw)
    elif raw and re.fullmatch(rf"(?:{_NUMBER}(?:ms|s|m|h))+", raw, flags=re.ASCII):
        seconds = sum(float(number) * _UNIT_SECONDS[unit] for number, unit in _DURATION_PART.findall(raw))
    else:
        raise ValueError(f"invalid duration {text!r} (use {DURATION_FORMS})")
    try:
        if not math.isfinite(seconds):
            raise OverflowError
        return timedelta(seconds=seconds)
    except OverflowError:
        raise ValueError(f"duration {text!r} is too large") from None


def format_duration(value: timedelta) -> str:
    """The shortest exact form :func:`parse_duration` reads back: ``10m``, ``24h``, ``1.5s``, ``250ms``."""
    micros = value // timedelta(microseconds=1)
    if micros == 0:
        return "0s"
    for unit, size in (("h", 3_600_000_000), ("m", 60_000_000), ("s", 1_000_000)):
        if micros % size == 0:
            return f"{micros // size}{unit}"
    if micros < 1_000_000 and micros % 1_000 == 0:
        return f"{micros // 1_000}ms"
    return f"{micros / 1e6:.6f}".rstrip("0") + "s"


def parse_field(name: str, raw: str) -> Any:
    """Parse a string (from a flag or the environment) into the type of field ``name``."""
    default = getattr(ServerConfig, name, None)
    kind = {f.name: f.type for f in fields(ServerConfig)}[name]
    if "timedelta" in str(kind) or isinstance(default, timedelta):
        return parse_duration(raw)
    if "bool" in str(kind):
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{name}: expected a boolean, got {raw!r}")
    if "int" in str(kind):
        if not re.fullmatch(r"[0-9]{1,19}", raw.strip(), flags=re.ASCII):
            raise ValueError(f"expected a whole number, got {raw!r}")
        return int(raw)
    if "Path" in str(kind):
        return Path(raw)
    return raw


def config_from_env(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The ``SESSIOND_*`` variables in ``env`` (default: os.environ) as field overrides."""
    env = os.environ if env is None else env
    out: dict[str, Any] = {}
    for f in fields(ServerConfig):
        raw = env.get(ENV_PREFIX + f.name.upper())
        if raw == "" and f.name in SECRET_FIELDS:
            raise ValueError(f"{ENV_PREFIX}{f.name.upper()} is set but empty (unset it, or give a value)")
        if raw is not None and raw != "":
            try:
                out[f.name] = parse_field(f.name, raw)
            except ValueError as exc:
                raise ValueError(f"{ENV_PREFIX}{f.name.upper()}: {exc}") from exc
    return out
