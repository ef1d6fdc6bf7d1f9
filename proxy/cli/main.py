"""The ``cutproxy`` command: ``serve`` the proxy, run the ``engine``, and admin tools."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import logging.config
import math
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
import uvicorn
from starlette.applications import Starlette

from proxy.ops.logs import logging_config
from proxy.ops.metrics import MULTIPROC_ENV, multiprocess_dir, reset_multiprocess_dir
from proxy.serving.headlimit import protocol as head_limited_protocol
from proxy.settings import Settings, SettingsError, settings_table
from proxy.stores.objects_config import ObjectStoreConfig

log = logging.getLogger("cutproxy")

app = typer.Typer(
    name="cutproxy",
    help="On-demand image proxy for background-removed product images.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _settings_epilog() -> str:
    lines = ["Settings come from the environment (flags above win):\n\n"]
    lines += [f"{env} (default {default}): {text}\n\n" for env, default, text in settings_table()]
    return "".join(lines)


@app.command(epilog=_settings_epilog())
def serve(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind.")] = 8080,
    workers: Annotated[int, typer.Option(help="Worker processes (share the data dir).")] = 1,
    data_dir: Annotated[
        Path | None, typer.Option(help="PROXY_DATA_DIR: disk cache, registry, originals.")
    ] = None,
    public_url: Annotated[
        str | None,
        typer.Option(help="PROXY_PUBLIC_URL (default: http://HOST:PORT)."),
    ] = None,
    demo: Annotated[
        bool | None, typer.Option("--demo/--no-demo", help="PROXY_DEMO: register a demo image.")
    ] = None,
    log_level: Annotated[str | None, typer.Option(help="PROXY_LOG_LEVEL.")] = None,
) -> None:
    """Run the proxy (with the embedded local engine when PROXY_API_KEY is unset)."""
    flags = {
        "PROXY_DATA_DIR": str(data_dir) if data_dir else None,
        "PROXY_PUBLIC_URL": public_url,
        "PROXY_DEMO": None if demo is None else str(demo).lower(),
        "PROXY_LOG_LEVEL": log_level,
    }
    # Flags travel to the worker processes through their environment.
    for name, value in flags.items():
        if value is not None:
            os.environ[name] = value
    if not os.environ.get("PROXY_PUBLIC_URL"):
        shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        os.environ["PROXY_PUBLIC_URL"] = f"http://{shown}:{port}"
    settings = _load_settings()
    if workers < 1:
        _fail("--workers must be at least 1")
    log_config = logging_config(settings.log_level)
    logging.config.dictConfig(log_config)
    mode = "the embedded local engine" if settings.embedded_engine else "BackgroundCut"
    typer.echo(f"cutproxy on http://{host}:{port} (upstream: {mode}, data: {settings.data_dir})")
    if settings.embedded_engine and not is_loopback(host):
        log.warning(
            "the embedded local engine (a stand-in for BackgroundCut, for development) is "
            "served on %s, not a loopback address: its output files and /_engine/stats are "
            "public there; set PROXY_API_KEY to use the real upstream",
            host,
        )
    with _metrics_dir(workers):
        # uvicorn stops accepting on SIGTERM, lets in-flight requests finish, runs the
        # lifespan's shutdown, then raises the signal again: this handler makes that exit 0.
        signal.signal(signal.SIGTERM, _exit_cleanly)
        uvicorn.run(
            "proxy.cli.main:app_from_environment",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level=settings.log_level.lower(),
            log_config=log_config,
            access_log=False,
            # The proxy alone decides whose X-Forwarded-For to believe (PROXY_TRUSTED_PROXIES);
            # uvicorn's default would trust it from 127.0.0.1 and rewrite the client address.
            proxy_headers=False,
            http=head_limited_protocol(settings.max_header_bytes),  # 431 past the bound
            timeout_graceful_shutdown=math.ceil(settings.shutdown_timeout),
        )


def is_loopback(host: str) -> bool:
    """Whether ``--host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name, or "" (every address): reachable from elsewhere
        return False


