"""``cutproxy import | warm | images ls/show/rm``: the image admin API from a shell.

Each command talks to a running proxy over HTTP (``--url``, ``--token``, through
:mod:`proxy.cli.admin`), so it works the same against ``make serve`` on a laptop and a proxy
on a server. Imports are safe to re-run: a file whose SHA-256 the proxy already holds under
that id is not even sent.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import mimetypes
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from proxy.cli.admin import (
    DEFAULT_URL,
    AdminClient,
    AdminError,
    FatalAdminError,
    TokenOption,
    UrlOption,
    ago,
    run,
)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}
# The proxy enforces its own limit (PROXY_MAX_UPLOAD_MB); this only keeps memory bounded.
LOCAL_MAX_BYTES = 64 * 1024 * 1024
_NOT_ID = re.compile(r"[^A-Za-z0-9_-]+")

DEFAULT_WARM_SIZES = "320x320,640x640,1280x1280"
T = TypeVar("T")
out = Console()
err = Console(stderr=True)

ConcurrencyOption = Annotated[int, typer.Option(min=1, max=64, help="Requests in flight at once.")]


# --- import ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Item:
    image_id: str
    path: Path


@dataclass
class Report:
    outcomes: Counter[str] = field(default_factory=Counter)
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # id, what, why


def image_id_for(path: Path) -> str:
    """An image id from a file name: ``Red Mug (2).JPG`` → ``Red-Mug-2``."""
    return _NOT_ID.sub("-", path.stem).strip("-")[:128]


def collect(paths: Sequence[Path], report: Report) -> list[Item]:
    """Files to import: files as given, folders' images (recursively), CSVs' rows."""
    found: list[Item] = []
    for given in paths:
        if given.is_dir():
            files = sorted(
                p for p in given.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
            found += [Item(image_id_for(p), p) for p in files]
        elif given.suffix.lower() == ".csv":
            found += _csv_items(given, report)
        elif given.is_file():
            found.append(Item(image_id_for(given), given))
        else:
            report.failures.append(("-", str(given), "no such file or folder"))
    seen: dict[str, Path] = {}
    unique: list[Item] = []
    for item in found:
        if not item.image_id:
            report.failures.append(("-", str(item.path), "no usable image id in the file name"))
        elif item.image_id in seen:
            report.failures.append(
                (item.image_id, str(item.path), f"same image id as {seen[item.image_id]}")
            )
        else:
            seen[item.image_id] = item.path
            unique.append(item)
    return unique


def _csv_items(path: Path, report: Report) -> list[Item]:
    items: list[Item] = []
    with path.open(newline="") as handle:
        for number, row in enumerate(csv.reader(handle), start=1):
            if not row or row[0].strip().startswith("#"):
                continue
            if number == 1 and [c.strip().lower() for c in row[:2]] == ["image_id", "path"]:
                continue
            if len(row) < 2:
                report.failures.append(("-", f"{path}:{number}", "expected image_id,path"))
                continue
            file = Path(row[1].strip())
            items.append(Item(row[0].strip(), file if file.is_absolute() else path.parent / file))
    return items


async def import_one(client: AdminClient, item: Item) -> str:
    """``created``, ``replaced`` or ``unchanged`` (then nothing was sent)."""
    if item.path.stat().st_size > LOCAL_MAX_BYTES:
        raise AdminError(f"file over {LOCAL_MAX_BYTES // 1024 // 1024} MiB")
    data = await asyncio.to_thread(item.path.read_bytes)
    sha = hashlib.sha256(data).hexdigest()
    known = await client.get_image(item.image_id)
    if known is not None and known.get("sha256") == sha:
        return "unchanged"
    content_type = mimetypes.guess_type(item.path.name)[0] or "application/octet-stream"
    answer = await client.put_image(item.image_id, data, content_type)
    return str(answer["status"])


def import_command(
    paths: Annotated[
        list[Path],
        typer.Argument(
            help="Image files, folders of images (searched recursively), or CSV files of "
            "image_id,path rows (paths relative to the CSV)."
        ),
    ],
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    concurrency: ConcurrencyOption = 4,
) -> None:
    """Upload images to the proxy; ids come from file names or the CSV. Safe to re-run."""
    report = Report()
    items = collect(paths, report)

    async def work(client: AdminClient, item: Item) -> None:
        try:
            report.outcomes[await import_one(client, item)] += 1
        except FatalAdminError:
            raise
        except (AdminError, OSError) as exc:
            report.failures.append((item.image_id, str(item.path), _reason(exc)))

    started = time.monotonic()
    run(lambda client: _bounded(client, items, work, concurrency, "importing"), url, token)
    _import_summary(report, len(items), time.monotonic() - started)
    if report.failures:
        raise typer.Exit(1)


def _import_summary(report: Report, total: int, seconds: float) -> None:
    out.print(f"import: {total} file(s) in {seconds:.1f}s")
    table = Table()
    table.add_column("outcome")
    table.add_column("files", justify="right")
    uploaded = report.outcomes["created"] + report.outcomes["replaced"]
    table.add_row("uploaded", str(uploaded))
    table.add_row("  new", str(report.outcomes["created"]))
    table.add_row("  replaced", str(report.outcomes["replaced"]))
    table.add_row("unchanged", str(report.outcomes["unchanged"]))
    table.add_row("failed", str(len(report.failures)), style="red" if report.failures else None)
    out.print(table)
    _failures(report)


def _failures(report: Report) -> None:
    if not report.failures:
        return
    out.print("failures:", style="red")
    table = Table()
    for name in ("image id", "file", "reason"):
        table.add_column(name, overflow="fold")
    for row in report.failures:
        table.add_row(*row)
    out.print(table)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return str(exc)


# --- warm -----------------------------------------------------------------------------------


def warm_command(
    image_ids: Annotated[
        list[str] | None, typer.Argument(help="Images to warm (default: every image).")
    ] = None,
    sizes: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated sizes (default 320x320,640x640,1280x1280, none with --presets)."
        ),
    ] = None,
    bg: Annotated[str, typer.Option(help="Background: hex colour or 'transparent'.")] = "ffffff",
    ext: Annotated[
        str | None,
        typer.Option(
            help="Format: jpg, png, webp, auto (store mode: avif); default jpg, and each "
            "preset's own for presets."
        ),
    ] = None,
    fit: Annotated[
        str | None,
        typer.Option(help="contain, pad or cover (default: the proxy's PROXY_FIT)."),
    ] = None,
    presets: Annotated[
        str | None,
        typer.Option(help="Comma-separated named presets (PROXY_PRESETS_FILE), e.g. main,grid."),
    ] = None,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    concurrency: ConcurrencyOption = 4,
) -> None:
    """Pre-render variants into the cache: one token per image; cached ones are skipped.
    In store mode: the image's master minted if missing, the sizes derived from it."""
    names = [p.strip() for p in (presets or "").split(",") if p.strip()]
    if sizes is None:
        sizes = "" if names else DEFAULT_WARM_SIZES
    wanted = [s.strip() for s in sizes.split(",") if s.strip()]
    if not wanted and not names:
        raise typer.BadParameter("give at least one size or preset", param_hint="--sizes")
    report = Report()
    totals: Counter[str] = Counter()
    credits = 0.0

    async def work(client: AdminClient, image_id: str) -> None:
        nonlocal credits
        try:
            answer = await client.warm(image_id, wanted, bg, ext, fit, names)
        except FatalAdminError:
            raise
        except AdminError as exc:
            report.failures.append((image_id, "warm", str(exc)))
            return
        totals["rendered"] += len(answer["rendered"])
        totals["skipped"] += len(answer["skipped"])
        totals["pending"] += len(answer["pending"])
        totals["tokens"] += int(answer["tokens"])
        credits += float(answer["estimated_credits"])

    async def everything(client: AdminClient) -> int:
        ids = list(image_ids or await client.all_ids())
        await _bounded(client, ids, work, concurrency, "warming")
        return len(ids)

    count = run(everything, url, token)
    shape = f", {fit}" if fit else ""
    asked = f"{len(wanted)} size(s), background {bg}, {ext or 'jpg'}{shape}"
    if names:
        asked = (
            f"{asked} + preset(s) {', '.join(names)}" if wanted else f"preset(s) {', '.join(names)}"
        )
    out.print(f"warm: {count} image(s) x {asked}")
    table = Table()
    table.add_column("")
    table.add_column("count", justify="right")
    table.add_row("variants rendered", str(totals["rendered"]))
    table.add_row("already cached", str(totals["skipped"]))
    table.add_row("being minted for a visitor", str(totals["pending"]))
    table.add_row("tokens minted", str(totals["tokens"]))
    table.add_row("estimated credits", f"{credits:.2f}")
    table.add_row("failed images", str(len(report.failures)))
    out.print(table)
    _failures(report)
    if report.failures:
        raise typer.Exit(1)


