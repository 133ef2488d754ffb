"""Scenario ``auth`` (issue 10): what authentication costs on the hot path, tracing off.

Two sessiond processes side by side, each with one worker: one without credentials, one with a
tokens file (1,000 principals, so every RPC is authenticated and every session is scoped to its
principal); both with a token key. Create+complete at 64 in flight, in pairs of phases that
alternate which server goes first, so machine drift spreads over both. The idle server costs next
to nothing while the other is measured.

The load generator and the worker send the same bearer tokens to both servers (the one without
credentials ignores them): the client's cost of sending a header is the client's, and on a 2-core
machine a client made slower lowers the server's batching and so raises its CPU per pair, which
would be counted against authentication.

End-to-end figures on a shared 2-core machine spread by tens of percent, more than the effect
looked for (a few µs per RPC). So the scenario also times the authentication guard itself in this
process (the same 1,000-entry tokens file, a create's metadata) and reports what two guarded RPCs
cost as a share of the server CPU per pair measured with auth off in the same pairs.
"""

from __future__ import annotations

import time
import timeit
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.stats import ratio

if TYPE_CHECKING:
    from bench.runner import Ctx

CALLER_TOKEN = "bench-caller-token"
WORKER_TOKEN = "bench-worker-token"


def _bearer(token: str) -> tuple[str, ...]:
    """Load-generator arguments that send ``token`` with every call (none for "")."""
    return ("--token", token) if token else ()


def guard_us_per_call(tokens_file: Path, token: str) -> float:
    """CPU µs of one authentication guard call (bearer token against ``tokens_file``), best of 7."""
    from sessiond.config import ServerConfig
    from sessiond.server.auth import Authenticator

    guard = Authenticator(ServerConfig(tokens_file=tokens_file)).guard("/sessiond.v1.SessionService/CreateSession")
    assert guard is not None

    class _Context:  # what the guard reads of a grpc.aio context
        metadata = (("user-agent", "grpc-python/1.85.1"), ("authorization", f"Bearer {token}"))

        def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
            return self.metadata

        def auth_context(self) -> dict[str, list[bytes]]:
            return {}

    context, number = _Context(), 100_000
    best = min(timeit.repeat(lambda: guard(context), timer=time.process_time, number=number, repeat=7))
    return best / number * 1e6


def scenario_auth(ctx: Ctx) -> dict[str, Any]:
    """Create+complete throughput and server CPU per pair with bearer-token principals on vs. off."""
    from bench.runner import case, entry

    tokens = ctx.logs / "auth-tokens"
    tokens.write_text("".join(f"bench-token-{i:04d} team-{i:04d} caller\n" for i in range(998))
                      + f"{CALLER_TOKEN} bench-callers caller\n{WORKER_TOKEN} bench-workers worker\n")
    key = ctx.logs / "auth-key"
    key.write_text("bench-token-key-" * 4 + "\n")
    pairs: list[dict[str, Any]] = []
    with ctx.sessiond() as (plain, plain_target), \
            ctx.sessiond(extra=["--tokens-file", str(tokens), "--token-key-file", str(key)]) as (secure, secure_target):
        workers = {"off": ctx.start_workers(plain_target, 1, capacity=1000, token=WORKER_TOKEN),
                   "on": ctx.start_workers(secure_target, 1, capacity=1000, token=WORKER_TOKEN)}
        servers = {"off": (plain, plain_target, CALLER_TOKEN), "on": (secure, secure_target, CALLER_TOKEN)}
        try:
            ctx.say("auth: warming both servers up (not measured)")
            for variant, (server, target, token) in servers.items():
                ctx.phases(target, ["cc:64"], server, workers[variant][0], extra=_bearer(token))
            for r in range(ctx.s.auth_runs):
                pair: dict[str, Any] = {}
                for variant in (("off", "on") if r % 2 == 0 else ("on", "off")):
                    ctx.say(f"auth pair {r + 1}/{ctx.s.auth_runs}: auth {variant}")
                    server, target, token = servers[variant]
                    phase = ctx.phases(target, ["cc:64"], server, workers[variant][0], extra=_bearer(token))["cc:64"]
                    pair[variant] = {"pairs_per_s": phase["ops_per_s"],
                                     "server_us_per_pair": phase.get("server_us_per_op"),
                                     "p50_ms": phase["p50_ms"], "p99_ms": phase["p99_ms"],
                                     "errors": sum(phase["errors"].values())}
                pairs.append(pair)
        finally:
            ctx.stop_all(workers["off"] + workers["on"])

    guard_us = [guard_us_per_call(tokens, CALLER_TOKEN) for _ in pairs]

    def column(variant: str, key: str) -> list[Any]:
        return [pair[variant].get(key) for pair in pairs]

    throughput = case(
        "create+complete, 64 in flight: bearer-token principals on (1,000-entry tokens file)",
        value=column("on", "pairs_per_s"), unit="pairs/s", baseline=column("off", "pairs_per_s"),
        baseline_unit="pairs/s", baseline_what="same run, a server without credentials",
        ratios=[ratio(p["on"]["pairs_per_s"], p["off"]["pairs_per_s"]) for p in pairs],
        goal="≥ 0.95", check=lambda v: v >= 0.95,
        details={"p99_ms": column("on", "p99_ms"), "p99_ms_off": column("off", "p99_ms"),
                 "errors": [p["on"]["errors"] + p["off"]["errors"] for p in pairs]})
    cpu = case(
        "server CPU per create+complete pair, auth on", value=column("on", "server_us_per_pair"), unit="µs",
        baseline=column("off", "server_us_per_pair"), baseline_unit="µs", baseline_what="auth off, same run",
        ratios=[ratio(p["on"]["server_us_per_pair"], p["off"]["server_us_per_pair"]) for p in pairs],
        goal="≤ 1.05 (the steadier figure on a shared machine)", check=lambda v: v <= 1.05)
    share = case(
        "authentication guard, 2 calls per pair (in-process, 1,000-entry tokens file)",
        value=[2 * g for g in guard_us], unit="µs", baseline=column("off", "server_us_per_pair"),
        baseline_unit="µs", baseline_what="server CPU per pair, auth off, same run",
        ratios=[ratio(2 * g, p["off"]["server_us_per_pair"]) for g, p in zip(guard_us, pairs, strict=True)],
        goal="≤ 0.05", check=lambda v: v <= 0.05)
    return entry("authentication", "create+complete with bearer-token principals on / off, tracing off, same run, "
                 "paired phases", [throughput, cpu, share], pairs)
