"""Names: the one rule for every identifier a peer sends (task queue, owner, request_id,
worker_id, identity, host_name, activity type, session_id).

A name is at most 256 bytes of UTF-8 and holds no control character: no NUL, no C0/C1 control,
no DEL, no line or paragraph separator. Names end up in keys, logs and terminals; such characters
only ever forge log lines, split keys or hide what a name really is.
"""

from __future__ import annotations

import unicodedata

MAX_NAME_BYTES = 256

# Cc: C0, DEL and C1 controls (NUL, \n, ESC, ...); Zl/Zp: U+2028/U+2029, line breaks to many tools.
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Zl", "Zp"})


def name_problem(value: str) -> str | None:
    """Why ``value`` cannot be a name (a phrase to follow the field's name), or None if it can."""
    try:
        size = len(value.encode())
    except UnicodeEncodeError:  # a lone surrogate: not representable on the wire at all
        return "is not valid UTF-8"
    if size > MAX_NAME_BYTES:
        return f"is longer than {MAX_NAME_BYTES} bytes"
    if not value.isprintable():  # the fast path: printable text has none of the forbidden characters
        for offset, char in enumerate(value):
            if unicodedata.category(char) in _FORBIDDEN_CATEGORIES:
                return f"must not contain control characters (U+{ord(char):04X} at offset {offset})"
    return None
