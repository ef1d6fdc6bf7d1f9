"""The local engine's settings: frozen, built from ``PROXY_ENGINE_*`` variables and CLI flags.

Each field is declared once with its variable and a line of help (``proxy.envconfig.setting``);
``cutproxy engine --help`` and docs/engine.md are generated from the same declarations.
Defaults are the real service's where it publishes one; where it does not, the help says so.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

# The proxy's settings use the same loader, so both read "true", "1.5" and paths the same
# way and name a bad variable the same way.
from proxy.envconfig import SettingsError, check_finite, describe, load, setting
from proxy.upstream.contract import MAX_UPLOAD_MB, RETENTION_SECONDS

DEFAULT_PORT = 9000
ERROR_STYLES = ("error", "detail", "errors", "text")
FAULT_MODES = ("ok", "down", "hang")


@dataclass(frozen=True)
class EngineSettings:
    # --- access -----------------------------------------------------------------------------
    api_key: str | None = setting(
        None,
        "PROXY_ENGINE_API_KEY",
        "The one API key accepted as Bearer on the token and faults endpoints. Unset: a random "
        "key is made once and kept in <data dir>/api-key (mode 0600).",
        secret=True,
    )
    public_url: str | None = setting(
        None,
        "PROXY_ENGINE_PUBLIC_URL",
        "Base of the output URLs handed out (default: http://HOST:PORT of the engine).",
    )
    data_dir: Path = setting(
        Path("engine-data"),
        "PROXY_ENGINE_DATA_DIR",
        "Uploads, outputs and shared state (tokens, balance, counters) for all workers.",
    )
    secret: str | None = setting(
        None,
        "PROXY_ENGINE_SECRET",
        "Token-signing secret. Unset: one is generated once and kept in the data dir.",
        secret=True,
    )
    # --- the contract -------------------------------------------------------------------------
    retention: float = setting(
        float(RETENTION_SECONDS),
        "PROXY_ENGINE_RETENTION",
        "Seconds uploads and outputs live (BackgroundCut: 2 hours).",
    )
    token_ttl: float = setting(
        600.0,
        "PROXY_ENGINE_TOKEN_TTL",
        "Seconds a minted token stays valid (BackgroundCut publishes none; 600 is a guess).",
    )
    single_use: bool = setting(
        True, "PROXY_ENGINE_SINGLE_USE", "A token is spent by its first processing call."
    )
    starting_balance: float | None = setting(
        None,
        "PROXY_ENGINE_STARTING_BALANCE",
        "Credits available; mints answer 402 once spent. Unset: unlimited. Changing it resets "
        "the balance kept in the data dir.",
    )
    rate_limit_per_minute: int | None = setting(
        None,
        "PROXY_ENGINE_RATE_LIMIT_PER_MINUTE",
        "API calls (mint + process) allowed per moving minute, all workers together; over it "
        "answers 429 with Retry-After. Unset: no limit.",
    )
    max_upload_mb: float = setting(
        float(MAX_UPLOAD_MB), "PROXY_ENGINE_MAX_UPLOAD_MB", "Largest upload in MiB (413 above it)."
    )
    max_input_pixels: int = setting(
        80_000_000,
        "PROXY_ENGINE_MAX_INPUT_PIXELS",
        "Largest decoded input (width*height); more is refused as a decompression bomb (400).",
    )
    max_variants: int = setting(
        50,
        "PROXY_ENGINE_MAX_VARIANTS",
        "Most output_variants in one token (BackgroundCut publishes no limit).",
    )
    error_style: str = setting(
        "error",
        "PROXY_ENGINE_ERROR_STYLE",
        'Error body shape: error ({"error": msg}), detail ({"detail": msg}), errors '
        '({"errors": [{"title", "code"}]}) or text (plain).',
    )
    render_threads: int = setting(
        0,
        "PROXY_ENGINE_RENDER_THREADS",
        "Renders run at once per worker; others queue (0: one per CPU).",
    )
    # --- fault injection (off by default; PUT /_engine/faults changes them at run time) ---------
    token_latency: float = setting(
        0.0, "PROXY_ENGINE_TOKEN_LATENCY", "Seconds added to every mint."
    )
    process_latency: float = setting(
        0.0, "PROXY_ENGINE_PROCESS_LATENCY", "Seconds added to every processing call."
    )
    error_rate: float = setting(
        0.0,
        "PROXY_ENGINE_ERROR_RATE",
        "Share (0..1) of mint and processing calls that fail with PROXY_ENGINE_ERROR_STATUS.",
    )
    error_status: int = setting(
        503, "PROXY_ENGINE_ERROR_STATUS", "Status of injected failures (500..599)."
    )
    mode: str = setting(
        "ok",
        "PROXY_ENGINE_MODE",
        "ok; down (API and file calls drop the connection without an answer); hang (they "
        "never answer).",
    )

    # ------------------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        """Where output URLs point: the public URL without its trailing slash."""
        return (self.public_url or f"http://127.0.0.1:{DEFAULT_PORT}").rstrip("/")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> EngineSettings:
        """Build from ``PROXY_ENGINE_*`` variables; ``overrides`` (flags, tests) win."""
        values = load(cls, environ, overrides)
        settings = cls(**values)
        settings.validate()
        return settings

    def replace(self, **changes: Any) -> EngineSettings:
        new = dataclasses.replace(self, **changes)
        new.validate()
        return new

    def validate(self) -> None:
        def bad(name: str, why: str) -> SettingsError:
            return SettingsError(f"{env_name(name)}: {why}")

        check_finite(self, env_name)
        if self.api_key is not None and not self.api_key.strip():
            raise bad("api_key", "must not be blank")
        if self.public_url is not None:
            parts = urlsplit(self.public_url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise bad("public_url", "must be an absolute http(s) URL")
        if self.secret is not None and len(self.secret) < 16:
            raise bad("secret", "must be at least 16 characters")
        for name in ("retention", "token_ttl", "max_upload_mb"):
            if getattr(self, name) <= 0:
                raise bad(name, "must be greater than 0")
        for name in ("token_latency", "process_latency", "render_threads"):
            if getattr(self, name) < 0:
                raise bad(name, "must not be negative")
        for name in ("max_input_pixels", "max_variants"):
            if getattr(self, name) < 1:
                raise bad(name, "must be at least 1")
        if self.starting_balance is not None and self.starting_balance < 0:
            raise bad("starting_balance", "must not be negative")
        if self.rate_limit_per_minute is not None and self.rate_limit_per_minute < 1:
            raise bad("rate_limit_per_minute", "must be at least 1")
        if not 0.0 <= self.error_rate <= 1.0:
            raise bad("error_rate", "must be between 0 and 1")
        if not 500 <= self.error_status <= 599:
            raise bad("error_status", "must be between 500 and 599")
        if self.error_style not in ERROR_STYLES:
            raise bad("error_style", f"must be one of {', '.join(ERROR_STYLES)}")
        if self.mode not in FAULT_MODES:
            raise bad("mode", f"must be one of {', '.join(FAULT_MODES)}")

    def describe(self) -> dict[str, Any]:
        """Settings as shown to operators: secrets are masked."""
        return describe(self)


def env_name(name: str) -> str:
    """The environment variable of the field ``name``."""
    for f in dataclasses.fields(EngineSettings):
        if f.name == name:
            return str(f.metadata["env"])
    return name


def settings_table() -> list[tuple[str, str, str, str]]:
    """(field, variable, default, help) for every setting: ``--help`` and docs/engine.md."""
    rows = []
    for f in dataclasses.fields(EngineSettings):
        default = "(unset)" if f.default is None else str(f.default)
        rows.append((f.name, f.metadata["env"], default, f.metadata["help"]))
    return rows


def settings_markdown() -> str:
    """The settings as a Markdown table, for docs/engine.md."""
    lines = ["| Variable | Flag | Default | Meaning |", "|---|---|---|---|"]
    for name, env, default, text in settings_table():
        flag = "--" + name.replace("_", "-")
        lines.append(f"| `{env}` | `{flag}` | `{default}` | {text.replace('|', '/')} |")
    return "\n".join(lines)
