"""Server configuration values as a user types them: durations, integers, tokens."""

from __future__ import annotations

from datetime import timedelta

import pytest

from sessiond.config import ServerConfig, format_duration, parse_duration, parse_field


@pytest.mark.parametrize(("text", "seconds"), [
    ("600s", 600), ("10m", 600), ("1.5", 1.5), ("250ms", 0.25), ("2h", 7200), ("1.5h", 5400), ("1m30s", 90),
    ("1h0m5s", 3605), ("0", 0), ("0s", 0), ("100", 100), (" 20s ", 20), (".5s", 0.5), ("86400s", 86400),
])
def test_a_duration_is_seconds_or_numbers_with_units(text: str, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", [
    "", " ", "s", "abc", "ten minutes", "-1", "-5s", "+5s", "inf", "nan", "infs", "1e400", "1e3", "10 fortnights",
    "1d", "5 s", "1..5s", "1.2.3", "5sm", "m5", "1e15h", "9" * 30, "5\x00s", "\u0665s",
])
def test_anything_else_is_not_a_duration(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize("value", [
    timedelta(seconds=60), timedelta(hours=24), timedelta(seconds=20), timedelta(minutes=5), timedelta(minutes=10),
    timedelta(seconds=1.5), timedelta(milliseconds=250), timedelta(seconds=90), timedelta(0), timedelta(days=400),
])
def test_a_formatted_duration_parses_back_to_itself(value: timedelta) -> None:
    assert parse_duration(format_duration(value)) == value


def test_help_forms_of_the_defaults_are_short() -> None:
    config = ServerConfig()
    assert format_duration(config.retention) == "10m"
    assert format_duration(config.execution_timeout) == "24h"
    assert format_duration(config.heartbeat_timeout) == "20s"
    assert format_duration(timedelta(seconds=1.5)) == "1.5s"


def test_every_duration_field_parses_its_flag_value() -> None:
    assert parse_field("retention", "600s") == timedelta(minutes=10)
    with pytest.raises(ValueError, match="invalid duration 'soon'"):
        parse_field("retention", "soon")


@pytest.mark.parametrize("text", ["-1", "1.5", "x", "", "\u0661", "9" * 20])
def test_an_integer_field_takes_only_a_whole_number(text: str) -> None:
    with pytest.raises(ValueError, match="whole number"):
        parse_field("max_pending_requests", text)


@pytest.mark.parametrize("value", [0, 2**31, 99_999_999_999_999])
def test_integers_out_of_range_are_rejected(value: int) -> None:
    with pytest.raises(ValueError, match="max_pending_requests"):
        ServerConfig(max_pending_requests=value)


@pytest.mark.parametrize("token", ["", "has space", "line\nbreak", "tab\t", "\u00e9t\u00e9", "nul\x00"])
def test_a_token_no_client_could_send_is_rejected(token: str) -> None:
    with pytest.raises(ValueError, match="worker_token"):
        ServerConfig(worker_token=token)
