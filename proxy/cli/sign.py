"""``cutproxy sign``: sign a URL with the keys the proxy verifies with.

The main CLI calls :func:`register` to add the command to its Typer app.
"""

from __future__ import annotations

import time
from typing import Annotated, NoReturn

import typer

from proxy.settings import Settings
from proxy.url.signing import Signer


def register(app: typer.Typer) -> None:
    """Add ``sign URL [--ttl SECONDS]`` to ``app``."""
    app.command("sign")(sign)


def sign(
    url: Annotated[str, typer.Argument(help="A URL or a path like /img/shoe/640x480/ffffff.jpg.")],
    ttl: Annotated[
        float | None,
        typer.Option(help="Seconds the signed URL stays valid (default: forever).", min=1),
    ] = None,
) -> None:
    """Print URL signed with PROXY_SIGNING_KEY / PROXY_SIGNING_SALT (the first pair)."""
    try:
        signer = Signer.from_settings(Settings.from_env())
        if signer is None:
            _fail(
                "no signing keys configured: set PROXY_SIGNING_KEY and PROXY_SIGNING_SALT "
                "(hex), e.g. from `openssl rand -hex 32`"
            )
        typer.echo(signer.sign_url(url, ttl=ttl, now=time.time()))
    except ValueError as exc:  # SettingsError too: its message names the variable
        _fail(str(exc))


def _fail(message: str) -> NoReturn:
    typer.echo(f"cutproxy sign: {message}", err=True)
    raise typer.Exit(2)
