"""The tests' clock: pass it where the code takes ``clock=``, move it by hand, never sleep."""

from __future__ import annotations

import time


class Clock:
    """Wall-clock seconds that only move when a test says so."""

    def __init__(self, now: float | None = None) -> None:
        self.now = time.time() if now is None else now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
