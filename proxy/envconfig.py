"""Settings from the environment: declare a field once, load it, show it masked.

The ground floor under both the proxy's settings (:mod:`proxy.settings`) and the local
engine's (:mod:`proxy.engine.settings`), so both read ``true``, ``1.5`` and paths the same
way and name a bad variable the same way; it imports nothing from the proxy.

- :func:`setting` declares a dataclass field with its variable and a line of help;
- :func:`load` reads every declared field from the environment and overrides, by type;
- :func:`describe` shows a settings object by variable name, secrets masked;
- :func:`check_finite` refuses a nan or infinite float set in code;
- :class:`SettingsError` names the variable (or flag) that is missing or malformed.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import field
from pathlib import Path
from typing import Any


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


def setting(default: Any, env: str, help: str, *, secret: bool = False) -> Any:
    """Declare a field with the environment variable that sets it and a line of help."""
    if isinstance(default, list | dict | set):
        raise TypeError("use a tuple for sequence defaults")
    return field(default=default, metadata={"env": env, "help": help, "secret": secret})


def describe(settings: Any) -> dict[str, Any]:
    """A settings dataclass by variable name, secrets masked: for operators and logs."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if f.metadata.get("secret") and value:
            value = "***"
        out[f.metadata["env"]] = str(value) if isinstance(value, Path) else value
    return out


def load(
    cls: type, environ: Mapping[str, str] | None, overrides: Mapping[str, Any]
) -> dict[str, Any]:
    """Field values for the settings dataclass ``cls`` from the environment and overrides.

    Each field names its variable (``setting(..., env=...)``); an override that is not None
    wins over the environment; a malformed value raises SettingsError naming its source.
    """
    environ = os.environ if environ is None else environ
    fields = dataclasses.fields(cls)
    unknown = set(overrides) - {f.name for f in fields}
    if unknown:
        raise SettingsError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in fields:
        env = f.metadata["env"]
        if overrides.get(f.name) is not None:
            raw: Any = overrides[f.name]
            source = f"--{f.name.replace('_', '-')}"
        elif environ.get(env, "") != "":
            raw = environ[env]
            source = env
        else:
            continue
        try:
            values[f.name] = _coerce(raw, hints[f.name])
        except (TypeError, ValueError) as exc:
            raise SettingsError(f"{source}: {exc}") from None
    return values


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _finite(number: float, given: Any) -> float:
    """``number``, unless it is nan or ±inf: no setting means either, and NaN breaks every
    comparison made with it (a NaN TTL is never "expired" nor "fresh")."""
    if not math.isfinite(number):
        raise ValueError(f"expected a finite number, got {given!r}")
    return number


def check_finite(settings: Any, env_name: typing.Callable[[str], str]) -> None:
    """Refuse a nan or infinite float field (one set in code, past the loader's check)."""
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise SettingsError(f"{env_name(f.name)}: expected a finite number, got {value!r}")


def _coerce(raw: Any, hint: Any) -> Any:
    """Turn an environment string (or a CLI value) into the field's type."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        inner = [a for a in args if a is not type(None)]
        return _coerce(raw, inner[0])
    if not isinstance(raw, str):
        if hint is float and isinstance(raw, int | float) and not isinstance(raw, bool):
            return _finite(float(raw), raw)
        if origin is tuple and isinstance(raw, list | tuple):
            return tuple(raw)
        return raw
    text = raw.strip()
    if hint is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ValueError(f"expected true/false, got {text!r}")
    if hint is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"expected a whole number, got {text!r}") from None
    if hint is float:
        try:
            number = float(text)
        except ValueError:
            raise ValueError(f"expected a number, got {text!r}") from None
        return _finite(number, text)
    if hint is Path:
        return Path(text).expanduser()
    if origin is tuple:
        return tuple(part.strip() for part in text.split(",") if part.strip())
    return text
