"""Command-line profile overrides: ``--set key=value`` items for :func:`recrepro.config.load_profile`.

A value is read as YAML (``true``, ``null``, ``[1, 5]``), with two corrections: ``2e-4``, a string to
YAML 1.1, is the float it means; and for a key typed ``str`` a date or number keeps the text as
written (``data.window_start=2020-01-01`` is the string "2020-01-01", ``run.name=007`` is "007").
Mistakes are :class:`~recrepro.config.ConfigError`; :func:`load_cli_profile` turns one into an
``error: ...`` line and exit status 2, as ``python -m recrepro`` does.
"""

from __future__ import annotations

import dataclasses
import datetime
import sys
import types
import typing
from pathlib import Path
from typing import Any, Sequence

import yaml

from recrepro.config import ConfigError, Profile, load_profile


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``key=value`` command-line items as profile overrides; an item without ``=`` is a ConfigError."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r}: expected key=value, e.g. data.max_users=50")
        out[key.strip()] = _override_value(key.strip(), text)
    return out


def _override_value(key: str, text: str) -> Any:
    """The value of ``key=text`` (see the module docstring)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{key}': {text!r} is not a YAML value ({exc})") from None
    is_text = _takes_text(key)
    if is_text and isinstance(value, (datetime.date, int, float)) and not isinstance(value, bool):
        return text.strip()  # YAML made a date or number of what the key reads as text
    if not is_text and isinstance(value, str) and any(c.isdigit() for c in value):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _takes_text(dotted: str) -> bool:
    """Whether the profile key ``dotted`` is typed ``str`` or ``str | None`` (False for unknown keys,
    which :func:`~recrepro.config.load_profile` reports with the closest valid key)."""
    tp: Any = Profile
    for part in dotted.split("."):
        hints = typing.get_type_hints(tp) if dataclasses.is_dataclass(tp) else {}
        if part not in hints or part == "source_path":
            return False
        tp = hints[part]
    optional_str = typing.get_origin(tp) in (typing.Union, types.UnionType) and str in typing.get_args(tp)
    return tp is str or optional_str


def load_cli_profile(name_or_path: str | Path, items: Sequence[str]) -> Profile:
    """:func:`~recrepro.config.load_profile` with ``--set`` items, for a command line: a ConfigError (an
    item without ``=``, an unknown key, a bad value) prints ``error: ...`` and exits with status 2."""
    try:
        return load_profile(name_or_path, parse_overrides(items))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