# --- images ls / show / rm --------------------------------------------------------------------


def ls_command(
    limit: Annotated[int, typer.Option(min=1, max=1000, help="Images per page.")] = 100,
    after: Annotated[str | None, typer.Option(help="Start after this image id.")] = None,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """List images, one page at a time."""
    page = run(lambda client: client.list_images(after, limit), url, token)
    out.print(f"{page['total']} image(s)")
    table = Table()
    for name in ("image id", "size", "type", "bytes", "original", "uploaded"):
        table.add_column(name, justify="right" if name == "bytes" else "left")
    for image in page["images"]:
        table.add_row(
            image["image_id"],
            f"{image['width']}x{image['height']}" if image["width"] else "?",
            (image["content_type"] or "?").removeprefix("image/"),
            str(image["size"] or "?"),
            "kept" if image["original_kept"] else "not kept",
            ago(image["uploaded_at"]),
        )
    out.print(table)
    if page["next"]:
        out.print(f"more: cutproxy images ls --after {page['next']}")


def show_command(
    image_id: Annotated[str, typer.Argument(help="The image id.")],
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Show one image and the variants currently cached."""
    image = run(lambda client: client.get_image(image_id), url, token)
    if image is None:
        err.print(f"no image {image_id!r}")
        raise typer.Exit(1)
    out.print(f"image {image_id}")
    table = Table(show_header=False)
    table.add_column("field")
    table.add_column("value", overflow="fold")
    for name in ("unique_filename", "content_type", "width", "height", "size", "sha256"):
        table.add_row(name, str(image[name]))
    table.add_row("original", "kept" if image["original_kept"] else "not kept")
    table.add_row("uploaded", ago(image["uploaded_at"]))
    out.print(table)
    variants = image.get("variants")
    if variants is None:
        out.print("(the shared cache cannot list variants)")
        return
    out.print(f"{len(variants)} cached variant(s)")
    listing = Table()
    listing.add_column("path")
    listing.add_column("expires in", justify="right")
    for variant in variants:
        listing.add_row(variant["path"], f"{variant['expires_in'] // 60} min")
    out.print(listing)


def rm_command(
    image_ids: Annotated[list[str], typer.Argument(help="Image ids to remove.")],
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Remove images: their mapping, cached variants and unshared originals."""

    async def remove(client: AdminClient) -> int:
        missing = 0
        for image_id in image_ids:
            answer = await client.delete_image(image_id)
            if answer is None:
                err.print(f"no image {image_id!r}")
                missing += 1
                continue
            original = "deleted" if answer["original_deleted"] else "kept (shared)"
            out.print(
                f"removed {image_id}: {answer['variants_dropped']} cached variant(s), "
                f"original {original}"
            )
        return missing

    if run(remove, url, token):
        raise typer.Exit(1)


# --- plumbing -----------------------------------------------------------------------------------


async def _bounded(
    client: AdminClient,
    items: Sequence[T],
    work: Callable[[AdminClient, T], Awaitable[None]],
    concurrency: int,
    label: str,
) -> None:
    """Run ``work`` on every item, ``concurrency`` at a time, under a progress bar."""
    gate = asyncio.Semaphore(concurrency)
    progress = Progress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    )

    async def one(item: T) -> None:
        async with gate:
            await work(client, item)
            progress.advance(task)

    with progress:
        task = progress.add_task(label, total=len(items))
        await asyncio.gather(*(one(item) for item in items))


def register(app: typer.Typer) -> None:
    app.command("import")(import_command)
    app.command("warm")(warm_command)
    images = typer.Typer(help="List, show and remove images.", no_args_is_help=True)
    images.command("ls")(ls_command)
    images.command("show")(show_command)
    images.command("rm")(rm_command)
    app.add_typer(images, name="images")
