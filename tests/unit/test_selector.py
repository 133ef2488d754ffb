"""The selector grammar: what parses (and to what canonical text), what is refused and where, what matches."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sessiond.core.selector import (
    EVERYTHING,
    MAX_IN_VALUES,
    MAX_REQUIREMENTS,
    MAX_SELECTOR_BYTES,
    Requirement,
    Selector,
    SelectorError,
    name_problem,
    parse_selector,
)


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        pytest.param("", "", id="empty"),
        pytest.param("   \t ", "", id="blank"),
        pytest.param("zone=a", "zone=a", id="equality"),
        pytest.param(" zone = a ", "zone=a", id="spaces-around-tokens"),
        pytest.param("ssd", "ssd", id="exists"),
        pytest.param("gpu_model in (h100,a100)", "gpu_model in (a100,h100)", id="in-sorted"),
        pytest.param("gpu_model in(h100)", "gpu_model=h100", id="in-one-value-is-equality"),
        pytest.param("gpu_model in ( h100 , h100 )", "gpu_model=h100", id="in-duplicates-collapse"),
        pytest.param("zone=a,gpu_model in (h100,a100),ssd", "gpu_model in (a100,h100),ssd,zone=a", id="issue-example"),
        pytest.param("in", "in", id="key-named-in-exists"),
        pytest.param("in=x", "in=x", id="key-named-in-equality"),
        pytest.param("in in (x)", "in=x", id="key-named-in-in"),
        pytest.param("index=3", "index=3", id="key-starting-with-in"),
        pytest.param("zone in (a), index", "index,zone=a", id="in-then-key-starting-with-in"),
        pytest.param("a.b-c_d=E.F-1", "a.b-c_d=E.F-1", id="dots-dashes-underscores-case"),
        pytest.param("x" * 63 + "=" + "y" * 63, "x" * 63 + "=" + "y" * 63, id="63-characters"),
    ],
)
def test_selectors_parse_to_their_canonical_text(text: str, canonical: str) -> None:
    parsed = parse_selector(text)
    assert str(parsed) == canonical
    assert parse_selector(canonical) == parsed  # the canonical text is a selector for the same thing


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("zone=", "ends where a label value was expected", id="missing-value"),
        pytest.param("=a", "expected a label key at offset 0, found '='", id="missing-key"),
        pytest.param("zone==a", "expected a label value at offset 5, found '='", id="double-equals"),
        pytest.param("zone!=a", "expected '=', 'in (...)', ',' or the end at offset 4, found '!'", id="not-equal"),
        pytest.param("!ssd", "expected a label key at offset 0, found '!'", id="not-exists"),
        pytest.param("zone notin (a)", "expected '=', 'in (...)', ',' or the end at offset 5, found 'n'",
                     id="notin"),
        pytest.param("zone a", "expected '=', 'in (...)', ',' or the end at offset 5, found 'a'", id="two-names"),
        pytest.param("zone in a", "expected '(' after 'in' at offset 8, found 'a'", id="in-without-parens"),
        pytest.param("zone in (a", "ends where ',' or ')' in the value list was expected", id="unclosed"),
        pytest.param("zone in ()", "expected a label value at offset 9, found ')'", id="empty-set"),
        pytest.param("zone in (a,)", "expected a label value at offset 11, found ')'", id="trailing-comma-in-set"),
        pytest.param("zone=a,", "ends where a label key was expected", id="trailing-comma"),
        pytest.param(",zone=a", "expected a label key at offset 0, found ','", id="leading-comma"),
        pytest.param("zone=a,,ssd", "expected a label key at offset 7, found ','", id="empty-requirement"),
        pytest.param("zone=a zone=b", "expected ',' or the end at offset 7, found 'z'", id="missing-comma"),
        pytest.param("zone=a,zone=b", "names label 'zone' twice", id="duplicate-key"),
        pytest.param('zone="a"', "expected a label value at offset 5, found '\"'", id="quotes"),
        pytest.param("zöne=a", "expected '=', 'in (...)', ',' or the end at offset 1, found 'ö'", id="non-ascii"),
        pytest.param("zone=a\x00", "found '\\x00'", id="nul"),
        pytest.param("zone=a\n", "found '\\n'", id="newline"),
        pytest.param("-zone=a", "a label key '-zone' at offset 0 must be letters, digits", id="leading-dash"),
        pytest.param("zone=a.", "a label value 'a.' at offset 5 must be letters, digits", id="trailing-dot"),
        pytest.param("x" * 64, "must be at most 63 characters", id="64-characters"),
    ],
)
def test_malformed_selectors_are_refused_saying_what_and_where(text: str, message: str) -> None:
    with pytest.raises(SelectorError) as caught:
        parse_selector(text)
    assert message in str(caught.value)


def test_selectors_have_bounds() -> None:
    many = ",".join(f"k{i}" for i in range(MAX_REQUIREMENTS))
    assert len(parse_selector(many).requirements) == MAX_REQUIREMENTS
    with pytest.raises(SelectorError, match="more than 32 requirements"):
        parse_selector(many + ",one_more")
    values = ",".join(f"v{i}" for i in range(MAX_IN_VALUES))
    assert len(parse_selector(f"k in ({values})").requirements[0].values or ()) == MAX_IN_VALUES
    with pytest.raises(SelectorError, match="more than 32 values"):
        parse_selector(f"k in ({values},v_extra)")
    with pytest.raises(SelectorError, match="longer than 1024 bytes"):
        parse_selector("k" + " " * MAX_SELECTOR_BYTES)


LABELS = {"zone": "a", "gpu_model": "h100", "ssd": ""}


@pytest.mark.parametrize(
    ("text", "matches"),
    [
        pytest.param("", True, id="empty-matches-all"),
        pytest.param("zone=a", True, id="equal"),
        pytest.param("zone=b", False, id="other-value"),
        pytest.param("region=a", False, id="missing-label-equality"),
        pytest.param("gpu_model in (a100,h100)", True, id="in-hit"),
        pytest.param("gpu_model in (a100,l4)", False, id="in-miss"),
        pytest.param("ssd", True, id="exists-with-empty-value"),
        pytest.param("nvme", False, id="exists-missing"),
        pytest.param("zone=a,ssd", True, id="and-all-hold"),
        pytest.param("zone=a,nvme", False, id="and-one-fails"),
        pytest.param("Zone=a", False, id="keys-are-case-sensitive"),
        pytest.param("zone=A", False, id="values-are-case-sensitive"),
    ],
)
def test_a_selector_matches_when_every_requirement_holds(text: str, matches: bool) -> None:
    assert parse_selector(text).matches(LABELS) is matches


def test_the_empty_selector_is_falsy_and_equal_to_everything() -> None:
    assert parse_selector("") == EVERYTHING and not EVERYTHING
    assert parse_selector("zone=a")
    assert EVERYTHING.matches({})


@pytest.mark.parametrize(
    ("name", "ok"),
    [("gpu", True), ("scratch_gb", True), ("a", True), ("A1.b-c", True), ("", False), ("-gpu", False),
     ("gpu-", False), ("g pu", False), ("gpu/0", False), ("x" * 63, True), ("x" * 64, False), ("é", False)],
)
def test_one_naming_rule_for_resources_and_labels(name: str, ok: bool) -> None:
    assert (name_problem(name) is None) is ok


_names = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,8}[A-Za-z0-9])?", fullmatch=True)


@given(st.dictionaries(_names, st.one_of(st.none(), st.frozensets(_names, min_size=1, max_size=4)), max_size=6),
       st.dictionaries(_names, _names, max_size=6))
def test_a_selector_printed_canonically_parses_back_and_matches_the_same(
        wanted: dict[str, frozenset[str] | None], labels: dict[str, str]) -> None:
    selector = Selector(tuple(Requirement(k, wanted[k]) for k in sorted(wanted)))
    again = parse_selector(str(selector))
    assert again == selector
    expected = all(k in labels and (v is None or labels[k] in v) for k, v in wanted.items())
    assert again.matches(labels) is expected


def test_errors_never_echo_a_long_input_in_full() -> None:
    with pytest.raises(SelectorError) as caught:
        parse_selector("x" * 1000)
    assert len(str(caught.value)) < 200
