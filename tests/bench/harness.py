"""Shared bench plumbing: servers, wrk runs, percentiles."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.integration.conftest import ENGINE_KEY, Engine, product_png, register
from tests.servers import Server, cutproxy, free_port, start

WRK = shutil.which("wrk")


@dataclass
class WrkResult:
    rps: float
    p99_ms: float


def wrk(url: str, seconds: int = 5, connections: int = 64, threads: int = 2) -> WrkResult:
    if WRK is None:
        raise SystemExit("make bench needs wrk: apt-get install -y wrk")
    out = subprocess.run(
        [WRK, "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s", "--latency", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])  # type: ignore[index]
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    assert p99 is not None, out
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99[2]]
    return WrkResult(rps, float(p99[1]) * scale)


def start_engine(tmp: Path, **env: str) -> Engine:
    server = start(
        cutproxy("engine", "--host", "127.0.0.1", "--port", "{port}"),
        port=free_port(),
        log_path=tmp / "engine.log",
        env={
            "PROXY_ENGINE_DATA_DIR": str(tmp / "engine-data"),
            "PROXY_ENGINE_API_KEY": ENGINE_KEY,
            **env,
        },
        ready_path="/_engine/health",
    )
    return Engine(server)


def start_uvicorn(target: str, tmp: Path, workers: int, env: dict[str, str], name: str) -> Server:
    """``target`` under uvicorn with the options ``cutproxy serve`` gives it."""
    args = [sys.executable, "-m", "uvicorn", target, "--host", "127.0.0.1", "--port", "{port}"]
    args += ["--workers", str(workers), "--no-access-log", "--log-level", "warning"]
    args += ["--no-proxy-headers"]
    return start(args, port=free_port(), log_path=tmp / f"{name}.log", env=env, ready_path="/")


def registered_image(engine: Engine, proxy_url: str, image_id: str = "bench") -> str:
    register(proxy_url, image_id, engine.upload(product_png()), (800, 600))
    return image_id
