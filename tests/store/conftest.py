"""Store mode's parts on a real disk; child processes play other workers and crashes."""

from __future__ import annotations

import pytest

from tests.clock import Clock


@pytest.fixture
def clock() -> Clock:
    return Clock(1_700_000_000.0)