@contextlib.contextmanager
def _metrics_dir(workers: int) -> Iterator[None]:
    """Several workers count metrics in files (prometheus_client's multiprocess mode).

    An operator's PROMETHEUS_MULTIPROC_DIR is used (emptied first: counts from an earlier run
    must not be added in); otherwise each run gets a temporary one, removed at exit.
    """
    given = multiprocess_dir()
    if given is not None:
        reset_multiprocess_dir(given)
        yield
        return
    if workers == 1:
        yield
        return
    root = Path(tempfile.gettempdir())
    sweep_metrics_dirs(root)
    path = Path(tempfile.mkdtemp(prefix=f"{METRICS_DIR_PREFIX}{os.getpid()}-", dir=root))
    os.environ[MULTIPROC_ENV] = str(path)
    try:
        yield
    finally:
        shutil.rmtree(path, ignore_errors=True)


METRICS_DIR_PREFIX = "cutproxy-metrics-"


def sweep_metrics_dirs(root: Path) -> list[Path]:
    """Remove the metrics directories of earlier runs whose process is gone (a SIGKILL).

    A directory is named after the ``serve`` that made it; one whose process this one can
    see is left alone (so is another user's: it cannot be removed anyway).
    """
    removed = []
    for path in root.glob(f"{METRICS_DIR_PREFIX}*-*"):
        pid = path.name.removeprefix(METRICS_DIR_PREFIX).split("-", 1)[0]
        if path.is_dir() and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            if not path.exists():
                removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


@app.command("settings")
def show_settings(
    markdown: Annotated[
        bool, typer.Option(help="Print docs/settings.md's table (defaults, not values).")
    ] = False,
) -> None:
    """Show every setting: its variable, current value (secrets masked) and meaning."""
    if markdown:
        typer.echo(settings_markdown())
        return
    current = _load_settings().describe()
    for env, _default, text in settings_table():
        typer.echo(f"{env}={current[env]}\n    {text}")


def settings_markdown() -> str:
    """The settings table as it stands in docs/settings.md (a test keeps the two equal)."""
    rows = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for env, default, text in settings_table():
        rows.append(f"| `{env}` | `{default}` | {text.replace('|', '/')} |")
    return "\n".join(rows)


def app_from_environment() -> Starlette:
    """uvicorn's factory in every worker: settings from the environment the CLI prepared."""
    from proxy.app import create_app
    from proxy.embedded import embedded_engine_settings
    from proxy.malloc import return_large_blocks

    return_large_blocks()  # decoded uploads go back to the system once checked

    settings = _load_settings()
    engine_settings = None
    if settings.embedded_engine:
        engine_settings = embedded_engine_settings(settings, os.environ)
    return create_app(settings, engine_settings=engine_settings, metrics_dir=multiprocess_dir())


def _load_settings() -> Settings:
    from proxy.url.presets import from_settings as load_presets

    try:
        settings = Settings.from_env(os.environ)
        load_presets(settings)  # PROXY_PRESETS_FILE: checked at start, like every setting
        ObjectStoreConfig.from_settings(settings)  # PROXY_STORE_*: parsed (checked) here
        return settings
    except SettingsError as exc:
        _fail(f"invalid setting: {exc}")
        raise  # unreachable: _fail exits


def _fail(message: str) -> None:
    typer.echo(f"cutproxy: {message}", err=True)
    raise typer.Exit(2)


def _register_plugins() -> None:
    from proxy.cli import images as images_cli
    from proxy.cli import presets as presets_cli
    from proxy.cli import sign as guards_cli
    from proxy.cli import srcset as srcset_cli
    from proxy.cli import store as store_cli
    from proxy.embedded import register_cli as register_engine_cli

    register_engine_cli(app)
    images_cli.register(app)
    guards_cli.register(app)
    srcset_cli.register(app)
    presets_cli.register(app)
    store_cli.register(app)


def main() -> None:
    _register_plugins()
    app(prog_name="cutproxy")


if __name__ == "__main__":  # pragma: no cover
    main()
    sys.exit(0)
