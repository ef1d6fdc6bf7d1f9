"""``cutproxy store orphans [--clean]``: the object store's orphans, from a shell.

Like the image commands (:mod:`proxy.cli.images`) it talks to a running proxy over HTTP
(``--url``, ``--token``): ``GET /admin/store/orphans`` reports, ``DELETE`` removes
(:mod:`proxy.serving.store_admin`), so the proxy's own registry and store settings decide
what is an orphan, and no store key ever leaves the servers.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from proxy.cli.admin import DEFAULT_URL, TokenOption, UrlOption, ago, run

out = Console()
err = Console(stderr=True)

GraceOption = Annotated[
    float | None,
    typer.Option(
        min=0,
        help="Seconds an orphan's newest object must be old (default: the proxy's, an hour; "
        "younger ones may be uploads not registered yet).",
    ),
]


def orphans_command(
    clean: Annotated[
        bool, typer.Option("--clean", help="Remove them (objects and local masters).")
    ] = False,
    grace: GraceOption = None,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Report (or remove) objects of images the registry no longer knows."""
    body = run(lambda client: client.orphans(clean, grace), url, token)
    found = body["removed"] if clean else body["orphans"]
    verb = "removed" if clean else "found"
    out.print(f"{len(found)} orphan image(s) {verb} (older than {body['grace_seconds']:g} s)")
    if found:
        table = Table()
        for name in ("image id", "objects", "bytes", "newest"):
            table.add_column(name, justify="left" if name == "image id" else "right")
        for orphan in found:
            table.add_row(
                orphan["image_id"],
                str(orphan["objects"]),
                str(orphan["bytes"]),
                ago(orphan["newest"]),
            )
        out.print(table)
    if clean and body.get("local_masters_removed"):
        local = ", ".join(body["local_masters_removed"])
        out.print(f"local masters removed on that host: {local}")
    elif not clean and found:
        err.print("remove them with: cutproxy store orphans --clean")


def register(app: typer.Typer) -> None:
    store = typer.Typer(help="The object store (PROXY_STORE_URL).", no_args_is_help=True)
    store.command("orphans")(orphans_command)
    app.add_typer(store, name="store")
