"""The local engine inside the proxy: the one module of the proxy that imports ``proxy.engine``.

With no ``PROXY_API_KEY`` the proxy's upstream is the local engine, run in the same process
and reached through an in-process transport; its output files, stats and health are mounted
under ``/_engine`` on the proxy's port. The app factory (:mod:`proxy.app`) and the command
line (:mod:`proxy.cli.main`, which also gains the standalone ``cutproxy engine`` command)
come through here, so the engine stays a separate program the rest of the proxy never
reaches into (``make lint`` checks it: see ``[tool.importlinter]`` in pyproject.toml).
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

import httpx
import typer
from starlette.applications import Starlette
from starlette.routing import Mount

from proxy.engine import cli as engine_cli
from proxy.engine.app import PROCESS_PATH, TOKEN_PATH, create_engine_app, public_engine_app
from proxy.engine.keys import with_api_key
from proxy.engine.settings import EngineSettings
from proxy.settings import Settings
from proxy.upstream.client import UpstreamConfig

__all__ = ["EngineSettings", "LocalEngine", "embedded_engine_settings", "register_cli"]

#: The base URL the proxy calls the embedded engine at; it never leaves the process.
EMBEDDED_BASE = "http://local-engine"


@dataclass(frozen=True)
class LocalEngine:
    """The local engine embedded in this process: its ASGI app and its settings."""

    app: Starlette
    settings: EngineSettings

    @classmethod
    def start(
        cls, settings: Settings, engine_settings: EngineSettings | None = None
    ) -> LocalEngine:
        """The engine for ``settings`` (or as ``engine_settings`` say), with its API key.

        The key is the configured one, else the engine data dir's own; it never leaves this
        process.
        """
        engine_settings = with_api_key(engine_settings or embedded_engine_settings(settings))
        return cls(create_engine_app(engine_settings), engine_settings)

    @property
    def health_url(self) -> str:
        return f"{EMBEDDED_BASE}/_engine/health"

    def upstream_config(self, settings: Settings) -> UpstreamConfig:
        """The upstream client's configuration: the engine's endpoints and its API key."""
        return UpstreamConfig.from_settings(
            settings,
            api_key=self.settings.api_key,
            token_url=EMBEDDED_BASE + TOKEN_PATH,
            process_url=EMBEDDED_BASE + PROCESS_PATH,
        )

    def transport(self) -> httpx.AsyncBaseTransport:
        """Calls to the engine, answered in this process."""
        return httpx.ASGITransport(app=self.app)

    def output_transport(self) -> httpx.AsyncBaseTransport:
        """Downloads of the engine's output URLs (``<PROXY_PUBLIC_URL>/_engine/files/...``),
        answered in this process: store mode fetches its masters through it."""
        files = Starlette(routes=[Mount("/_engine", app=self.public_app(faults_key=None))])
        return httpx.ASGITransport(app=files)

    def public_app(self, *, faults_key: str | None) -> Starlette:
        """What the proxy mounts under ``/_engine``: output files, stats, health (and fault
        control for ``faults_key``, the admin token)."""
        return public_engine_app(self.app, faults_key=faults_key)

    def lifespan(self) -> AbstractAsyncContextManager[Any]:
        """The engine's start-up and shutdown, entered by the proxy's own lifespan."""
        return self.app.router.lifespan_context(self.app)


def embedded_engine_settings(
    settings: Settings, environ: Mapping[str, str] | None = None
) -> EngineSettings:
    """The engine's settings when the proxy embeds it.

    Its output URLs point under the proxy's ``/_engine``, and its data lives in
    ``<PROXY_DATA_DIR>/engine`` unless ``PROXY_ENGINE_DATA_DIR`` (in ``environ``) says where;
    its other ``PROXY_ENGINE_*`` variables are read from ``environ`` (none by default).
    """
    environ = {} if environ is None else environ
    return EngineSettings.from_env(
        environ,
        public_url=settings.public_url.rstrip("/") + "/_engine",
        data_dir=environ.get("PROXY_ENGINE_DATA_DIR") or settings.data_dir / "engine",
    )


def register_cli(app: typer.Typer) -> None:
    """Add the standalone ``cutproxy engine`` command."""
    engine_cli.register(app)
