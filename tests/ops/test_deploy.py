"""deploy/: real linters on every file, and the commands the files run, run here.

Docker cannot run on this machine (no engine), so the image's and the compose file's
command lines are run directly, with the same arguments and environment, after the linters
have checked the files themselves.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.components import require
from tests.servers import REPO, Server, cutproxy, free_port, start, wait_for

pytestmark = pytest.mark.slow

DEPLOY = REPO / "deploy"
BIN = Path(sys.executable).parent
K8S = DEPLOY / "kubernetes"
MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def run(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, **kwargs)


# --- linters ----------------------------------------------------------------------------------


def test_dockerfile_passes_hadolint(tmp_path: Path) -> None:
    hadolint = require("hadolint")
    result = run(hadolint, str(DEPLOY / "Dockerfile"))
    assert result.returncode == 0, result.stdout + result.stderr
    # ... and hadolint does fail a careless one, so the pass above means something.
    careless = tmp_path / "Dockerfile"
    careless.write_text("FROM python:latest\nRUN apt-get install -y curl\nCMD cutproxy serve\n")
    assert run(hadolint, str(careless)).returncode != 0


def test_kubernetes_manifests_pass_strict_schema_validation(tmp_path: Path) -> None:
    validate = require("kubernetes-validate")
    result = run(validate, "--strict", *map(str, MANIFESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed") == len(MANIFESTS)
    typo = tmp_path / "deployment.yaml"
    typo.write_text((K8S / "deployment.yaml").read_text().replace("livenessProbe", "livenesProbe"))
    assert run(validate, "--strict", str(typo)).returncode != 0


def test_compose_file_matches_the_compose_spec(tmp_path: Path) -> None:
    check = require("check-jsonschema")
    compose = DEPLOY / "docker-compose.yml"
    result = run(check, "--builtin-schema", "vendor.compose-spec", str(compose))
    assert result.returncode == 0, result.stdout + result.stderr
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(compose.read_text().replace("restart: unless-stopped", "restart: [1]"))
    assert run(check, "--builtin-schema", "vendor.compose-spec", str(broken)).returncode != 0


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = require("systemd-analyze")
    unit = tmp_path / "cutproxy.service"
    # verify insists that ExecStart's program exists: point it at this checkout's cutproxy.
    unit.write_text(_unit_text().replace("/opt/cutproxy/bin/cutproxy", str(BIN / "cutproxy")))
    result = run(analyze, "verify", str(unit))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "cutproxy.service" not in result.stderr, result.stderr


def test_varnish_compiles_the_vcl() -> None:
    varnishd = require("varnishd")
    with _vcl_for("127.0.0.1", 8080) as vcl_path:
        result = run(*_varnish_args(varnishd, vcl_path), "-C")
    assert result.returncode == 0, result.stderr[-2000:]


# --- what the files say, checked against each other --------------------------------------------


def test_kubernetes_pieces_fit_together() -> None:
    docs = {p.name: yaml.safe_load(p.read_text()) for p in MANIFESTS}
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(docs)
    deployment = docs["deployment.yaml"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    for name in ("service.yaml", "pdb.yaml"):
        selector = docs[name]["spec"]["selector"]
        assert selector.get("matchLabels", selector).items() <= labels.items()
    assert docs["hpa.yaml"]["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
    assert pod["securityContext"]["runAsNonRoot"] is True
    config = docs["configmap.yaml"]["data"]
    stop = float(config["PROXY_SHUTDOWN_TIMEOUT"])
    pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > stop + pause
    refs = {ref[k]["name"] for ref in container["envFrom"] for k in ref}
    assert refs == {
        docs["configmap.yaml"]["metadata"]["name"],
        docs["secret.yaml"]["metadata"]["name"],
    }
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {config["PROXY_DATA_DIR"], config["PROXY_BLOB_DIR"], "/tmp"} <= mounts
    assert "/tmp" in mounts or not container["securityContext"]["readOnlyRootFilesystem"]


def test_the_secret_holds_the_secrets_and_the_configmap_none() -> None:
    from proxy.settings import Settings

    fields = Settings.__dataclass_fields__.values()
    secret_envs = {f.metadata["env"] for f in fields if f.metadata["secret"]}
    plain_envs = {f.metadata["env"] for f in fields} - secret_envs
    config = yaml.safe_load((K8S / "configmap.yaml").read_text())["data"]
    secret = yaml.safe_load((K8S / "secret.yaml").read_text())["stringData"]
    assert config.keys() <= plain_envs
    assert not secret.keys() & plain_envs
    assert {"PROXY_API_KEY", "PROXY_ADMIN_TOKEN", "PROXY_SIGNING_KEY"} <= secret.keys()


# --- the commands they run, run here ------------------------------------------------------------


def dockerfile() -> dict[str, list[str]]:
    """ENTRYPOINT, CMD and HEALTHCHECK's command of deploy/Dockerfile (exec form)."""
    text = re.sub(r"\\\n\s*", " ", (DEPLOY / "Dockerfile").read_text())
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        for word in ("ENTRYPOINT", "CMD", "HEALTHCHECK"):
            if line.startswith(word + " "):
                found[word] = json.loads(line[line.index("[") :])
    env = dict(re.findall(r"(PROXY_\w+)=(\S+)", text))
    assert env == {"PROXY_DATA_DIR": "/data"}
    return found


