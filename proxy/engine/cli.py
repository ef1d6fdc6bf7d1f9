"""``cutproxy engine``: run the local engine standalone under uvicorn.

Every :class:`~proxy.engine.settings.EngineSettings` field gets a ``--flag`` generated from
its declaration, with its environment variable in the help, so ``--help`` cannot miss one.
Flags win over the environment; both travel to worker processes through the environment.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import typing
from pathlib import Path
from typing import Any

import typer
import uvicorn
from starlette.applications import Starlette

from proxy.engine.app import PROCESS_PATH, TOKEN_PATH, create_engine_app
from proxy.engine.faults import Faults, FaultState
from proxy.engine.keys import key_path, load_or_create
from proxy.engine.settings import DEFAULT_PORT, EngineSettings
from proxy.engine.store import Store
from proxy.envconfig import SettingsError
from proxy.malloc import return_large_blocks

GRACEFUL_SHUTDOWN_SECONDS = 5
_RUN_OPTIONS = ("host", "port", "workers")


def register(app: typer.Typer) -> None:
    """Add the ``engine`` command to the ``cutproxy`` CLI."""
    app.command(
        name="engine",
        help="Run the local engine: a BackgroundCut-v3-compatible render server.",
        epilog="Each setting is read from its PROXY_ENGINE_* variable; a flag overrides it.",
    )(_engine_command())


def _engine_command() -> Any:
    def engine(**options: Any) -> None:
        run(
            host=options.pop("host"),
            port=options.pop("port"),
            workers=options.pop("workers"),
            flags=options,
        )

    keyword = inspect.Parameter.KEYWORD_ONLY
    params = [
        inspect.Parameter(
            "host",
            keyword,
            annotation=str,
            default=typer.Option("127.0.0.1", help="Address to bind."),
        ),
        inspect.Parameter(
            "port",
            keyword,
            annotation=int,
            default=typer.Option(DEFAULT_PORT, help="Port to bind."),
        ),
        inspect.Parameter(
            "workers",
            keyword,
            annotation=int,
            default=typer.Option(1, help="Worker processes; they share the data dir."),
        ),
    ]
    hints = typing.get_type_hints(EngineSettings)
    for f in dataclasses.fields(EngineSettings):
        default = "unset" if f.default is None else f.default
        # Parentheses, not brackets: typer's rich help would eat "[...]" as markup.
        text = f"{f.metadata['help']} (env {f.metadata['env']}; default {default})"
        params.append(
            inspect.Parameter(
                f.name,
                keyword,
                annotation=_optional(hints[f.name]),
                default=typer.Option(None, help=text, show_default=False),
            )
        )
    engine.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    return engine


def _optional(hint: Any) -> Any:
    """The field's type, as an option that may be left out (None: not given)."""
    inner = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    return inner[0] | None


def run(*, host: str, port: int, workers: int, flags: dict[str, Any]) -> None:
    """Validate the settings, prepare the data dir and serve."""
    if workers < 1:
        _fail("--workers must be at least 1")
    given = {name: value for name, value in flags.items() if value is not None}
    try:
        settings = EngineSettings.from_env(os.environ, **given)
        if settings.public_url is None:
            shown = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
            shown = f"[{shown}]" if ":" in shown else shown
            settings = settings.replace(public_url=f"http://{shown}:{port}")
    except SettingsError as exc:
        _fail(f"invalid setting: {exc}")
        raise  # unreachable: _fail exits
    _export(settings, set(given) | {"public_url"})

    # The parent resets the shared fault state once; workers then keep what they find.
    store = Store(settings.data_dir, retention=settings.retention)
    Faults(store).reset(FaultState.from_settings(settings))
    store.close()

    base = settings.base_url
    typer.echo(f"engine on http://{host}:{port} (data: {settings.data_dir})")
    typer.echo(f"  token URL:   {base}{TOKEN_PATH}")
    typer.echo(f"  process URL: {base}{PROCESS_PATH}")
    if settings.api_key is None:
        # Made here, once, before any worker needs it; the key itself is never printed.
        try:
            load_or_create(settings.data_dir)
        except (OSError, SettingsError) as exc:
            _fail(f"cannot keep the API key in {settings.data_dir}: {exc}")
        where = key_path(settings.data_dir).resolve()
        typer.echo(f"  API key: in {where} (or set PROXY_ENGINE_API_KEY)")
    common: dict[str, Any] = {
        "host": host,
        "port": port,
        "access_log": False,
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_SECONDS,
    }
    if workers == 1:
        return_large_blocks()  # a render's buffers go back to the system once freed
        uvicorn.run(create_engine_app(settings, reset_faults=False), **common)
    else:
        uvicorn.run(
            "proxy.engine.cli:app_from_environment", factory=True, workers=workers, **common
        )


def app_from_environment() -> Starlette:
    """uvicorn's factory in each worker process: settings from the environment ``run`` set."""
    return_large_blocks()
    return create_engine_app(EngineSettings.from_env(os.environ), reset_faults=False)


def _export(settings: EngineSettings, names: set[str]) -> None:
    """Put the settings given as flags into the environment worker processes inherit."""
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if f.name not in names or value is None:
            continue
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, Path):
            text = str(value.resolve())
        else:
            text = str(value)
        os.environ[f.metadata["env"]] = text


def _fail(message: str) -> None:
    typer.echo(f"cutproxy engine: {message}", err=True)
    raise typer.Exit(2)
