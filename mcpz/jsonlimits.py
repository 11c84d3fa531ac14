"""JSON from the network, parsed with a bound on its nesting depth.

The standard library's parser recurses once per nested array or object. Under the interpreter's
default recursion limit a deep document is a RecursionError; under a raised one (py_ecc raises it
to 100,000 when it is imported) it is a C stack overflow that kills the process. So every JSON that
arrives from outside (request bodies, JSON-RPC relayed over the mesh) goes through `loads`, which
measures the depth before the parser sees it and refuses anything deeper than `MAX_DEPTH`.

The measure is exact for valid JSON: strings are cut out first (in JSON a `"` outside a string
always opens one), then the brackets left are counted. A document with no more opening brackets
than the bound skips the count: that is nearly every real one.
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any

from mcpz.errors import UsageError

MAX_DEPTH = 256

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


class JSONError(UsageError, ValueError):
    """Not JSON, or JSON nested deeper than allowed. A ValueError too, as json's own error is."""


def depth(data: bytes) -> int:
    """How deep the arrays and objects of the JSON document `data` nest (0 for a scalar)."""
    if data.count(b"[") + data.count(b"{") == 0:
        return 0
    brackets = _STRING.sub(b"", data).translate(None, _NOT_BRACKETS)
    return max(0, max(accumulate(map(_STEP.__getitem__, brackets)), default=0))


def check_depth(data: bytes | bytearray | memoryview | str, max_depth: int = MAX_DEPTH) -> bytes:
    """`data` as bytes, if its nesting is within `max_depth`; raises JSONError otherwise."""
    if isinstance(data, str):
        raw = data.encode("utf-8", "surrogatepass")
    else:
        raw = bytes(data)
    if raw.count(b"[") + raw.count(b"{") > max_depth and depth(raw) > max_depth:
        raise JSONError(f"JSON nested deeper than {max_depth} levels")
    return raw


def loads(data: bytes | bytearray | memoryview | str, *, max_depth: int = MAX_DEPTH) -> Any:
    """`json.loads` with a depth bound: the value, or JSONError (never RecursionError)."""
    raw = check_depth(data, max_depth)
    try:
        return json.loads(data if isinstance(data, str) else raw)
    except RecursionError as e:  # the bound is above what this thread's stack allows
        raise JSONError(f"JSON nested too deeply to parse here ({e})") from e
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError alike
        raise JSONError(f"not valid JSON: {e}") from e
