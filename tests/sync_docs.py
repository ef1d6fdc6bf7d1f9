"""Keep the README's generated parts true: ``python -m tests.sync_docs`` (``make docs``)
rewrites them.

- the settings table, from the settings themselves;
- each ``<!-- docs/<name>.md:start -->`` block, from that file: the sections live in
  ``docs/`` next to the tests that keep them honest, and the README carries them whole.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from proxy.cli.main import settings_markdown

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
_SETTINGS = re.compile(r"(<!-- settings-table:start -->\n)(.*?)(<!-- settings-table:end -->)", re.S)
_INCLUDE = re.compile(r"(<!-- (docs/[\w.-]+\.md):start -->\n)(.*?)(<!-- \2:end -->)", re.S)


def expected_readme(text: str) -> str:
    text = _SETTINGS.sub(lambda m: m[1] + settings_markdown() + "\n" + m[3], text)
    return _INCLUDE.sub(lambda m: m[1] + (ROOT / m[2]).read_text().strip() + "\n" + m[4], text)


def included(text: str) -> list[str]:
    return [m[2] for m in _INCLUDE.finditer(text)]


def main() -> int:
    README.write_text(expected_readme(README.read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
