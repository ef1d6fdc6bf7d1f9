"""What the docs show is there: the ``cutproxy`` commands and flags they use, the code and
files they name, the tests they cite, the pages and headings they link to.

The docs are README.md and docs/*.md. Their commands are the lines of the fenced ``sh`` and
``console`` blocks (in a console block, those after ``$ ``), and their synopses the inline
spans that start with ``cutproxy`` (``cutproxy warm --sizes ... [--ext jpg]``). A renamed
flag, command, module or test breaks a test here, not a reader's first try.
"""

from __future__ import annotations

import functools
import importlib
import itertools
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import typer
from typer.testing import CliRunner

from proxy.cli import main as cli
from tests.sync_docs import README, ROOT, pages

DOCUMENTS = [README, *pages()]
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
_PROGRAM = {"cutproxy", ".venv/bin/cutproxy"}
_SEPARATORS = {"(", ")", "{", "}"}


def _name(doc: Path) -> str:
    return str(doc.relative_to(ROOT))


def _prose(text: str) -> str:
    """The text outside fenced blocks."""
    return _FENCE.sub("", text)


def _shell_lines(text: str) -> Iterator[str]:
    """Each command line of the shell blocks, continuation lines and multi-line quotes joined."""
    for block in _FENCE.finditer(text):
        if block[1] not in ("sh", "console"):
            continue
        line: str | None = None
        for raw in block[2].splitlines():
            if line is None:
                if block[1] == "console":
                    if not raw.startswith("$ "):
                        continue  # output
                    raw = raw[2:]
                line = raw
            else:
                line += "\n" + raw
            if line.endswith("\\"):
                line = line[:-1]
                continue
            try:
                shlex.split(line, comments=True)
            except ValueError:
                continue  # a quote still open: the command goes on
            yield line
            line = None


def _simple_commands(line: str) -> Iterator[list[str]]:
    """The words of each simple command on a line: split at ; & | < > ( ) { }, without the
    comment and the leading variable assignments."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = ""  # shlex would take the # in a URL for one
    words: list[str] = []
    for token in [*itertools.takewhile(lambda t: not t.startswith("#"), lexer), ";"]:
        if token in _SEPARATORS or set(token) <= set(";&|<>"):
            while words and re.match(r"[A-Za-z_]\w*=", words[0]):
                words.pop(0)
            if words:
                yield words
            words = []
        else:
            words.append(token)


def shell_commands(text: str) -> list[list[str]]:
    """Every simple command of the text's shell blocks."""
    return [words for line in _shell_lines(text) for words in _simple_commands(line)]


def cutproxy_commands(text: str) -> list[list[str]]:
    """The cutproxy commands of the shell blocks, then the synopses in the prose."""
    found = [words for words in shell_commands(text) if words[0] in _PROGRAM]
    for span in re.findall(r"`((?:\.venv/bin/)?cutproxy [^`]+)`", _prose(text)):
        found.append([word.strip("[]") for word in span.replace("\\|", "|").split()])
    return found


@functools.cache
def _app() -> typer.Typer:
    if "sign" not in {command.name for command in cli.app.registered_commands}:
        cli._register_plugins()  # what `cutproxy` does before it parses its arguments
    return cli.app


@functools.cache
def _help(path: tuple[str, ...]) -> str | None:
    """``cutproxy <path> --help``, or None when there is no such command."""
    result = CliRunner().invoke(_app(), [*path, "--help"], env={"COLUMNS": "200"})
    return result.output if result.exit_code == 0 else None


def _problems(words: list[str]) -> Iterator[str]:
    """What in ``cutproxy ...`` the real command line does not have."""
    path: tuple[str, ...] = ()
    rest = words[1:]
    while rest and not rest[0].startswith("-"):
        usage = _help(path) or ""
        if "COMMAND" not in usage.split("Usage:")[1].splitlines()[0]:
            break  # not a group: the rest are its arguments
        for name in rest[0].split("|"):  # `images ls|show|rm` in a synopsis
            if _help((*path, name)) is None:
                yield f"no command `cutproxy {' '.join((*path, name))}`"
        path = (*path, rest.pop(0).split("|")[0])
    text = _help(path) or ""
    flags = set(re.findall(r"--[a-z0-9][a-z0-9-]*", text))
    for word in rest:
        for flag in re.findall(r"^--[a-z0-9][a-z0-9-]*", word):
            if flag not in flags:
                yield f"`cutproxy {' '.join(path)}` has no {flag}"


