from __future__ import annotations

import base64
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import typer
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from proxy.cli.sign import register
from proxy.errors import ForbiddenError
from proxy.settings import Settings, SettingsError
from proxy.url.signing import Signer

# imgproxy's published example (docs: "Signing a URL"): key "secret", salt "hello".
DOCS_KEY, DOCS_SALT = "736563726574", "68656C6C6F"
DOCS_PATH = "/rs:fill:300:400:0/g:sm/aHR0cDovL2V4YW1w/bGUuY29tL2ltYWdl/cy9jdXJpb3NpdHku/anBn.png"
DOCS_SIGNATURE = "oKfUtW34Dvo2BGQehJFR4Nr0_rIjOtdtzJ3QFsUcXH8"
# imgproxy's own test vectors (security/signature_test.go): "test-key" / "test-salt".
TEST_KEY, TEST_SALT = b"test-key".hex(), b"test-salt".hex()
TEST_KEY2, TEST_SALT2 = b"test-key2".hex(), b"test-salt2".hex()

PATH = "/img/shoe/640x480/ffffff.jpg"
NOW = 1_700_000_000.0


def signer(size: int = 32) -> Signer:
    return Signer.from_hex([TEST_KEY], [TEST_SALT], size)


def query_of(url: str) -> dict[str, str]:
    return {name: values[-1] for name, values in parse_qs(urlsplit(url).query).items()}


def forbidden_code(path: str, query: dict[str, str], s: Signer | None = None) -> str:
    with pytest.raises(ForbiddenError) as info:
        (s or signer()).verify(path, query, NOW)
    assert info.value.status_code == 403
    return info.value.code


# --- imgproxy compatibility ---------------------------------------------------------------


def test_the_imgproxy_docs_vector() -> None:
    docs = Signer.from_hex([DOCS_KEY], [DOCS_SALT])
    assert docs.sign_path(DOCS_PATH) == DOCS_SIGNATURE
    docs.verify(DOCS_PATH, {"s": DOCS_SIGNATURE}, NOW)


def test_imgproxy_full_and_truncated_vectors() -> None:
    assert signer().sign_path("asd") == "dtLwhdnPPiu_epMl1LrzheLpvHas-4mwvY6L3Z8WwlY"
    assert signer().sign_path("qwe") == "8x1xvzxVqZ3Uz3kEC8gVvBfU0dfU1vKv0Gho8m3Ysgw"
    assert signer(8).sign_path("asd") == "dtLwhdnPPis"
    assert signer(8).sign_path("qwe") == "8x1xvzxVqZ0"


@pytest.mark.parametrize("size", [1, 8, 16, 31, 32])
def test_a_truncated_signature_is_the_digest_prefix_and_only_valid_at_its_size(size: int) -> None:
    short = signer(size).sign_path("asd")
    full = signer().sign_path("asd")
    padded = short + "=" * (-len(short) % 4)
    assert base64.urlsafe_b64decode(padded) == base64.urlsafe_b64decode(full + "=")[:size]
    signer(size).verify("asd", {"s": short}, NOW)
    if size != 32:
        # As in imgproxy: a truncated signature fails at full size, and vice versa.
        assert forbidden_code("asd", {"s": short}) == "signature_invalid"
        assert forbidden_code("asd", {"s": full}, signer(size)) == "signature_invalid"


def test_any_configured_pair_verifies_and_the_first_signs() -> None:
    rotating = Signer.from_hex([TEST_KEY2, TEST_KEY], [TEST_SALT2, TEST_SALT])
    rotating.verify("asd", {"s": "dtLwhdnPPiu_epMl1LrzheLpvHas-4mwvY6L3Z8WwlY"}, NOW)
    rotating.verify("asd", {"s": "jbDffNPt1-XBgDccsaE-XJB9lx8JIJqdeYIZKgOqZpg"}, NOW)
    assert rotating.sign_path("asd") == "jbDffNPt1-XBgDccsaE-XJB9lx8JIJqdeYIZKgOqZpg"
    # After the old pair is dropped, URLs it signed stop working.
    new_only = Signer.from_hex([TEST_KEY2], [TEST_SALT2])
    assert forbidden_code("asd", {"s": signer().sign_path("asd")}, new_only) == (
        "signature_invalid"
    )


