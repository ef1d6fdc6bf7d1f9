"""The proxy's one settings object: frozen, built from the environment and CLI flags.

Every field is declared once with its environment variable and a line of help; the README's
settings table and the CLI's ``--help`` are generated from the same declarations, so they
cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

DEFAULT_TOKEN_URL = "https://backgroundcut.co/api/v3/remove-bg/token/"
DEFAULT_PROCESS_URL = "https://api.backgroundcut.co/v3/remove-bg/"
UPSTREAM_RETENTION_SECONDS = 2 * 60 * 60
MAX_PIXELS = 12_000_000


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


def setting(default: Any, env: str, help: str, *, secret: bool = False) -> Any:
    """Declare a field with the environment variable that sets it and a line of help."""
    if isinstance(default, list | dict | set):
        raise TypeError("use a tuple for sequence defaults")
    return field(default=default, metadata={"env": env, "help": help, "secret": secret})


@dataclass(frozen=True)
class Settings:
    # --- upstream -------------------------------------------------------------------------
    api_key: str | None = setting(
        None,
        "PROXY_API_KEY",
        "BackgroundCut API key. Unset: the embedded local engine is the upstream.",
        secret=True,
    )
    token_url: str = setting(DEFAULT_TOKEN_URL, "PROXY_TOKEN_URL", "Upstream token (mint) URL.")
    process_url: str = setting(
        DEFAULT_PROCESS_URL, "PROXY_PROCESS_URL", "Upstream processing URL."
    )
    token_timeout: float = setting(60.0, "PROXY_TOKEN_TIMEOUT", "Seconds allowed for a mint.")
    process_timeout: float = setting(
        300.0, "PROXY_PROCESS_TIMEOUT", "Seconds allowed for a processing call."
    )
    retry_attempts: int = setting(
        3, "PROXY_RETRY_ATTEMPTS", "Upstream attempts on 429/5xx/connection errors (1 = none)."
    )
    retry_backoff: float = setting(
        0.25, "PROXY_RETRY_BACKOFF", "First retry delay in seconds; doubles each attempt."
    )
    retry_deadline: float = setting(
        30.0,
        "PROXY_RETRY_DEADLINE",
        "Seconds after which no further retry is started for one upstream call.",
    )
    allowed_output_hosts: tuple[str, ...] = setting(
        (),
        "PROXY_ALLOWED_OUTPUT_HOSTS",
        "Comma-separated hosts output URLs may point to (default: the upstream's own hosts, "
        "or this proxy's public host for the embedded engine; `*.example.com` allowed).",
    )
    # --- variants -------------------------------------------------------------------------
    quality: str = setting("medium", "PROXY_QUALITY", "Cut-out quality: low, medium or high.")
    output_compression: int = setting(
        85, "PROXY_OUTPUT_COMPRESSION", "Encoder compression/quality 1..100."
    )
    autocrop: bool = setting(False, "PROXY_AUTOCROP", "Crop tight to the subject (+0.5 credit).")
    max_width: int = setting(4000, "PROXY_MAX_WIDTH", "Largest width a URL may ask for.")
    max_height: int = setting(4000, "PROXY_MAX_HEIGHT", "Largest height a URL may ask for.")
    # --- cache ----------------------------------------------------------------------------
    data_dir: Path = setting(
        Path("data"), "PROXY_DATA_DIR", "Where the disk cache, registry and originals live."
    )
    memory_cache_size: int = setting(
        10_000, "PROXY_MEMORY_CACHE_SIZE", "Entries in the in-process cache tier."
    )
    disk_cache_size_mb: int = setting(
        256, "PROXY_DISK_CACHE_SIZE_MB", "Size limit of the disk cache tier in MiB."
    )
    output_ttl: float = setting(
        float(UPSTREAM_RETENTION_SECONDS),
        "PROXY_OUTPUT_TTL",
        "Seconds an upstream output URL lives (upstream retention: 2 h).",
    )
    ttl_margin: float = setting(
        300.0,
        "PROXY_TTL_MARGIN",
        "Seconds subtracted from every output URL's life before it is served or cached.",
    )
    error_max_age: int = setting(
        60, "PROXY_ERROR_MAX_AGE", "Cache-Control max-age for 4xx answers (seconds)."
    )
    # --- coalescing -----------------------------------------------------------------------
    lease_ttl: float = setting(
        120.0,
        "PROXY_LEASE_TTL",
        "Seconds a mint lease is held before another worker may take over.",
    )
    coalesce_wait: float = setting(
        60.0,
        "PROXY_COALESCE_WAIT",
        "Seconds a request waits for another worker's mint before answering 503.",
    )
    # --- serving --------------------------------------------------------------------------
    public_url: str = setting(
        "http://127.0.0.1:8080",
        "PROXY_PUBLIC_URL",
        "Base URL clients reach this proxy at (used for the embedded engine's output URLs).",
    )
    admin_token: str | None = setting(
        None,
        "PROXY_ADMIN_TOKEN",
        "Bearer token for the admin API. Unset: the admin API is off.",
        secret=True,
    )
    demo: bool = setting(False, "PROXY_DEMO", "Register a generated demo image as `demo`.")
    log_level: str = setting("info", "PROXY_LOG_LEVEL", "debug, info, warning or error.")

    # ----------------------------------------------------------------------------------------
    @property
    def embedded_engine(self) -> bool:
        """With no API key the local engine, mounted under /_engine, is the upstream."""
        return not self.api_key

    @property
    def output_hosts(self) -> tuple[str, ...]:
        if self.allowed_output_hosts:
            return self.allowed_output_hosts
        if self.embedded_engine:
            return (_host(self.public_url),)
        return tuple(dict.fromkeys((_host(self.token_url), _host(self.process_url))))

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: Any
    ) -> Settings:
        """Build from ``PROXY_*`` variables; ``overrides`` (CLI flags, tests) win over them."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            env = f.metadata["env"]
            if f.name in overrides and overrides[f.name] is not None:
                raw: Any = overrides[f.name]
                source = f"--{f.name.replace('_', '-')}"
            elif env in environ and environ[env] != "":
                raw = environ[env]
                source = env
            else:
                continue
            try:
                values[f.name] = _coerce(raw, hints[f.name])
            except (TypeError, ValueError) as exc:
                raise SettingsError(f"{source}: {exc}") from None
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise SettingsError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        settings = cls(**values)
        settings.validate()
        return settings

    def replace(self, **changes: Any) -> Settings:
        new = dataclasses.replace(self, **changes)
        new.validate()
        return new

    def validate(self) -> None:
        def bad(name: str, why: str) -> SettingsError:
            return SettingsError(f"{_env(name)}: {why}")

        for name in ("token_url", "process_url", "public_url"):
            parts = urlsplit(getattr(self, name))
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise bad(name, "must be an absolute http(s) URL")
        for name in (
            "token_timeout",
            "process_timeout",
            "output_ttl",
            "lease_ttl",
            "coalesce_wait",
            "retry_deadline",
        ):
            if getattr(self, name) <= 0:
                raise bad(name, "must be greater than 0")
        for name in ("ttl_margin", "retry_backoff", "error_max_age"):
            if getattr(self, name) < 0:
                raise bad(name, "must not be negative")
        if self.ttl_margin >= self.output_ttl:
            raise bad("ttl_margin", "must be smaller than PROXY_OUTPUT_TTL")
        if self.retry_attempts < 1:
            raise bad("retry_attempts", "must be at least 1")
        if self.quality not in ("low", "medium", "high"):
            raise bad("quality", "must be low, medium or high")
        if not 1 <= self.output_compression <= 100:
            raise bad("output_compression", "must be between 1 and 100")
        for name in ("max_width", "max_height", "memory_cache_size", "disk_cache_size_mb"):
            if getattr(self, name) < 1:
                raise bad(name, "must be at least 1")
        if self.log_level.lower() not in ("debug", "info", "warning", "error"):
            raise bad("log_level", "must be debug, info, warning or error")
        if self.api_key is not None and not self.api_key.strip():
            raise bad("api_key", "must not be blank")
        if self.admin_token is not None and len(self.admin_token) < 16:
            raise bad("admin_token", "must be at least 16 characters")

    def describe(self) -> dict[str, Any]:
        """Settings as shown to operators: secrets are masked."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("secret") and value:
                value = "***"
            out[f.metadata["env"]] = str(value) if isinstance(value, Path) else value
        return out


def settings_table() -> list[tuple[str, str, str]]:
    """(variable, default, help) for every setting: the README table and ``--help``."""
    rows = []
    for f in dataclasses.fields(Settings):
        default = f.default
        if isinstance(default, tuple):
            shown = ",".join(default) or "(empty)"
        elif default is None:
            shown = "(unset)"
        else:
            shown = str(default)
        rows.append((f.metadata["env"], shown, f.metadata["help"]))
    return rows


def _env(name: str) -> str:
    for f in dataclasses.fields(Settings):
        if f.name == name:
            return str(f.metadata["env"])
    return name


def _host(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _coerce(raw: Any, hint: Any) -> Any:
    """Turn an environment string (or a CLI value) into the field's type."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        inner = [a for a in args if a is not type(None)]
        return _coerce(raw, inner[0])
    if not isinstance(raw, str):
        if hint is float and isinstance(raw, int):
            return float(raw)
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
            return float(text)
        except ValueError:
            raise ValueError(f"expected a number, got {text!r}") from None
    if hint is Path:
        return Path(text).expanduser()
    if origin is tuple:
        return tuple(part.strip() for part in text.split(",") if part.strip())
    return text


def parse_networks(items: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """Parse CIDR ranges (used by settings that name trusted proxies)."""
    return tuple(ipaddress.ip_network(item, strict=False) for item in items)
