"""Signed URLs over HTTP: unsigned, tampered, expired and rotated-key URLs.

The HMAC routine itself is proved against imgproxy's published vectors in
tests/unit/test_signing.py; here the proxy's answers are checked, and the signature is also
recomputed independently (hmac + base64 by hand) so the wire format is pinned twice.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from urllib.parse import parse_qs, urlsplit

from typer.testing import CliRunner

from tests.guards.conftest import KEY, NEW_KEY, NEW_SALT, SALT, RigFactory

PATH = "/img/shoe/640x480/ffffff.jpg"


def by_hand(key_hex: str, salt_hex: str, path: str, exp: int | None = None) -> str:
    message = bytes.fromhex(salt_hex) + path.encode()
    if exp is not None:
        message += f"?exp={exp}".encode()
    digest = hmac.new(bytes.fromhex(key_hex), message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


async def test_signed_urls_are_served_and_everything_else_is_403(make_rig: RigFactory) -> None:
    rig = await make_rig(signing_key=(KEY,), signing_salt=(SALT,))
    await rig.upload("shoe")
    before = await rig.stats()

    signed = f"{PATH}?s={by_hand(KEY, SALT, PATH)}"
    assert rig.signer().sign_url(PATH) == signed
    ok = await rig.get(signed)
    assert ok.status_code == 302 and ok.headers["location"]

    unsigned = await rig.get(PATH)
    assert unsigned.status_code == 403
    assert unsigned.json()["error"] == "signature_missing"
    assert "signed" in unsigned.json()["message"]

    # The signature of one size does not open another, nor another background.
    tampered = signed.replace("640x480", "1280x960")
    other_bg = signed.replace("ffffff", "000000")
    for url in (
        tampered,
        other_bg,
        f"{PATH}?s=AAAA",
        f"{PATH}?s={by_hand(NEW_KEY, NEW_SALT, PATH)}",
    ):
        answer = await rig.get(url)
        assert answer.status_code == 403, url
        assert answer.json()["error"] == "signature_invalid"

    after = await rig.stats()
    assert after["tokens_minted"] - before["tokens_minted"] == 1, "refusals mint nothing"
    for answer in (unsigned, await rig.get(tampered)):
        assert KEY not in answer.text and SALT not in answer.text


async def test_unsigned_requests_are_refused_before_anything_else(make_rig: RigFactory) -> None:
    rig = await make_rig(signing_key=(KEY,), signing_salt=(SALT,))
    # Unknown image, bad size: still "unsigned" first, so nothing is learnt without a key.
    for path in ("/img/nobody/640x480/ffffff.jpg", "/img/shoe/0x0/zzz.gif"):
        answer = await rig.get(path)
        assert answer.status_code == 403 and answer.json()["error"] == "signature_missing"


async def test_expiring_urls_work_until_exp_then_say_expired(make_rig: RigFactory) -> None:
    rig = await make_rig(signing_key=(KEY,), signing_salt=(SALT,))
    await rig.upload("shoe")
    url = rig.signer().sign_url(PATH, ttl=3600, now=rig.clock())
    exp = int(parse_qs(urlsplit(url).query)["exp"][0])
    assert parse_qs(urlsplit(url).query)["s"] == [by_hand(KEY, SALT, PATH, exp)]

    assert (await rig.get(url)).status_code == 302
    rig.clock.advance(3599)
    assert (await rig.get(url)).status_code == 302, "a cached answer, still inside exp"
    moved = url.replace(f"exp={exp}", f"exp={exp + 86400}")
    assert (await rig.get(moved)).json()["error"] == "signature_invalid"
    rig.clock.advance(2)
    expired = await rig.get(url)
    assert expired.status_code == 403
    assert expired.json()["error"] == "signature_expired"
    assert "expired" in expired.json()["message"]


async def test_rotation_old_urls_keep_working_new_ones_use_the_new_key(
    make_rig: RigFactory,
) -> None:
    old = await make_rig(signing_key=(KEY,), signing_salt=(SALT,))
    await old.upload("shoe")
    old_url = old.signer().sign_url(PATH)

    rotated = await make_rig(
        signing_key=(NEW_KEY, KEY), signing_salt=(NEW_SALT, SALT), data_dir=old.settings.data_dir
    )
    new_url = rotated.signer().sign_url(PATH)
    assert new_url != old_url
    assert parse_qs(urlsplit(new_url).query)["s"] == [by_hand(NEW_KEY, NEW_SALT, PATH)]
    before = await rotated.stats()
    answers = [await rotated.get(url) for url in (old_url, new_url)]
    assert [a.status_code for a in answers] == [302, 302]
    # The signature is not part of the cache key: both spellings are one variant, one mint.
    assert answers[0].headers["location"] == answers[1].headers["location"]
    assert (await rotated.stats())["tokens_minted"] - before["tokens_minted"] == 1

    dropped = await make_rig(
        signing_key=(NEW_KEY,), signing_salt=(NEW_SALT,), data_dir=old.settings.data_dir
    )
    assert (await dropped.get(old_url)).json()["error"] == "signature_invalid"
    assert (await dropped.get(new_url)).status_code == 302


async def test_a_signed_non_canonical_url_redirects_to_a_signed_canonical_one(
    make_rig: RigFactory,
) -> None:
    rig = await make_rig(signing_key=(KEY,), signing_salt=(SALT,))
    await rig.upload("shoe")
    asked = "/img/shoe/320x240@2x/FFF.jpeg"
    url = rig.signer().sign_url(f"{asked}?v=3", ttl=600, now=rig.clock())
    exp = parse_qs(urlsplit(url).query)["exp"][0]

    answer = await rig.get(url)

    assert answer.status_code == 308
    target = urlsplit(answer.headers["location"])
    assert target.path == PATH
    query = parse_qs(target.query)
    assert query["exp"] == [exp] and query["v"] == ["3"]
    assert query["s"] == [by_hand(KEY, SALT, PATH, int(exp))]
    assert (await rig.get(answer.headers["location"])).status_code == 302
    # Unsigned, the same spelling is refused, not redirected.
    assert (await rig.get(asked)).status_code == 403


async def test_truncated_signatures(make_rig: RigFactory) -> None:
    rig = await make_rig(signing_key=(KEY,), signing_salt=(SALT,), signature_size=8)
    await rig.upload("shoe")
    url = rig.signer().sign_url(PATH)
    assert len(parse_qs(urlsplit(url).query)["s"][0]) == 11  # 8 bytes, base64url, no padding
    assert (await rig.get(url)).status_code == 302
    full = f"{PATH}?s={by_hand(KEY, SALT, PATH)}"
    assert (await rig.get(full)).json()["error"] == "signature_invalid"


def test_cutproxy_sign_prints_a_url_the_proxy_accepts() -> None:
    from proxy.cli import main as cli

    cli._register_plugins()
    env = {"PROXY_SIGNING_KEY": KEY, "PROXY_SIGNING_SALT": SALT}
    result = CliRunner().invoke(cli.app, ["sign", f"https://img.example.com{PATH}"], env=env)
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"https://img.example.com{PATH}?s={by_hand(KEY, SALT, PATH)}"