# --- verification -------------------------------------------------------------------------


def test_an_unsigned_url_is_refused_as_missing() -> None:
    assert forbidden_code(PATH, {}) == "signature_missing"
    assert forbidden_code(PATH, {"s": ""}) == "signature_missing"


def test_a_tampered_path_or_signature_is_refused_as_wrong() -> None:
    good = signer().sign_path(PATH)
    assert forbidden_code("/img/shoe/1920x1080/ffffff.jpg", {"s": good}) == "signature_invalid"
    assert forbidden_code(PATH, {"s": good[:-1] + ("A" if good[-1] != "A" else "B")}) == (
        "signature_invalid"
    )
    assert forbidden_code(PATH, {"s": "é" + good}) == "signature_invalid"


def test_expiry_is_signed_and_enforced() -> None:
    url = signer().sign_url(PATH, ttl=60, now=NOW)
    query = query_of(url)
    assert query["exp"] == str(int(NOW) + 60)
    signer().verify(PATH, query, NOW + 59)
    with pytest.raises(ForbiddenError) as info:
        signer().verify(PATH, query, NOW + 90)
    assert info.value.code == "signature_expired"
    assert "expired 30 s ago" in info.value.message
    # Moving exp, or dropping it, breaks the signature rather than extending the URL.
    assert forbidden_code(PATH, {**query, "exp": str(int(NOW) + 9999)}) == "signature_invalid"
    assert forbidden_code(PATH, {"s": query["s"]}) == "signature_invalid"
    assert forbidden_code(PATH, {**query, "exp": "soon"}) == "signature_invalid"


def test_the_three_refusals_say_different_things_and_never_the_key() -> None:
    s = signer()
    expired = query_of(s.sign_url(PATH, ttl=1, now=NOW - 100))
    messages = set()
    for query in ({}, {"s": "nope"}, expired):
        with pytest.raises(ForbiddenError) as info:
            s.verify(PATH, query, NOW)
        messages.add(info.value.message)
        for secret in (TEST_KEY, TEST_SALT, "test-key", "test-salt"):
            assert secret not in info.value.message
    assert len(messages) == 3
    assert "test-key" not in repr(s) and TEST_KEY not in repr(s)


# --- sign_url -----------------------------------------------------------------------------


def test_sign_url_keeps_host_and_other_parameters_and_replaces_an_old_signature() -> None:
    s = signer()
    url = s.sign_url(f"https://img.example.com{PATH}?v=3&s=old&exp=1", ttl=None)
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == ("https", "img.example.com", PATH)
    assert query_of(url) == {"v": "3", "s": s.sign_path(PATH)}
    s.verify(parts.path, query_of(url), NOW)


def test_sign_url_rounds_expiry_up_and_uses_the_injected_clock() -> None:
    s = Signer.from_hex([TEST_KEY], [TEST_SALT], clock=lambda: 1000.25)
    assert query_of(s.sign_url(PATH, ttl=10))["exp"] == "1011"
    with pytest.raises(ValueError):
        s.sign_url(PATH, ttl=0)
    with pytest.raises(ValueError):
        s.sign_url("img/no-leading-slash")


# --- keys and salts -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keys", "salts", "names"),
    [
        ([], [TEST_SALT], "PROXY_SIGNING_KEY"),
        ([TEST_KEY], [], "PROXY_SIGNING_SALT"),
        (["not hex"], [TEST_SALT], "PROXY_SIGNING_KEY"),
        ([TEST_KEY], ["abc"], "PROXY_SIGNING_SALT"),
        ([TEST_KEY, TEST_KEY2], [TEST_SALT], "PROXY_SIGNING_SALT"),
    ],
)
def test_bad_keys_and_salts_name_their_variable(
    keys: list[str], salts: list[str], names: str
) -> None:
    with pytest.raises(SettingsError, match=names):
        Signer.from_hex(keys, salts)


