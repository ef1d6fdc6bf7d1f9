"""The README's settings table and its sections from docs/ are generated: they cannot drift."""

from __future__ import annotations

from tests.sync_docs import README, ROOT, expected_readme, included


def test_readme_is_current() -> None:
    text = README.read_text()
    assert "<!-- settings-table:start -->" in text
    assert text == expected_readme(text), "run: make docs"


def test_every_docs_page_is_in_the_readme() -> None:
    pages = {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")}
    assert pages == set(included(README.read_text()))


def test_readme_starts_with_the_two_commands() -> None:
    lines = README.read_text().splitlines()
    block = lines[lines.index("```sh") + 1 : lines.index("```sh") + 3]
    assert [line.split("#")[0].strip() for line in block] == ["make serve", "make test"]


def test_the_issue_sections_are_there() -> None:
    text = README.read_text()
    for heading in (
        "## The local engine",
        "## Protecting your credits",
        "## Behind a CDN",
        "## In HTML",
        "## In mobile apps",
        "## Deploying",
        "## Scaling out",
        "## Benchmarks",
        "## Settings",
    ):
        assert f"\n{heading}" in text, heading
