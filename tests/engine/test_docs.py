"""docs/engine.md keeps up with the code: its settings table is generated."""

from __future__ import annotations

import re
from pathlib import Path

from proxy.engine.settings import settings_markdown

DOC = Path(__file__).resolve().parents[2] / "docs" / "engine.md"
BLOCK = re.compile(r"(<!-- engine-settings:start -->\n)(.*?)(<!-- engine-settings:end -->)", re.S)


def current(text: str) -> str:
    return BLOCK.sub(lambda m: m[1] + settings_markdown() + "\n" + m[3], text)


def test_settings_table_is_current() -> None:
    text = DOC.read_text()
    assert BLOCK.search(text)
    assert text == current(text), "run: python -m tests.engine.test_docs"


if __name__ == "__main__":
    DOC.write_text(current(DOC.read_text()))
