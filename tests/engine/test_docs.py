"""docs/engine.md keeps up with the code: its settings table is generated (``make docs``)."""

from __future__ import annotations

from tests.sync_docs import DOCS, blocks, expected


def test_settings_table_is_current() -> None:
    text = (DOCS / "engine.md").read_text()
    assert blocks(text) == ["engine-settings"]
    assert text == expected(text), "run: make docs"