def test_every_cutproxy_command_and_flag_in_the_docs_exists() -> None:
    checked, problems = 0, []
    for doc in DOCUMENTS:
        for words in cutproxy_commands(doc.read_text()):
            checked += 1
            problems += [f"{_name(doc)}: {' '.join(words)}: {p}" for p in _problems(words)]
    assert not problems, "\n".join(problems)
    assert checked >= 20  # the docs use it throughout: finding none means the parsing broke


def test_the_docs_run_cutproxy_from_the_venv() -> None:
    # A fresh clone has no `cutproxy` on PATH: docs/cli.md says so once, every command shows it.
    bare = [
        f"{_name(doc)}: {' '.join(words)}"
        for doc in DOCUMENTS
        for words in shell_commands(doc.read_text())
        if words[0] == "cutproxy"
    ]
    assert not bare, "write .venv/bin/cutproxy:\n" + "\n".join(bare)


def _resolve(dotted: str) -> object:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found: object = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[cut:]:
            found = getattr(found, attribute)
        return found
    raise ModuleNotFoundError(dotted)


def names_of_code(text: str) -> set[str]:
    """``proxy.x.y`` in inline code, and what the code blocks import from ``proxy``."""
    names = set(re.findall(r"`(proxy(?:\.\w+)+)", _prose(text)))
    for block in _FENCE.finditer(text):
        for module, imported in re.findall(r"from (proxy[\w.]*) import ([\w, ]+)", block[2]):
            names |= {f"{module}.{name.strip()}" for name in imported.split(",")}
        names |= set(re.findall(r"^\s*import (proxy[\w.]*)", block[2], re.M))
    return names


def test_the_code_the_docs_name_exists() -> None:
    missing = []
    for doc in DOCUMENTS:
        for name in sorted(names_of_code(doc.read_text())):
            try:
                _resolve(name)
            except (ImportError, AttributeError):
                missing.append(f"{_name(doc)}: {name}")
    assert not missing, "\n".join(missing)


def test_the_files_and_tests_the_docs_name_exist() -> None:
    missing = []
    for doc in DOCUMENTS:
        prose = _prose(doc.read_text())
        for path in set(re.findall(r"(?<![\w./-])((?:proxy|tests|deploy)/[\w./-]*[\w/])", prose)):
            if not (ROOT / path).exists():
                missing.append(f"{_name(doc)}: {path}")
        for path, test in set(re.findall(r"(tests/[\w/]+\.py)::(\w+)", prose)):
            source = (ROOT / path).read_text() if (ROOT / path).exists() else ""
            if not re.search(rf"^(async )?def {test}\(", source, re.M):
                missing.append(f"{_name(doc)}: {path}::{test}")
    assert not missing, "\n".join(missing)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(text: str) -> set[str]:
    found: set[str] = set()
    for heading in re.findall(r"^#{1,6} (.+)$", _prose(text), re.M):
        slug = base = _slug(heading)
        n = 0
        while slug in found:  # GitHub numbers repeated headings: settings, settings-1, ...
            n += 1
            slug = f"{base}-{n}"
        found.add(slug)
    return found


def test_every_link_in_the_docs_leads_somewhere() -> None:
    broken = []
    for doc in DOCUMENTS:
        prose = re.sub(r"`[^`\n]*`", "", _prose(doc.read_text()))
        for target in re.findall(r"\]\(([^)\s]+)\)", prose):
            if re.match(r"[a-z]+:", target):
                continue  # https:, mailto:: not ours to check here
            path, _, anchor = target.partition("#")
            linked = (doc.parent / path).resolve() if path else doc
            if not linked.exists():
                broken.append(f"{_name(doc)}: {target}")
            elif anchor and anchor not in anchors(linked.read_text()):
                broken.append(f"{_name(doc)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)
