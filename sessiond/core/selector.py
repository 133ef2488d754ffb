"""Label selectors, and the one naming rule for labels and resources.

A worker declares labels (``zone=a``, ``gpu_model=h100``); a session may ask for workers whose
labels match a *selector*. The same text is accepted by the protocol
(``SessionOptions.selector``), the Python API (``selector="zone=a"``) and the ops CLI
(``sessiond workers list --selector``), and parsed here, once.

Grammar (whitespace — spaces and tabs — may surround any token)::

    selector    = ""                                     (every worker)
                | requirement { "," requirement }
    requirement = key "=" value                          (equality: the label is set to value)
                | key "in" "(" value { "," value } ")"   (set: the label is set to one of the values)
                | key                                    (exists: the label is set, to any value)
    key, value  = name
    name        = 1 to 63 of the characters A-Z a-z 0-9 . _ -, beginning and ending with a
                  letter or a digit

Every requirement must hold (a comma is "and"). A key appears at most once; ``in`` takes 1 to 32
values; a selector has at most 32 requirements and 1,024 bytes. Anything else — ``!=``,
``notin``, ``!key``, quotes, an empty value — is rejected with a message that says where.
Example: ``zone=a, gpu_model in (h100, a100), ssd``.

Resource names (``gpu``, ``scratch_gb``) and label keys and values follow the same ``name``
rule: it keeps the grammar free of quoting, and every name safe in a metric label or a log line.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

MAX_NAME_CHARS = 63
MAX_SELECTOR_BYTES = 1024
MAX_REQUIREMENTS = 32
MAX_IN_VALUES = 32

_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,61}[A-Za-z0-9])?")
_NAME_CHARS = re.compile(r"[A-Za-z0-9._-]+")
_BLANK = " \t"

# Labels in canonical form: (key, value) pairs sorted by key. Hashable: a label set is an index key.
Labels = tuple[tuple[str, str], ...]


class SelectorError(ValueError):
    """A selector that does not parse; the message says what and where (a phrase, no field name)."""


def name_problem(value: str) -> str | None:
    """Why ``value`` cannot be a label key, label value or resource name, or None if it can."""
    if _NAME.fullmatch(value) is not None:
        return None
    if not value:
        return "must not be empty"
    if len(value) > MAX_NAME_CHARS:
        return f"must be at most {MAX_NAME_CHARS} characters"
    return "must be letters, digits, '.', '_' or '-', beginning and ending with a letter or digit"


def shown(value: str) -> str:
    """``value`` quoted for an error message, cut to the longest a name may be (a peer's input is
    never echoed in full: a message rides in a gRPC trailer of bounded size)."""
    return repr(value) if len(value) <= MAX_NAME_CHARS else repr(value[:MAX_NAME_CHARS]) + "..."


def labels_key(labels: Mapping[str, str]) -> Labels:
    """A label map in canonical (sorted, hashable) form."""
    return tuple(sorted(labels.items()))


@dataclass(frozen=True, slots=True)
class Requirement:
    """One condition on one label: ``values`` None means "the label exists"."""

    key: str
    values: frozenset[str] | None

    def matches(self, labels: Mapping[str, str]) -> bool:
        """True when ``labels`` satisfy this requirement."""
        value = labels.get(self.key)
        if value is None:
            return False
        return self.values is None or value in self.values

    def __str__(self) -> str:
        if self.values is None:
            return self.key
        if len(self.values) == 1:
            return f"{self.key}={next(iter(self.values))}"
        return f"{self.key} in ({','.join(sorted(self.values))})"


@dataclass(frozen=True, slots=True)
class Selector:
    """A parsed selector: requirements sorted by key (so equal selectors compare and hash equal)."""

    requirements: tuple[Requirement, ...] = ()
    # Selectors key dicts on the hot path (kinds of waiters, cached label-set matches): hash once.
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash(self.requirements))

    def __hash__(self) -> int:
        return self._hash

    def matches(self, labels: Mapping[str, str]) -> bool:
        """True when ``labels`` satisfy every requirement (the empty selector matches everything)."""
        return all(r.matches(labels) for r in self.requirements)

    def __bool__(self) -> bool:
        return bool(self.requirements)

    def __str__(self) -> str:
        """The canonical text: requirements sorted by key, ``in`` values sorted, no spaces."""
        return ",".join(str(r) for r in self.requirements)


EVERYTHING = Selector()


@functools.lru_cache(maxsize=1024)
def parse_selector(text: str) -> Selector:
    """Parse ``text`` (see the module docstring for the grammar).

    Cached: most sessions use a handful of selectors, and a Selector is immutable.

    Raises:
        SelectorError: ``text`` is not a selector; the message names the offset.
    """
    if len(text.encode("utf-8", "surrogatepass")) > MAX_SELECTOR_BYTES:
        raise SelectorError(f"is longer than {MAX_SELECTOR_BYTES} bytes")
    return _Parser(text).selector()


class _Parser:
    """Recursive descent over the text, one token of look-ahead."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def selector(self) -> Selector:
        self._blank()
        if self.pos == len(self.text):
            return EVERYTHING
        found: dict[str, Requirement] = {}
        while True:
            at = self._skip_blank_at()
            requirement = self._requirement()
            if requirement.key in found:
                raise SelectorError(f"names label {requirement.key!r} twice (at offset {at})")
            if len(found) == MAX_REQUIREMENTS:
                raise SelectorError(f"has more than {MAX_REQUIREMENTS} requirements")
            found[requirement.key] = requirement
            self._blank()
            if self.pos == len(self.text):
                break
            self._expect(",", "',' or the end")
        return Selector(tuple(found[k] for k in sorted(found)))

    def _requirement(self) -> Requirement:
        key = self._name("a label key")
        self._blank()
        if self._peek("="):
            self.pos += 1
            self._blank()
            return Requirement(key, frozenset({self._name("a label value")}))
        if self._peek_word("in"):
            self.pos += 2
            self._blank()
            self._expect("(", "'(' after 'in'")
            values: set[str] = set()
            while True:
                self._blank()
                values.add(self._name("a label value"))
                if len(values) > MAX_IN_VALUES:
                    raise SelectorError(f"has more than {MAX_IN_VALUES} values for label {key!r}")
                self._blank()
                if self._peek(")"):
                    self.pos += 1
                    return Requirement(key, frozenset(values))
                self._expect(",", "',' or ')' in the value list")
        if self.pos == len(self.text) or self._peek(","):
            return Requirement(key, None)
        raise self._unexpected("'=', 'in (...)', ',' or the end")

    def _name(self, what: str) -> str:
        match = _NAME_CHARS.match(self.text, self.pos)
        if match is None:
            raise self._unexpected(what)
        value = match.group()
        problem = name_problem(value)
        if problem is not None:
            raise SelectorError(f"{what} {shown(value)} at offset {self.pos} {problem}")
        self.pos = match.end()
        return value

    def _peek(self, char: str) -> bool:
        return self.text.startswith(char, self.pos)

    def _peek_word(self, word: str) -> bool:
        # "in" is the operator only as a whole word: "index" is a label key, "in(" and "in (" are not.
        end = self.pos + len(word)
        return self.text.startswith(word, self.pos) and (end == len(self.text) or self.text[end] in f"{_BLANK}(")

    def _expect(self, char: str, what: str) -> None:
        if not self._peek(char):
            raise self._unexpected(what)
        self.pos += 1

    def _blank(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in _BLANK:
            self.pos += 1

    def _skip_blank_at(self) -> int:
        self._blank()
        return self.pos

    def _unexpected(self, what: str) -> SelectorError:
        if self.pos == len(self.text):
            return SelectorError(f"ends where {what} was expected")
        return SelectorError(f"expected {what} at offset {self.pos}, found {self.text[self.pos]!r}")


__all__ = [
    "EVERYTHING",
    "Labels",
    "Requirement",
    "Selector",
    "SelectorError",
    "labels_key",
    "name_problem",
    "parse_selector",
    "shown",
]
