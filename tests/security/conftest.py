"""One ``cutproxy serve --demo`` (embedded engine, admin token) for the security tests."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.security import fuzz
from tests.servers import Server

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Served:
    server: Server
    secrets: fuzz.Secrets
    files: list[str]  # the engine's output files of two demo variants, by name


@pytest.fixture(scope="package")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with fuzz.serving(tmp_path_factory.mktemp("security")) as (server, secrets):
        yield Served(server, secrets, fuzz.output_files(server))
