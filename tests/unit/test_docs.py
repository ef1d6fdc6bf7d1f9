"""The README's settings table is generated from the settings themselves: it cannot drift."""

from __future__ import annotations

from tests.sync_docs import README, expected_readme


def test_readme_settings_table_is_current() -> None:
    text = README.read_text()
    assert "<!-- settings-table:start -->" in text
    assert text == expected_readme(text), "run: .venv/bin/python -m tests.sync_docs"


def test_readme_starts_with_the_two_commands() -> None:
    lines = README.read_text().splitlines()
    block = lines[lines.index("```sh") + 1 : lines.index("```sh") + 3]
    assert [line.split("#")[0].strip() for line in block] == ["make serve", "make test"]
