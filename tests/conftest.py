"""Suite-wide hooks: the ``needs`` mark, and the end-of-run list of tests that a missing real
component kept from running, with the one command that installs it (tests/components.py)."""

from __future__ import annotations

from collections import defaultdict

import pytest

from tests import components


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "needs(program): the test runs this real program (tests/components.py); "
        "skipped when it is missing, failed under CI=true",
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("needs"):
        components.require(*mark.args, **mark.kwargs)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    # program -> file -> test ids, for the tests skipped (or, under CI, failed) for it
    missing: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    known = components.components()
    for outcome in ("skipped", "failed", "error"):
        for report in terminalreporter.stats.get(outcome, []):
            program = components.missing_program(_message(report))
            if program is not None and program in known:
                missing[program][report.nodeid.split("::")[0]].append(report.nodeid)
    if not missing:
        return
    verb = "failed (CI=true)" if components.under_ci() else "skipped"
    write = terminalreporter.write_line
    terminalreporter.section(f"{verb}: missing components", sep="=", yellow=True, bold=True)
    for program, files in sorted(missing.items()):
        count = sum(len(ids) for ids in files.values())
        write(f"{program} ({known[program].source}): {count} test{'s' * (count != 1)} {verb}")
        for path, ids in sorted(files.items()):
            write(f"  {path}: {len(ids)}")
            if terminalreporter.verbosity > 0:
                for nodeid in ids:
                    write(f"    {nodeid}")
    command = components.install_command(known[p] for p in sorted(missing))
    write(f"Install them, then run make test again:\n  {command}", bold=True)


def _message(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple):  # a skip: (path, line, "Skipped: reason")
        return str(longrepr[2])
    return str(longrepr or "")
