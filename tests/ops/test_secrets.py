"""No secret in any output: the proxy runs with known secrets, every endpoint is driven
(failures included, at log level debug), and everything it printed or answered is searched."""

from __future__ import annotations

import io
import secrets
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from proxy.url.signing import Signer
from tests.servers import Server, cutproxy, free_port, start

pytestmark = pytest.mark.slow

API_KEY = "sk-live-" + secrets.token_hex(16)
ADMIN = "adm-" + secrets.token_hex(16)
SIGNING_KEY = secrets.token_hex(32)
SIGNING_SALT = secrets.token_hex(16)
SECRETS = {
    "API key": API_KEY,
    "admin token": ADMIN,
    "signing key": SIGNING_KEY,
    "signing salt": SIGNING_SALT,
}


def png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (300, 200), (30, 120, 200)).save(out, "PNG")
    return out.getvalue()


def engine_on(port: int, key: str, tmp_path: Path, name: str) -> Server:
    return start(
        cutproxy("engine", "--host", "127.0.0.1", "--port", "{port}"),
        port=port,
        log_path=tmp_path / f"{name}.log",
        env={"PROXY_ENGINE_API_KEY": key, "PROXY_ENGINE_DATA_DIR": str(tmp_path / name)},
        ready_path="/_engine/health",
    )


def test_no_secret_appears_in_any_output(tmp_path: Path) -> None:
    engine_port = free_port()
    engine = engine_on(engine_port, API_KEY, tmp_path, "engine")
    upstream = f"http://127.0.0.1:{engine_port}"
    env = {
        "PROXY_API_KEY": API_KEY,
        "PROXY_TOKEN_URL": f"{upstream}/api/v3/remove-bg/token/",
        "PROXY_PROCESS_URL": f"{upstream}/v3/remove-bg/",
        "PROXY_ALLOWED_OUTPUT_HOSTS": "127.0.0.1",
        "PROXY_ADMIN_TOKEN": ADMIN,
        "PROXY_SIGNING_KEY": SIGNING_KEY,
        "PROXY_SIGNING_SALT": SIGNING_SALT,
        "PROXY_LOG_LEVEL": "debug",
        "PROXY_DATA_DIR": str(tmp_path / "data"),
        "PROXY_RETRY_ATTEMPTS": "2",
        "PROXY_RETRY_BACKOFF": "0.05",
        "PROXY_READY_CACHE": "0",
        "PROXY_READY_TIMEOUT": "1",
    }
    proxy = start(
        cutproxy("serve", "--host", "127.0.0.1", "--port", "{port}"),
        port=free_port(),
        log_path=tmp_path / "proxy.log",
        env=env,
        ready_path="/health/live",
    )
    seen: list[str] = []  # every answer's status line, headers and body

    signer = Signer.from_hex([SIGNING_KEY], [SIGNING_SALT])

    def sign(path: str) -> str:
        return signer.sign_url(path, ttl=600, now=time.time())

    try:
        with httpx.Client(base_url=proxy.url, timeout=30) as client:

            def call(method: str, path: str, **kwargs: object) -> httpx.Response:
                answer = client.request(method, path, **kwargs)  # type: ignore[arg-type]
                seen.append(f"{answer.status_code} {answer.headers} {answer.text}")
                return answer

            admin = {"Authorization": f"Bearer {ADMIN}"}
            files = {"image": ("p.png", png(), "image/png")}
            for path in ("/health", "/health/live", "/health/ready", "/metrics"):
                assert call("GET", path).status_code == 200
            # the admin API, right and wrong
            assert call("POST", "/images", files=files).status_code == 401
            wrong = {"Authorization": "Bearer " + ADMIN[:-1] + "x"}
            assert call("POST", "/images", files=files, headers=wrong).status_code == 401
            assert call("PUT", "/images/sku", files=files, headers=admin).status_code == 201
            assert call("GET", "/images", headers=admin).status_code == 200
            assert call("GET", "/images/sku", headers=admin).status_code == 200
            assert call("PUT", "/images/bad", json={"nope": 1}, headers=admin).status_code == 400
            warm = {"sizes": ["100x100", "120x120"]}
            assert call("POST", "/images/sku/warm", json=warm, headers=admin).status_code < 300
            # variants: signed, unsigned, tampered, malformed, unknown
            signed = sign("/img/sku/200x200/ffffff.png")
            assert call("GET", signed).status_code == 302
            # 403 once signatures are enforced; served until then: either way, logged
            assert call("GET", "/img/sku/200x200/ffffff.png").status_code in (302, 403)
            assert call("GET", signed.replace("200x200", "201x200")).status_code in (302, 403)
            assert call("GET", sign("/img/sku/200/ffffff.png")).status_code == 400
            assert call("GET", sign("/img/nope/200x200/ffffff.png")).status_code == 404
            assert call("GET", "/nothing-here").status_code == 404
            assert call("DELETE", "/metrics").status_code == 405
            # the upstream failing: 5xx, then gone, then a different key
            faults = {"Authorization": f"Bearer {API_KEY}"}
            httpx.put(f"{upstream}/_engine/faults", json={"error_rate": 1}, headers=faults)
            assert call("GET", sign("/img/sku/210x200/ffffff.png")).status_code == 502
            engine.stop()
            assert call("GET", sign("/img/sku/220x200/ffffff.png")).status_code == 502
            assert call("GET", "/health/ready").status_code == 503
            engine = engine_on(engine_port, "sk-other-" + secrets.token_hex(8), tmp_path, "other")
            rejected = call("GET", sign("/img/sku/230x200/ffffff.png"))
            assert rejected.status_code == 502
            assert rejected.json()["error"] == "upstream_auth"
            assert call("DELETE", "/images/sku", headers=admin).status_code in (200, 204)
    finally:
        proxy.stop()
        engine.stop()
    time.sleep(0.1)

    output = proxy.log()
    assert '"logger": "cutproxy.access"' in output  # the log really is there to search
    assert '"level": "debug"' in output
    everything = output + "\n".join(seen)
    for name, value in SECRETS.items():
        assert value not in everything, f"the {name} appears in the proxy's output"
        assert value.lower() not in everything.lower(), f"the {name} appears (case-folded)"
