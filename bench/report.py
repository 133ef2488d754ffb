"""Render results.json as the console table and as RESULTS.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

ORDER = ("create_complete", "execute_activity_1", "execute_activity_64", "activity_floor", "library_worker", "kill9",
         "frozen_worker", "scale", "tracing", "dashboard", "server_restart", "worker_restart", "caller_lost",
         "resources", "auth", "replicas_create_complete", "replicas_forwarded", "replicas_failover",
         "replicas_leader_kill")


def num(value: float | None) -> str:
    """A number with as many digits as it deserves."""
    if value is None:
        return "–"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) < 1e4):
        return f"{int(value):,}"
    size = abs(value)
    if size >= 1000:
        return f"{value:,.0f}"
    if size >= 100:
        return f"{value:.0f}"
    if size >= 10:
        return f"{value:.1f}"
    if size >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def spread_text(s: dict[str, Any] | None, unit: str = "") -> str:
    """``median (min–max) unit``; just the median when there was one repetition."""
    if not s or s.get("median") is None:
        return "–"
    text = num(s["median"])
    if s.get("n", 0) > 1:
        text += f" ({num(s['min'])}–{num(s['max'])})"
    return f"{text} {unit}".strip()


def verdict(met: bool | None) -> str:
    return "—" if met is None else ("**met**" if met else "**MISSED**")


def rows(results: dict[str, Any]) -> list[list[str]]:
    """One row per case: scenario, case, figure, same-run baseline, ratio, goal, verdict."""
    out = []
    for key in ORDER:
        scenario = results["scenarios"].get(key)
        if scenario is None:
            out.append([key, "(not run)", "", "", "", "", ""])
            continue
        for c in scenario["cases"]:
            base = c["baseline"]
            base_text = spread_text(base, base.get("unit", ""))
            if base.get("what"):
                base_text = f"{base_text} — {base['what']}" if base_text != "–" else base["what"]
            out.append([scenario["title"], c["case"], spread_text(c["value"], c["value"]["unit"]), base_text,
                        spread_text(c["ratio"], "×") if c["ratio"].get("median") is not None else "–",
                        c["goal"], verdict(c["met"])])
    return out


HEADER = ["scenario", "case", "figure: median (min–max)", "same-run baseline", "ratio", "goal", "verdict"]


def _md_table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in body]
    return "\n".join(lines)


def table(results: dict[str, Any]) -> str:
    """The summary table (markdown, also readable on a console)."""
    return _md_table(HEADER, rows(results))


def _details(results: dict[str, Any]) -> str:
    parts = []
    for key in ORDER:
        scenario = results["scenarios"].get(key)
        if scenario is None:
            continue
        parts.append(f"### {scenario['title']}\n\nFigure: {scenario['figure']}. "
                     f"Scenario wall time {num(scenario.get('seconds'))} s.\n")
        for c in scenario["cases"]:
            items = []
            for name, value in (c.get("details") or {}).items():
                if isinstance(value, dict) and "median" in value:
                    items.append(f"{name} {spread_text(value)}")
                else:
                    items.append(f"{name} {value}")
            for extra in ("pooled", "echo_baseline"):
                if extra in c:
                    items.append(f"{extra}: " + ", ".join(f"{k} {num(v) if isinstance(v, float | int) else v}"
                                                          for k, v in c[extra].items()))
            parts.append(f"- **{c['case']}**: " + "; ".join(items))
        parts.append("")
    return "\n".join(parts)


def markdown(results: dict[str, Any], notes: Path | None = None) -> str:
    """RESULTS.md: how it was produced, the table, per-scenario details, and the hand-written notes."""
    meta = results["meta"]
    machine = meta["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
    head = [
        "# sessiond benchmark results",
        "",
        f"Produced by `{meta['command']}` ({meta['mode']} mode; `make bench` runs the same) on {meta['date']}, "
        f"commit `{meta.get('git', '')}`, in {num(meta.get('total_seconds'))} s.",
        "",
        f"Machine: {machine['nproc']} vCPU ({machine['cpu']}), {machine['mem_gb']} GB RAM, Linux "
        f"{machine['kernel']}, load average at start {machine['load_avg_at_start']}; Python {meta['python']}; "
        f"{versions}.",
        "",
        "Every figure is a ratio to a baseline measured in the same run: an empty grpc.aio echo service "
        "(`bench/echo_server.py`: unary echo, bidi ping-pong, 100 B payloads, same grpc options as sessiond) or, "
        "for tracing, sessiond with tracing off. The echo service also runs sessiond's message patterns with no logic "
        "(`Push`: unary + one worker-stream message; `Relay`: the activity round trip through a worker process), "
        "reported as the `floor_*` details: what any grpc.aio implementation of this protocol reaches here. "
        "Servers, workers and load generators are separate processes "
        "started fresh for each repetition; sessiond is `python -m sessiond serve --log-level WARNING` (the "
        "tracing scenario uses `bench/sessiond_server.py`, the same server plus a tracer set-up). Repetitions "
        "alternate which system goes first. Figures are medians over repetitions with the (min–max) spread; "
        "ratios are paired per repetition, then the median is taken.",
        "",
        _md_table(HEADER, rows(results)),
        "",
    ]
    if meta.get("failed"):
        head += [f"Scenarios that failed to run: {', '.join(meta['failed'])}.", ""]
    head += ["## Details", "", _details(results)]
    if notes is not None and notes.exists():
        head += [notes.read_text().rstrip(), ""]
    return "\n".join(head)
