"""``make bench``: every benchmark, measured side by side in one run, printed as ratios.

Benchmarks never fail on a timing; they print what they measured next to the target.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table


def main() -> int:
    here = Path(__file__).parent
    names = sorted(m.name for m in pkgutil.iter_modules([str(here)]) if m.name.startswith("bench_"))
    wanted = sys.argv[1:]
    table = Table(title="cutproxy benchmarks (2 workers, loopback)")
    for column in ("benchmark", "measured", "target"):
        table.add_column(column)
    console = Console()
    for name in names:
        if wanted and name not in wanted:
            continue
        started = time.monotonic()
        module = importlib.import_module(f"tests.bench.{name}")
        run = module.run
        rows = asyncio_run(run) if _is_async(run) else run()
        for row in rows:
            table.add_row(*row)
        console.print(f"[dim]{name}: {time.monotonic() - started:.0f}s[/dim]")
    console.print(table)
    return 0


def _is_async(func: object) -> bool:
    import inspect

    return inspect.iscoroutinefunction(func)


def asyncio_run(func: object) -> list[tuple[str, str, str]]:
    import asyncio

    result: list[tuple[str, str, str]] = asyncio.run(func())  # type: ignore[operator]
    return result


if __name__ == "__main__":
    sys.exit(main())
