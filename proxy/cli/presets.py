"""``cutproxy presets``: list the named presets of ``PROXY_PRESETS_FILE`` (or ``--file``).

The same check the server makes at start: a bad file prints what is wrong (the preset and
the field) and exits 2. The main CLI calls :func:`register` to add the command.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from proxy.settings import Settings, SettingsError
from proxy.url import presets as named


def register(app: typer.Typer) -> None:
    """Add ``presets [--file PATH] [--json] [--image-id ID]`` to ``app``."""
    app.command("presets")(presets)


def presets(
    file: Annotated[
        Path | None, typer.Option(help="A presets TOML file (default: PROXY_PRESETS_FILE).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON, as GET /presets.")] = False,
    image_id: Annotated[
        str, typer.Option(help="The image id shown in the example URLs.")
    ] = "<image_id>",
) -> None:
    """Check and list the named presets: size, fit, background, framing, format, URL."""
    try:
        settings = Settings.from_env()
        if file is not None:
            settings = settings.replace(presets_file=file)
        if settings.presets_file is None:
            typer.echo("cutproxy: no presets: set PROXY_PRESETS_FILE or pass --file", err=True)
            raise typer.Exit(2)
        found = named.from_settings(settings)
    except SettingsError as exc:
        typer.echo(f"cutproxy: invalid setting: {exc}", err=True)
        raise typer.Exit(2) from None
    store = settings.store_mode
    if as_json:
        rows = [{**p.as_json(), "available": store or not p.needs_store} for p in found.values()]
        typer.echo(json.dumps({"mode": settings.mode, "presets": rows}, indent=2))
        return
    for preset in found.values():
        framing = f"fill {preset.fill:g}, {preset.anchor}" if preset.fill is not None else "-"
        quality = preset.quality if preset.quality is not None else "server's"
        note = "" if store or not preset.needs_store else "  (needs PROXY_MODE=store)"
        typer.echo(
            f"{preset.name}: {preset.size} {preset.fit} on {preset.bg}, framing {framing}, "
            f"quality {quality}{note}\n    {preset.path(image_id)}"
            + "".join(f"\n    {preset.path(image_id, fmt)}" for fmt in preset.formats[1:])
        )