def local(argv: list[str], data_dir: Path, port: int) -> list[str]:
    """``cutproxy serve ...`` as written, bound to loopback on a free port, run from here."""
    assert argv[:2] == ["cutproxy", "serve"], argv
    args = list(argv[2:])
    for flag, value in (("--host", "127.0.0.1"), ("--port", str(port))):
        index = args.index(flag)
        args[index + 1] = value
    return cutproxy("serve", *args)


def serve_as_written(argv: list[str], tmp_path: Path, env: Mapping[str, str], name: str) -> Server:
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PROXY_", "PROMETHEUS_"))}
    return start(
        local(argv, tmp_path / "data", port),
        port=port,
        log_path=tmp_path / f"{name}.log",
        env={**clean, "PROXY_DATA_DIR": str(tmp_path / "data"), **env},
        ready_path="/health/live",
    )


def check_serving(server: Server, workers: int) -> None:
    assert httpx.get(f"{server.url}/health/live", timeout=5).status_code == 200
    ready = httpx.get(f"{server.url}/health/ready", timeout=10)
    assert ready.status_code == 200, ready.text
    # Counts reach a scrape from any worker within the metrics' flush interval.
    wait_for(lambda: "cutproxy_http_requests_total" in httpx.get(f"{server.url}/metrics").text)
    server.signal(signal.SIGTERM)
    assert server.proc.wait(30) == 0, server.log()[-2000:]
    server.stopped = True
    started = [line for line in server.log().splitlines() if "Application startup complete" in line]
    assert len(started) == workers


def test_the_image_command_serves_and_its_healthcheck_passes(tmp_path: Path) -> None:
    parts = dockerfile()
    argv = parts["ENTRYPOINT"] + parts["CMD"]
    server = serve_as_written(argv, tmp_path, {}, "image")
    try:
        healthcheck = parts["HEALTHCHECK"]
        assert healthcheck[0] == "python"
        probe = [
            sys.executable,
            *(a.replace(":8080/", f":{server.port}/") for a in healthcheck[1:]),
        ]
        assert run(*probe).returncode == 0
        check_serving(server, workers=int(argv[argv.index("--workers") + 1]))
        # The same probe fails once nothing answers: a HEALTHCHECK that cannot fail is no check.
        assert run(*probe).returncode != 0
    finally:
        server.stop()


def test_the_kubernetes_container_serves_with_the_configmap(tmp_path: Path) -> None:
    deployment = yaml.safe_load((K8S / "deployment.yaml").read_text())
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    argv = dockerfile()["ENTRYPOINT"] + container["args"]
    config = yaml.safe_load((K8S / "configmap.yaml").read_text())["data"]
    # The mount points become directories here; the Secret's upstream key and Redis URL are
    # left out (no network but loopback): the embedded engine stands in.
    env = {
        **config,
        "PROXY_DATA_DIR": str(tmp_path / "data"),
        "PROXY_BLOB_DIR": str(tmp_path / "originals"),
    }
    server = serve_as_written(argv, tmp_path, env, "k8s")
    try:
        check_serving(server, workers=int(argv[argv.index("--workers") + 1]))
    finally:
        server.stop()


def test_the_systemd_unit_command_serves_with_its_env_file(tmp_path: Path) -> None:
    exec_start = re.search(r"^ExecStart=(.+)$", _unit_text(), re.M)
    assert exec_start is not None
    argv = shlex.split(exec_start[1])
    assert argv[0] == "/opt/cutproxy/bin/cutproxy"
    env = {}
    for line in (DEPLOY / "systemd" / "cutproxy.env").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key] = value
    env["PROXY_DATA_DIR"] = str(tmp_path / "data")
    env["PROXY_PUBLIC_URL"] = "http://127.0.0.1"
    server = serve_as_written(["cutproxy", *argv[1:]], tmp_path, env, "systemd")
    try:
        check_serving(server, workers=int(argv[argv.index("--workers") + 1]))
    finally:
        server.stop()


