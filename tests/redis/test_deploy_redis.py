"""deploy/docker-compose.redis.yml: valid, consistent with the base file, and runnable here.

Docker cannot run on this machine, so the replicas' commands and environments are run
directly, with the compose hostnames (redis, engine) pointed at loopback servers.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.components import require
from tests.integration.conftest import Engine
from tests.ops.test_deploy import _compose_env
from tests.redis.server import RedisServer
from tests.servers import REPO, Server, cutproxy, free_port, start

pytestmark = pytest.mark.slow

DEPLOY = REPO / "deploy"
BASE = DEPLOY / "docker-compose.yml"
OVERRIDE = DEPLOY / "docker-compose.redis.yml"
ADMIN = "compose-admin-token-0123456789"


def merged() -> dict[str, Any]:
    """The two files as ``docker compose -f base -f override`` merges the parts used here:
    environment and depends_on by key, volumes and ports by their target."""
    base = yaml.safe_load(BASE.read_text())["services"]
    override = yaml.safe_load(OVERRIDE.read_text())["services"]
    services = {name: dict(service) for name, service in base.items()}
    for name, service in override.items():
        into = services.setdefault(name, {})
        for key, value in service.items():
            if key in ("environment", "depends_on"):
                into[key] = {**into.get(key, {}), **value}
            elif key in ("volumes", "ports"):
                kept = {_target(v): v for v in into.get(key, [])}
                kept.update({_target(v): v for v in value})
                into[key] = list(kept.values())
            else:
                into[key] = value
    return services


def _target(mapping: str) -> str:
    return str(mapping).rsplit(":", 1)[-1] if "/" in str(mapping) else str(mapping)


def test_the_override_matches_the_compose_spec() -> None:
    tool = require("check-jsonschema")
    result = subprocess.run(
        [tool, "--builtin-schema", "vendor.compose-spec", str(OVERRIDE)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_both_replicas_share_redis_and_originals_and_nothing_else() -> None:
    services = merged()
    one, two = services["proxy"], services["proxy-2"]
    for replica in (one, two):
        assert replica["environment"]["PROXY_REDIS_URL"] == "redis://redis:6379/0"
        assert "redis" in replica["depends_on"]
    # Same settings, apart from what only the first one does (register the demo image).
    assert two["environment"] == one["environment"]
    assert two["command"] == [a for a in one["command"] if a != "--demo"]
    mounts = [{_target(v): v.split(":")[0] for v in r["volumes"]} for r in (one, two)]
    blob_dir = one["environment"]["PROXY_BLOB_DIR"]
    assert mounts[0][blob_dir] == mounts[1][blob_dir]  # one shared volume
    assert mounts[0]["/data"] != mounts[1]["/data"]  # each its own data dir
    assert {"redis-data", "originals", "proxy-2-data"} <= set(
        yaml.safe_load(OVERRIDE.read_text())["volumes"]
    )


def test_the_replica_stack_runs_here(redis_server: RedisServer, tmp_path: Path) -> None:
    services = merged()
    engine_port = free_port()
    engine_env = {
        k: v.replace("localhost:9000", f"localhost:{engine_port}")
        for k, v in _expand(services["engine"]["environment"]).items()
    }
    args = services["engine"]["command"][1:]
    args[args.index("--host") + 1], args[args.index("--port") + 1] = "127.0.0.1", str(engine_port)
    engine = Engine(
        start(
            cutproxy("engine", *args),
            port=engine_port,
            log_path=tmp_path / "engine.log",
            env={**engine_env, "PROXY_ENGINE_DATA_DIR": str(tmp_path / "engine")},
            ready_path="/_engine/health",
        )
    )
    replicas: list[Server] = []
    try:
        for name in ("proxy", "proxy-2"):  # proxy-2 starts once proxy is healthy, as written
            replicas.append(_replica(services[name], name, engine, redis_server, tmp_path))
        first = httpx.get(f"{replicas[1].url}/img/demo/320x240/ffffff.png", timeout=30)
        assert first.status_code == 302, first.text
        second = httpx.get(f"{replicas[0].url}/img/demo/320x240/ffffff.png", timeout=30)
        assert second.headers["location"] == first.headers["location"]
        stats = engine.stats()
        assert int(stats["tokens_minted"]) - int(stats["uploads"]) == 1  # one variant mint
        assert list((tmp_path / "originals").rglob("*")), "the original is kept on the shared dir"
    finally:
        for replica in replicas:
            replica.stop()
        engine.server.stop()


def _replica(
    service: Mapping[str, Any], name: str, engine: Engine, redis: RedisServer, tmp_path: Path
) -> Server:
    env = {
        k: v.replace("http://engine:9000", engine.url).replace("redis://redis:6379/0", redis.url)
        for k, v in _expand(service["environment"]).items()
    }
    env |= {
        "PROXY_ADMIN_TOKEN": ADMIN,
        "PROXY_DATA_DIR": str(tmp_path / name),
        "PROXY_BLOB_DIR": str(tmp_path / "originals"),
    }
    args = list(service["command"][1:])
    port = free_port()
    args[args.index("--host") + 1], args[args.index("--port") + 1] = "127.0.0.1", str(port)
    return start(
        cutproxy("serve", *args),
        port=port,
        log_path=tmp_path / f"{name}.log",
        env=env,
        ready_path="/health/live",
    )


def _expand(environment: Mapping[str, str]) -> dict[str, str]:
    """Compose's ``${VAR:-default}`` / ``${VAR:?message}``, with deploy/.env as documented."""
    return _compose_env(environment)
