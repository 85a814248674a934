"""JSON from clients, read strictly: bounded nesting, no NaN, Infinity or number too large for
a float, and no NUL or lone surrogate in any string (neither can be stored, logged or sent to a card as text).

`json_loads_strict` raises JsonInputError (a ValueError) with a message naming where the
problem is, e.g. `$.payExchangeInfoLists[0].goodsInfo`; invalid JSON still raises
json.JSONDecodeError as json.loads does. `json_compact` writes such data back with every number
as the client wrote it; `json_kind` names a value's JSON type for error messages."""

from __future__ import annotations

import decimal
import json
import math
import re
from typing import Any

MAX_DEPTH = 32
# Only a \\u escape can put NUL or a surrogate into a parsed string (raw control characters
# are refused by the parser itself), so strings are walked only when the text has one.
_SUSPECT_ESCAPE = re.compile(r"\\u(?:0000|[dD][89abcdefABCDEF])")
_BAD_CHARS = re.compile("[\x00\ud800-\udfff]")


class JsonNumber(str):
    """A JSON number kept exactly as the client wrote it (100, 143.64, 1.50, 1e3): pass it as
    `parse_int` and `parse_float`."""


class JsonInputError(ValueError):
    def __init__(self, message: str, path: str = "$") -> None:
        super().__init__(message)
        self.message = message
        self.path = path


def _refuse_constant(name: str):
    raise JsonInputError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise JsonInputError(f"the number {text[:40]} is too large")
    return value


def json_loads_strict(text: str | bytes, *, max_depth: int = MAX_DEPTH, **kwargs) -> Any:
    """json.loads, then the checks above. `kwargs` go to json.loads (hooks, parse_float)."""
    kwargs.setdefault("parse_constant", _refuse_constant)
    kwargs.setdefault("parse_float", _finite_float)
    try:
        value = json.loads(text, **kwargs)
    except RecursionError:
        raise JsonInputError(f"the JSON is nested more than {max_depth} levels deep") from None
    raw = text.decode("utf-8", "replace") if isinstance(text, (bytes, bytearray)) else text
    json_check(value, max_depth=max_depth, strings=bool(_SUSPECT_ESCAPE.search(raw)))
    return value


def _where(path: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    text = str(key)
    return f"{path}.{text}" if text.isidentifier() else f"{path}[{json.dumps(text, ensure_ascii=True)}]"


def _text_problem(text: str) -> str | None:
    match = _BAD_CHARS.search(text)
    if match is None:
        return None
    return "contains a NUL character (U+0000)" if match.group() == "\x00" else \
        "contains a lone surrogate (\\ud800-\\udfff: not a character, not valid UTF-8)"


def json_check(value: Any, *, max_depth: int = MAX_DEPTH, strings: bool = True) -> None:
    """Raise JsonInputError for nesting deeper than `max_depth`, and (with `strings`) for a
    NUL or lone surrogate in any key or string."""
    stack = [(value, 0, "$")]
    while stack:
        item, depth, path = stack.pop()
        if isinstance(item, dict):
            if depth >= max_depth:
                raise JsonInputError(f"the JSON is nested more than {max_depth} levels deep", path)
            for key, child in item.items():
                where = _where(path, key)
                if strings and isinstance(key, str) and (problem := _text_problem(key)):
                    raise JsonInputError(f"a key at {where} {problem}", where)
                stack.append((child, depth + 1, where))
        elif isinstance(item, list):
            if depth >= max_depth:
                raise JsonInputError(f"the JSON is nested more than {max_depth} levels deep", path)
            stack.extend((child, depth + 1, _where(path, index)) for index, child in enumerate(item))
        elif strings and isinstance(item, str) and (problem := _text_problem(item)):
            raise JsonInputError(f"{path} {problem}", path)


def json_kind(value: Any) -> str:
    """How JSON calls the value's type, for error messages ("must be a string, not a number")."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float, decimal.Decimal)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def json_compact(value: Any) -> str:
    """Compact JSON (no spaces, keys in their order, non-ASCII as it is) that writes a number
    as the client wrote it: a JsonNumber's text, a Decimal's digits (json.dumps would refuse
    or round them). Raises TypeError for a value JSON cannot hold."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, JsonNumber):
        return str.__str__(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, (int, float)):
        return json.dumps(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(str(k), ensure_ascii=False)}:{json_compact(v)}"
                              for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(json_compact(item) for item in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as JSON")
