"""A lease held by another process, which a test kills with SIGKILL like a crashed worker."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

from tests.servers import REPO

# Takes the lease for ten minutes, says its token, then sleeps: a worker stuck mid-upload.
_HOLD = """
import asyncio, sys, time

async def main(kind, where, key):
    if kind == "disk":
        from pathlib import Path
        from proxy.stores.leases import DiskLease
        lease = DiskLease(Path(where))
    else:
        from proxy.stores.redis import RedisStore
        from proxy.settings import Settings
        lease = RedisStore.from_settings(Settings.from_env({}, redis_url=where), time.time).lease
    print(await lease.acquire(key, 600), flush=True)
    await asyncio.sleep(600)

asyncio.run(main(*sys.argv[1:]))
"""


@dataclass
class Holder:
    proc: subprocess.Popen[bytes]
    token: str

    def kill(self) -> None:
        """SIGKILL; returns once it is dead but not yet reaped (a zombie, as a crashed worker
        is until its parent notices)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        flags = os.WEXITED | os.WNOHANG | os.WNOWAIT
        while os.waitid(os.P_PID, self.proc.pid, flags) is None:
            assert time.monotonic() < deadline, "the holder did not die"
            time.sleep(0.005)

    def reap(self) -> None:
        self.proc.wait(10)


@contextlib.contextmanager
def lease_holder(kind: str, where: str, key: str) -> Iterator[Holder]:
    """Another process holding ``key`` (``kind``: ``disk`` at a directory, or ``redis`` at a
    URL) with a TTL of 600 s; killed and reaped at the end whatever happened."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD, kind, where, key],
        stdout=subprocess.PIPE,
        cwd=REPO,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        token = proc.stdout.readline().decode().strip()  # EOF at once if the child failed
        assert token and token != "None", f"the holder did not get the lease: {token!r}"
        yield Holder(proc, token)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
