"""A config field's type: what values it takes, in words for messages, and text or YAML values as it."""

from __future__ import annotations

import typing
from typing import TYPE_CHECKING, Any

from ada.checks import is_finite

if TYPE_CHECKING:
    from ada.config import Setting


def alternatives(hint: Any) -> tuple[Any, ...]:
    """The types a field takes: (float, NoneType) for `float | None`, (int,) for `int`."""
    return typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, _UnionType) else (hint,)


_UnionType = type(int | None)
_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "text"}


def type_words(hint: Any) -> str:
    """A field type in words, for messages and --help-config: 'a number or null'."""
    words = []
    for alt in alternatives(hint):
        if alt is type(None):
            words.append("null")
        elif typing.get_origin(alt) is list:
            words.append("a list of names")
        else:
            words.append(_TYPE_WORDS[alt])
    return " or ".join(words)


def coerce(setting: Setting, value: Any) -> Any:
    """`value` as the field's type (an integer where a number is expected becomes a float), or ValueError."""
    for alt in alternatives(setting.type):
        if alt is type(None) and value is None:
            return None
        if typing.get_origin(alt) is list and isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
        if alt is float and isinstance(value, int | float) and not isinstance(value, bool):
            if not is_finite(value) and isinstance(value, int):  # float() of it would overflow
                raise ValueError(f"{value} is too large")
            return float(value)
        if alt is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if alt in (bool, str) and isinstance(value, alt):
            return value
    raise ValueError(f"{value!r} is not {type_words(setting.type)}")


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def parse_text(setting: Setting, text: str) -> Any:
    """A command-line value (`--set KEY=TEXT`) as the field's type, or ValueError."""
    kinds = alternatives(setting.type)
    lowered = text.strip().lower()
    if type(None) in kinds and lowered in ("null", "none"):
        return None
    for alt in kinds:
        if typing.get_origin(alt) is list:
            return [] if lowered in ("", "none") else [part.strip() for part in text.split(",") if part.strip()]
        if alt is bool and lowered in _TRUE + _FALSE:
            return lowered in _TRUE
        if alt is int:
            try:
                return int(text)
            except ValueError:
                continue
        if alt is float:
            try:
                return float(text)
            except ValueError:
                continue
        if alt is str:
            return text
    raise ValueError(f"{text!r} is not {type_words(setting.type)}")
