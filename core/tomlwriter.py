"""A small TOML emitter for the recipes prunectl writes (the standard library only reads TOML).

It covers what recipes hold: strings, booleans, integers, floats, lists of
those, tables, and arrays of tables, nested in any order. The output reads back
with :mod:`tomllib` to the same document.
"""

from __future__ import annotations

import math
import re

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _string(text: str) -> str:
    out = []
    for char in text:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _string(key)


def _value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    raise TypeError(f"cannot write a {type(value).__name__} as a TOML value. Received: {value!r}")


def _is_table_array(value) -> bool:
    return isinstance(value, (list, tuple)) and bool(value) and all(isinstance(item, dict) for item in value)


def _emit(table: dict, path: list[str], lines: list[str]) -> None:
    nested = {k: v for k, v in table.items() if isinstance(v, dict) or _is_table_array(v)}
    for key, value in table.items():
        if key not in nested:
            lines.append(f"{_key(key)} = {_value(value)}")
    for key, value in nested.items():
        header = ".".join(_key(part) for part in (*path, key))
        if isinstance(value, dict):
            # A table holding only sub-tables needs no header of its own: they define it.
            if not value or len(value) > sum(isinstance(v, dict) or _is_table_array(v) for v in value.values()):
                lines += ["", f"[{header}]"]
            _emit(value, [*path, key], lines)
        else:
            for item in value:
                lines += ["", f"[[{header}]]"]
                _emit(item, [*path, key], lines)


def dumps(document: dict, comments: tuple[str, ...] = ()) -> str:
    """Write ``document`` as TOML, after ``comments`` as ``#`` lines.

    Args:
        document: a dict of TOML values, tables (dicts) and arrays of tables (lists of dicts).
        comments: lines written first, each as a comment.

    Returns:
        The TOML text, ending with a newline.

    Raises:
        TypeError: a value TOML cannot hold (None, an object).

    Example:
        >>> print(dumps({"step": [{"sparsity": 0.0, "layers": {"^fc1$": {"sparsity": 0.9}}}]}), end="")
        [[step]]
        sparsity = 0.0
        <BLANKLINE>
        [step.layers."^fc1$"]
        sparsity = 0.9
    """
    lines = [f"# {line}".rstrip() for comment in comments for line in comment.splitlines()]
    body: list[str] = []
    _emit(document, [], body)
    while body and body[0] == "":
        body.pop(0)
    return "\n".join(lines + ([""] if lines and body else []) + body) + "\n"
