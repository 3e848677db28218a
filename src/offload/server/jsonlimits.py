"""Bounding JSON nesting before anything decodes it.

msgspec (like every recursive decoder) turns a document nested past the interpreter's recursion
limit into a RecursionError, and one nested just under it decodes but cannot be encoded again
with the envelope around it. A client's body, a cursor, and anything read back from storage are
checked here first, in time linear in their size and without recursion.
"""

from __future__ import annotations

import base64
import binascii
import operator
import re
from itertools import accumulate, count

MAX_CURSOR_CHARS = 1024  # ours are under 400: a longer one is not ours
MAX_JSON_DEPTH = 64  # far deeper than any sensible job argument, far from the recursion limit

# A JSON string, quotes included (the unrolled form: no backtracking on long strings). The
# closing quote is optional so that every attempt matches: an unterminated string swallows the
# rest of the text at once, where a required quote made re.sub retry at every later quote
# (quadratic: an 80 KB body of escaped quotes held the event loop 27 s).
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
# Openers become 2 and closers 0, so that (running sum - position) is the depth at each bracket.
_WEIGHTS = bytes.maketrans(b"[{]}", b"\x02\x02\x00\x00")


def too_deep(raw: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when the JSON text ``raw`` nests arrays and objects more than ``limit`` deep.

    Brackets inside strings do not count. Text that is not JSON gives some answer; the decoder
    refuses it afterwards anyway.
    """
    if raw.count(b"[") + raw.count(b"{") <= limit:  # the common case: nothing to scan
        return False
    if b'"' in raw:
        raw = _STRING.sub(b"", raw)
    brackets = raw.translate(_WEIGHTS, _NOT_BRACKETS)
    if len(brackets) <= limit:
        return False
    # All in C: accumulate, map and count never return to the interpreter per bracket.
    depths = map(operator.sub, accumulate(brackets), count(1))
    return max(depths, default=0) > limit


def checked_cursor(cursor: str | None) -> str | None:
    """``cursor`` when it is short and shallow enough to hand to a backend's decoder.

    Raises ValueError (what a backend raises for a cursor that is not its own) otherwise.
    """
    if cursor is None:
        return None
    if len(cursor) > MAX_CURSOR_CHARS:
        raise ValueError("this cursor is not valid: too long")
    try:
        raw = base64.urlsafe_b64decode(cursor.encode())
    except (binascii.Error, ValueError):
        return cursor  # not base64: the backend refuses it with its own message
    if too_deep(raw):
        raise ValueError("this cursor is not valid: nested too deep")
    return cursor
