"""``HOST:PORT`` settings (listen addresses, --advertise, etcd endpoints): what is accepted, and the
one-line error, naming the setting, for everything else."""

from __future__ import annotations

import pytest

from sessiond.config import ServerConfig
from sessiond.hostport import join_host_port, parse_host_port, with_port


@pytest.mark.parametrize(("raw", "expected"), [
    ("127.0.0.1:50051", ("127.0.0.1", 50051)),
    ("localhost:1", ("localhost", 1)),
    ("etcd_1:65535", ("etcd_1", 65535)),
    ("[::1]:50051", ("::1", 50051)),
    ("[::]:8080", ("::", 8080)),
    ("[fe80::1%eth0]:2379", ("fe80::1%eth0", 2379)),
    ("  h:80\n", ("h", 80)),  # white space around the value (a shell variable, a file) is ignored
])
def test_addresses_that_parse(raw: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(raw, "listen") == expected


@pytest.mark.parametrize(("raw", "says"), [
    ("h", "expected host:port"),
    ("[::1]", "expected host:port"),
    ("h:", "bad port"),
    ("h:0", "bad port in 'h:0' (1-65535)"),
    ("h:65536", "bad port"),
    ("h:-1", "bad port"),
    ("h:1e3", "bad port"),
    ("h:٣", "bad port"),  # a non-ASCII digit
    ("h:00000080", "bad port"),
    ("h: 80", "bad port"),
    ("::1:50051", "an IPv6 address goes in brackets"),
    ("::1", "an IPv6 address goes in brackets"),
    ("[::1:50051", "no closing ']'"),
    ("[::1]50051", "expected [host]:port"),
    ("[]:80", "bad host"),
    ("[h]:80", "bad host"),
    (":80", "bad host"),
    ("my host:80", "bad host"),
    ("h :80", "bad host"),
    ("", "bad host"),
])
def test_bad_addresses_get_one_line_naming_the_setting(raw: str, says: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_host_port(raw, "advertise")
    message = str(caught.value)
    assert message.startswith("advertise: ") and says in message and "\n" not in message


def test_a_default_port_fills_in_only_when_the_port_is_left_out() -> None:
    assert parse_host_port("h", "endpoint", default_port=2379) == ("h", 2379)
    assert parse_host_port("[::1]", "endpoint", default_port=2379) == ("::1", 2379)
    assert parse_host_port("h:1", "endpoint", default_port=2379) == ("h", 1)
    with pytest.raises(ValueError, match="bad port"):
        parse_host_port("h:", "endpoint", default_port=2379)


def test_port_zero_only_where_the_system_may_pick_the_port() -> None:
    assert parse_host_port("[::]:0", "listen", allow_port_zero=True) == ("::", 0)
    with pytest.raises(ValueError, match=r"\(1-65535\)"):
        parse_host_port("[::]:0", "advertise")


@pytest.mark.parametrize("raw", ["h:80", "[::1]:80", "[fe80::1%eth0]:2379", "10.0.0.1:0"])
def test_join_puts_ipv6_back_in_brackets(raw: str) -> None:
    assert join_host_port(*parse_host_port(raw, "x", allow_port_zero=True)) == raw


def test_settings_use_the_one_parser() -> None:
    with pytest.raises(ValueError, match="ui_listen: an IPv6 address goes in brackets"):
        ServerConfig(ui_listen="::1:8080")
    with pytest.raises(ValueError, match="advertise must be an address other replicas can reach"):
        ServerConfig(store="etcd://127.0.0.1:2379/test", advertise="[::]:50051")
    assert ServerConfig(ui_listen=" [::1]:0 ").ui_listen == " [::1]:0 "


@pytest.mark.parametrize(("listen", "expected"), [
    ("127.0.0.1:0", "127.0.0.1:50123"),
    ("localhost:50051", "localhost:50123"),
    ("[::1]:0", "[::1]:50123"),
    ("[::]:50051", "[::]:50123"),
    ("[fe80::1%eth0]:0", "[fe80::1%eth0]:50123"),
])
def test_a_listen_address_takes_the_port_actually_bound(listen: str, expected: str) -> None:
    """A replica's advertised address (no --advertise) and the dashboard's gRPC address."""
    assert with_port(listen, 50123) == expected


def test_an_address_that_is_not_host_port_has_no_port_to_replace() -> None:
    with pytest.raises(ValueError, match="listen: "):
        with_port("unix:/run/sessiond.sock", 50123)