def test_settings_validate_the_signing_pairs_without_echoing_them() -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env(
            {"PROXY_SIGNING_KEY": "deadbeef,zz-secret", "PROXY_SIGNING_SALT": "01,02"}
        )
    assert "PROXY_SIGNING_KEY" in str(info.value) and "zz-secret" not in str(info.value)
    with pytest.raises(SettingsError, match="PROXY_SIGNATURE_SIZE"):
        Settings.from_env({"PROXY_SIGNATURE_SIZE": "33"})
    settings = Settings.from_env({"PROXY_SIGNING_KEY": TEST_KEY, "PROXY_SIGNING_SALT": TEST_SALT})
    assert settings.describe()["PROXY_SIGNING_KEY"] == "***"
    assert Signer.from_settings(settings) is not None
    assert Signer.from_settings(Settings.from_env({})) is None


# --- properties ---------------------------------------------------------------------------

paths = st.text(min_size=1, max_size=80).map(lambda text: "/" + text)
expiries = st.none() | st.integers(min_value=int(NOW) + 1, max_value=2**40)


@given(path=paths, exp=expiries, size=st.integers(1, 32))
def test_whatever_is_signed_verifies(path: str, exp: int | None, size: int) -> None:
    s = signer(size)
    query = {"s": s.sign_path(path, exp)}
    if exp is not None:
        query["exp"] = str(exp)
    s.verify(path, query, NOW)


@given(path=paths, other=paths, exp=expiries)
def test_a_signature_never_verifies_another_path(path: str, other: str, exp: int | None) -> None:
    s = signer()
    query = {"s": s.sign_path(path, exp)}
    if exp is not None:
        query["exp"] = str(exp)
    if other != path:
        with pytest.raises(ForbiddenError):
            s.verify(other, query, NOW)


@given(path=paths, position=st.integers(0, 42), replacement=st.sampled_from("AQgw_-09"))
def test_any_changed_signature_character_fails(path: str, position: int, replacement: str) -> None:
    s = signer()
    good = s.sign_path(path)
    tampered = good[:position] + replacement + good[position + 1 :]
    if tampered != good:
        with pytest.raises(ForbiddenError):
            s.verify(path, {"s": tampered}, NOW)


# --- the CLI ------------------------------------------------------------------------------


def cli() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """A host app, like the cutproxy one, that the sign command registers on."""

    register(app)
    return app


def test_cli_signs_a_url_that_verifies() -> None:
    env = {
        "PROXY_SIGNING_KEY": f"{TEST_KEY},{TEST_KEY2}",
        "PROXY_SIGNING_SALT": f"{TEST_SALT},{TEST_SALT2}",
    }
    result = CliRunner().invoke(cli(), ["sign", f"https://img.example.com{PATH}?v=2"], env=env)
    assert result.exit_code == 0, result.output
    url = result.output.strip()
    assert url.startswith(f"https://img.example.com{PATH}?v=2&s=")
    signer().verify(PATH, query_of(url), NOW)


def test_cli_ttl_adds_an_expiry() -> None:
    env = {"PROXY_SIGNING_KEY": TEST_KEY, "PROXY_SIGNING_SALT": TEST_SALT}
    result = CliRunner().invoke(cli(), ["sign", PATH, "--ttl", "3600"], env=env)
    assert result.exit_code == 0, result.output
    assert "exp" in query_of(result.output.strip())


def test_cli_without_keys_says_which_variables_to_set() -> None:
    env = {"PROXY_SIGNING_KEY": "", "PROXY_SIGNING_SALT": ""}
    result = CliRunner().invoke(cli(), ["sign", PATH], env=env)
    assert result.exit_code == 2
    assert "PROXY_SIGNING_KEY" in result.output and "PROXY_SIGNING_SALT" in result.output


def test_the_worked_example_in_the_docs_is_what_the_signer_prints() -> None:
    docs = (Path(__file__).parents[2] / "docs" / "guards.md").read_text()
    example = Signer.from_hex([DOCS_KEY], [DOCS_SALT])
    url = "https://img.example.com/img/sku-123/640x640/ffffff.jpg"
    assert example.sign_url(url) in docs
    assert example.sign_url(url, ttl=86400, now=1_767_225_600) in docs  # 2026-01-01 UTC