def test_the_compose_stack_runs_here_with_varnish_in_front(tmp_path: Path) -> None:
    """engine + proxy + Varnish as docker-compose.yml wires them, on loopback ports."""
    varnishd = require("varnishd")
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    # Every file default.vcl includes is mounted beside it in the varnish container.
    mounted = {v.split(":")[1] for v in services["varnish"]["volumes"]}
    included = re.findall(
        r'^include "([^"]+)";', (DEPLOY / "varnish/default.vcl").read_text(), re.M
    )
    assert {f"/etc/varnish/{name}" for name in ["default.vcl", *included]} <= mounted
    engine_port = free_port()
    engine_env = {
        key: value.replace("localhost:9000", f"localhost:{engine_port}")
        for key, value in _compose_env(services["engine"]["environment"]).items()
    }
    engine = start(
        local_engine(services["engine"]["command"], engine_port),
        port=engine_port,
        log_path=tmp_path / "engine.log",
        env={**engine_env, "PROXY_ENGINE_DATA_DIR": str(tmp_path / "engine")},
        ready_path="/_engine/health",
    )
    proxy: Server | None = None
    cache: subprocess.Popen[bytes] | None = None
    try:
        env = {
            key: value.replace("http://engine:9000", engine.url)
            for key, value in _compose_env(services["proxy"]["environment"]).items()
        }
        argv = ["cutproxy", *services["proxy"]["command"]]
        proxy = serve_as_written(argv, tmp_path, env, "compose-proxy")
        varnish_port = free_port()
        with _vcl_for("127.0.0.1", proxy.port) as vcl_path:
            cache = subprocess.Popen(
                [
                    *_varnish_args(varnishd, vcl_path),
                    "-F",
                    "-n",
                    str(tmp_path / "varnish"),
                    "-a",
                    f"127.0.0.1:{varnish_port}",
                    "-s",
                    "malloc,32m",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            front = f"http://127.0.0.1:{varnish_port}"
            first = _retry(lambda: httpx.get(f"{front}/img/demo/320x240/ffffff.png", timeout=30))
            minted = _minted(engine)
            second = httpx.get(f"{front}/img/demo/320x240/ffffff.png", timeout=10)
            health = httpx.get(f"{front}/health/live", timeout=10)
            # The one variant request the proxy saw, counted by whichever worker had it: it
            # reaches a scrape from any worker within the metrics' flush interval.
            once = 'route="/img/{image_id}/{size}/{filename}",status="302"} 1.0'
            wait_for(lambda: once in httpx.get(f"{proxy.url}/metrics", timeout=10).text, 5)
        assert first.status_code == 302 and first.headers["x-cache"] == "MISS"
        assert second.status_code == 302 and second.headers["x-cache"] == "HIT"
        assert second.headers["location"] == first.headers["location"]
        assert first.headers["location"].startswith(f"http://localhost:{engine_port}/files/")
        assert health.status_code == 200 and health.headers["x-cache"] == "MISS"
        assert _minted(engine) == minted  # the HIT never reached the proxy
    finally:
        if cache is not None:
            os.killpg(cache.pid, signal.SIGTERM)
            cache.wait(10)
        if proxy is not None:
            proxy.stop()
        engine.stop()


# --- helpers --------------------------------------------------------------------------------------


def _minted(engine: Server) -> int:
    return int(httpx.get(f"{engine.url}/_engine/stats", timeout=5).json()["tokens_minted"])


def _unit_text() -> str:
    return (DEPLOY / "systemd" / "cutproxy.service").read_text()


#: What docs/deploying.md has the operator write to deploy/.env.
DOTENV = {
    "PROXY_ADMIN_TOKEN": "compose-admin-token-0123456789",
    "ENGINE_API_KEY": "compose-engine-key-0123456789",
}


def _compose_env(environment: Mapping[str, str]) -> dict[str, str]:
    """Compose's ``${VAR:-default}`` / ``${VAR:?message}`` with deploy/.env's ``DOTENV``."""

    def value_of(m: re.Match[str]) -> str:
        return DOTENV.get(m[1]) or m[2] or ""

    def expand(value: str) -> str:
        return re.sub(r"\$\{(\w+)(?::-([^}]*)|:\?[^}]*)\}", value_of, str(value))

    return {key: expand(value) for key, value in environment.items()}


def local_engine(command: list[str], port: int) -> list[str]:
    assert command[0] == "engine"
    args = list(command[1:])
    args[args.index("--host") + 1] = "127.0.0.1"
    args[args.index("--port") + 1] = str(port)
    return cutproxy("engine", *args)


@contextlib.contextmanager
def _vcl_for(host: str, port: int) -> Iterator[Path]:
    """deploy/varnish/ in a scratch vcl_path, its backend pointed at a loopback port.

    The backend is declared in default.vcl or in a file it includes (backend.vcl).
    """
    with tempfile.TemporaryDirectory() as directory:
        scratch = Path(directory)
        for source in (DEPLOY / "varnish").glob("*.vcl"):
            text = source.read_text()
            if re.search(r"^backend \w+ \{", text, re.M):
                text = re.sub(r'\.host = "[^"]*";', f'.host = "{host}";', text)
                text = re.sub(r'\.port = "[^"]*";', f'.port = "{port}";', text)
            (scratch / source.name).write_text(text)
        yield scratch


def _varnish_args(varnishd: str, vcl_path: Path) -> list[str]:
    # -j none: no privilege separation, so the scratch files need not be world-readable.
    return [
        varnishd,
        "-j",
        "none",
        "-p",
        f"vcl_path={vcl_path}",
        "-f",
        str(vcl_path / "default.vcl"),
    ]


def _retry(call: Any, attempts: int = 50) -> Any:
    """Varnish answers 503 until its health probe has seen the proxy up."""
    for _ in range(attempts - 1):
        try:
            answer = call()
            if answer.status_code != 503:
                return answer
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    return call()
