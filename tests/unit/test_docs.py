"""The documentation's generated parts cannot drift, and the README leads to every page."""

from __future__ import annotations

import re
import tomllib

from tests.sync_docs import GENERATED, README, ROOT, blocks, expected, pages


def test_the_generated_parts_are_current() -> None:
    for page in pages():
        text = page.read_text()
        assert text == expected(text), f"{page.relative_to(ROOT)} is stale: run make docs"


def test_every_generated_part_has_a_page() -> None:
    found = [name for page in pages() for name in blocks(page.read_text())]
    assert sorted(found) == sorted(GENERATED)


def test_every_docs_page_is_linked_from_the_readme() -> None:
    linked = set(re.findall(r"\]\((docs/[\w.-]+\.md)[#)]", README.read_text()))
    assert linked == {f"docs/{page.name}" for page in pages()}


def test_readme_starts_with_the_two_commands() -> None:
    lines = README.read_text().splitlines()
    block = lines[lines.index("```sh") + 1 : lines.index("```sh") + 3]
    assert [line.split("#")[0].strip() for line in block] == ["make serve", "make test"]


def test_the_issue_sections_are_there() -> None:
    for page, heading in (
        ("engine.md", "The local engine"),
        ("guards.md", "Protecting your credits"),
        ("cdn.md", "Behind a CDN"),
        ("html.md", "In HTML"),
        ("mobile.md", "In mobile apps"),
        ("deploying.md", "Deploying"),
        ("scaling.md", "Scaling out"),
        ("benchmarks.md", "Benchmarks"),
        ("settings.md", "Settings"),
    ):
        text = (ROOT / "docs" / page).read_text()
        assert re.search(rf"^#+ {heading}$", text, re.M), f"docs/{page}: {heading}"


def test_the_readme_is_a_front_page() -> None:
    # Everything else lives in docs/, linked: the front page stays a few hundred lines.
    assert len(README.read_text().splitlines()) <= 300


def _packages_in_table(text: str, heading: str) -> set[str]:
    section = f"\n{text}".split(f"\n{heading}\n", 1)[1]
    table = re.search(r"^\| package \| why \|\n\|---\|---\|\n((?:\|.*\n)+)", section, re.M)
    assert table, heading
    cells = [row.split("|")[1] for row in table[1].splitlines()]
    return {_normal(name) for cell in cells for name in cell.split(",")}


def _normal(name: str) -> str:
    return re.split(r"[\[<>=!~ ]", name.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_every_dependency_is_explained() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    wanted = {_normal(requirement) for requirement in declared}
    assert _packages_in_table(README.read_text(), "## Dependencies") == wanted
    docs = (ROOT / "docs" / "dependencies.md").read_text()
    assert _packages_in_table(docs, "# Dependencies, and why each") == wanted
