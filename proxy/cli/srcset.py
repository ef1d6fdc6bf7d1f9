"""``cutproxy srcset``: print a ``srcset`` value (or ``<img>`` markup) the proxy will serve.

It reads the same ``PROXY_*`` settings as the proxy (ladder, size limits, signing keys), so
run it where those are set. The main CLI calls :func:`register` to add the command.
"""

from __future__ import annotations

import time
from typing import Annotated, NoReturn

import typer

from proxy.serving import srcset as helpers
from proxy.settings import Settings, SettingsError
from proxy.url.signing import Signer


def register(app: typer.Typer) -> None:
    """Add ``srcset IMAGE_ID [--widths ...] [--ratio ...] [--bg ...] [--ext ...] [--fit ...]``
    to ``app``."""
    app.command("srcset")(srcset)


def srcset(
    image_id: Annotated[str, typer.Argument(help="The image id, e.g. demo.")],
    widths: Annotated[
        str, typer.Option(help="Comma-separated CSS pixel widths; each snaps to the ladder.")
    ] = "320,640,1280",
    ratio: Annotated[str, typer.Option(help="Box aspect ratio W:H.")] = "1:1",
    bg: Annotated[str, typer.Option(help="Background: hex colour or transparent.")] = "ffffff",
    ext: Annotated[
        str,
        typer.Option(help="Format: jpg, png or webp (store mode: avif); auto: the best by Accept."),
    ] = "jpg",
    fit: Annotated[
        str | None,
        typer.Option(
            help="contain, pad or cover (default: PROXY_FIT; pad and cover need PROXY_MODE=store)."
        ),
    ] = None,
    base_url: Annotated[
        str | None, typer.Option(help="Prefix of every URL (default: PROXY_PUBLIC_URL).")
    ] = None,
    original: Annotated[
        str | None,
        typer.Option(help="The original's size WxH: descriptors become delivered widths."),
    ] = None,
    ttl: Annotated[
        float | None,
        typer.Option(help="Signed URLs expire after this many seconds (default: never).", min=1),
    ] = None,
    html: Annotated[
        bool, typer.Option("--html", help="Print <img> markup instead of the attribute value.")
    ] = False,
    sizes: Annotated[str, typer.Option(help="The sizes attribute (with --html).")] = "100vw",
    alt: Annotated[str, typer.Option(help="The alt text (with --html).")] = "",
) -> None:
    """Print a srcset for IMAGE_ID: ladder widths, canonical URLs, signed when keys are set."""
    try:
        settings = Settings.from_env()
        found = helpers.candidates(
            image_id,
            widths,
            ratio,
            bg,
            ext,
            Signer.from_settings(settings),
            settings=settings,
            original=_size(original) if original else None,
            base_url=settings.public_url if base_url is None else base_url,
            ttl=ttl,
            now=time.time(),
            fit=fit,
        )
    except (ValueError, SettingsError) as exc:
        _fail(str(exc))
    if html:
        typer.echo(helpers.img_tag(found, sizes=sizes, alt=alt))
    else:
        typer.echo(", ".join(c.descriptor for c in found))


def _size(text: str) -> tuple[int, int]:
    width, sep, height = text.lower().partition("x")
    if not (sep and width.isdigit() and height.isdigit() and int(width) and int(height)):
        raise ValueError(f"--original must look like 1200x900, got {text[:20]!r}")
    return int(width), int(height)


def _fail(message: str) -> NoReturn:
    typer.echo(f"cutproxy srcset: {message}", err=True)
    raise typer.Exit(2)
