"""Keep the generated parts of ``docs/`` true: ``python -m tests.sync_docs`` (``make docs``)
rewrites them.

- ``docs/settings.md``: the proxy's settings table, from ``proxy/settings.py``;
- ``docs/engine.md``: the local engine's settings table, from ``proxy/engine/settings.py``.

Each sits between ``<!-- <name>:start -->`` and ``<!-- <name>:end -->``; everything else in
``docs/`` and the README is written by hand (``tests/unit/test_docs.py`` checks the rest).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path

from proxy.cli.main import settings_markdown
from proxy.engine.settings import settings_markdown as engine_settings_markdown

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"

#: Every generated block, by the name its markers carry.
GENERATED: dict[str, Callable[[], str]] = {
    "settings-table": settings_markdown,
    "engine-settings": engine_settings_markdown,
}
_BLOCK = re.compile(r"(<!-- ([\w-]+):start -->\n)(.*?)(<!-- \2:end -->)", re.S)


def pages() -> list[Path]:
    """Every page of the documentation, in name order."""
    return sorted(DOCS.glob("*.md"))


def blocks(text: str) -> list[str]:
    """The names of the generated blocks in ``text``, in order."""
    return [m[2] for m in _BLOCK.finditer(text) if m[2] in GENERATED]


def expected(text: str) -> str:
    """``text`` with every generated block as the code makes it now."""

    def fill(m: re.Match[str]) -> str:
        make = GENERATED.get(m[2])
        return m[0] if make is None else m[1] + make() + "\n" + m[4]

    return _BLOCK.sub(fill, text)


def main() -> int:
    for page in pages():
        text = page.read_text()
        if text != (new := expected(text)):
            page.write_text(new)
            print(f"updated {page.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
