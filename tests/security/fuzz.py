"""A seeded HTTP fuzzer for ``cutproxy serve``: hostile requests on a raw socket, and what
the answers must never be.

Each probe is built from ``random.Random(f"{seed}:{index}")`` alone, so any one of them can be
sent again by its seed and index (``python -m tests.security.fuzz --seed S --only I``). Probes
are written byte for byte (no client library normalises the path, drops a NUL or fixes the
framing), one connection each.

What a probe's answer must not be (:func:`problems`):

- a 5xx (the engine is healthy: no upstream failure explains one);
- a redirect anywhere but this server: every ``Location`` is a path on it, or an absolute URL
  on its own origin (where the embedded engine's files live);
- an error the app answered (it carries ``X-Request-ID``) that is not JSON
  ``{"error", "message"}`` (the engine's mounted part answers ``{"error", "code"}``, the shape
  BackgroundCut uses);
- a rejection by the HTTP server itself (no ``X-Request-ID``) other than 400, 413 or 431;
- a 2xx from the admin API or fault control for a request without the admin token;
- anything carrying the admin token or the engine's key.

Run it on its own against a fresh server (``--requests 100000`` for the long run of
docs/security.md)::

    .venv/bin/python -m tests.security.fuzz --requests 100000 --seed 1
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote_to_bytes, urljoin, urlsplit

from tests.servers import Server, cutproxy, free_port, start

ADMIN = "admin-token-for-fuzzing-0123456789"
DEMO = "demo"
FUZZ_IDS = ("fuzz-a", "fuzz_b", "Z9")  # what the fuzzer may upload to and delete
SERVER_REJECTS = frozenset({400, 413, 431})  # the HTTP server's own answers to unreadable heads
SOCKET_TIMEOUT = 30.0

Headers = tuple[tuple[bytes, bytes], ...]


# --- probes -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """One request, as bytes on the wire."""

    index: int
    method: bytes
    target: bytes
    headers: Headers
    body: bytes
    framing: str  # "length" | "chunked" | "none" | "raw" (the headers say it all)

    def raw(self) -> bytes:
        head = [self.method + b" " + self.target + b" HTTP/1.1"]
        head += [name + b": " + value for name, value in self.headers]
        body = self.body
        if self.framing == "length":
            head.append(b"Content-Length: " + str(len(body)).encode())
        elif self.framing == "chunked":
            head.append(b"Transfer-Encoding: chunked")
            body = _chunked(body)
        head.append(b"Connection: close")
        return b"\r\n".join(head) + b"\r\n\r\n" + body

    def path(self) -> str:
        """The path as the server decodes it (percent-decoded; the query left off)."""
        raw = self.target.split(b"?", 1)[0]
        if b"://" in raw:  # absolute-form: the path follows the authority
            raw = b"/" + raw.split(b"://", 1)[1].partition(b"/")[2]
        return unquote_to_bytes(raw).decode("utf-8", "replace")

    def header(self, name: bytes) -> list[bytes]:
        return [value for key, value in self.headers if key.lower() == name]

    def describe(self) -> str:
        names = b", ".join(n for n, _ in self.headers).decode("latin-1")
        return (
            f"probe {self.index}: {self.method[:20]!r} {self.target[:160]!r} "
            f"[{names[:200]}] body={len(self.body)} ({self.framing})"
        )


def _chunked(body: bytes) -> bytes:
    out = b""
    for offset in range(0, len(body), 65536):
        chunk = body[offset : offset + 65536]
        out += f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    return out + b"0\r\n\r\n"


@dataclass(frozen=True)
class Secrets:
    admin: str
    engine_key: str

    def all(self) -> tuple[bytes, ...]:
        return (self.admin.encode(), self.engine_key.encode())


class Generator:
    """Probes from a seed: ``generator.probe(index)`` is the same request every time."""

    def __init__(self, seed: int, secrets: Secrets, png: bytes, files: Sequence[str] = ()) -> None:
        self.seed = seed
        self.secrets = secrets
        self.png = png
        self.files = tuple(files)  # real output files of the engine, by name

    def probe(self, index: int) -> Probe:
        rng = random.Random(f"{self.seed}:{index}")
        method = _method(rng)
        target = self._target(rng, method)
        headers = self._headers(rng, target)
        body, framing, extra = _body(rng, method, self.png)
        return Probe(index, method, target, headers + extra, body, framing)

    # --- the request line ---------------------------------------------------------------------

    def _target(self, rng: random.Random, method: bytes) -> bytes:
        kind = rng.choices(
            ("variant", "variant_hostile", "admin", "engine", "open", "junk"),
            weights=(30, 25, 15, 12, 10, 8),
        )[0]
        if kind == "variant":
            path = f"/img/{DEMO}/{rng.choice(_SIZES)}/{rng.choice(_FILES)}"
        elif kind == "variant_hostile":
            parts = [_image_id(rng), _size(rng), _filename(rng)]
            path = "/img/" + "/".join(parts)
        elif kind == "admin":
            # The demo image is read, never replaced or deleted: the variant probes need it.
            ids = (*FUZZ_IDS, "x" * 129) if method in _WRITES else (*FUZZ_IDS, DEMO)
            path = rng.choice(_ADMIN_PATHS).format(id=rng.choice(ids))
        elif kind == "engine":
            name = rng.choice(self.files) if self.files and rng.random() < 0.5 else None
            path = rng.choice(_ENGINE_PATHS).format(name=name or _file_name(rng))
        elif kind == "open":
            path = rng.choice(_OPEN_PATHS)
        else:
            path = _junk_path(rng)
        path = _mangle(rng, path)
        target = _encode(rng, path)
        if rng.random() < 0.15:
            target += b"?" + _query(rng)
        if rng.random() < 0.02:  # absolute-form and authority-form targets
            target = rng.choice((b"http://evil.example", b"https://127.0.0.1:1")) + target
        if rng.random() < 0.01:
            target = rng.choice((b"*", b"evil.example:443", b"", b"img/demo"))
        return target

    # --- headers ------------------------------------------------------------------------------

    def _headers(self, rng: random.Random, target: bytes) -> Headers:
        headers: list[tuple[bytes, bytes]] = []
        if rng.random() < 0.97:
            host = rng.choices(
                (b"127.0.0.1", b"evil.example", b"evil.example:80", b"", b"a@evil.example"),
                weights=(70, 15, 5, 5, 5),
            )[0]
            headers.append((b"Host", host))
            if rng.random() < 0.05:
                headers.append((b"Host", b"evil.example"))
        for name, chance, values in _HEADER_CHOICES:
            if rng.random() < chance:
                headers.append((name, rng.choice(values)))
        if rng.random() < 0.1:
            headers.append((b"X-Forwarded-For", _forwarded_chain(rng)))
        if rng.random() < 0.1:
            headers.append((b"Accept", _accept(rng)))
        if rng.random() < 0.04:
            many = rng.randint(2, 120)
            headers += [(b"Accept", _accept(rng)) for _ in range(many)]
        if rng.random() < 0.25:
            headers.append((b"Authorization", self._authorization(rng)))
        if rng.random() < 0.03:
            headers += _big_headers(rng)
        if rng.random() < 0.03:
            headers.append(_odd_header(rng))
        rng.shuffle(headers)
        return tuple(headers)

    def _authorization(self, rng: random.Random) -> bytes:
        admin, key = self.secrets.admin.encode(), self.secrets.engine_key.encode()
        return rng.choice(
            (
                b"Bearer " + admin,
                b"Bearer " + admin,
                b"bearer  " + admin + b"  ",
                b"Bearer " + key,
                b"Bearer " + admin[:-1],
                b"Bearer " + admin + b"x",
                b"Basic " + admin,
                b"Bearer",
                b"Bearer ",
                b"Bearer \xff\xfe\x00"[:-1],
                b"Bearer " + b"A" * rng.choice((17, 4096, 60_000)),
                b"Token " + key,
                "Bearer jeton-\u00e9t\u00e9".encode(),
                b'Digest username="admin", response="' + b"0" * 32 + b'"',
                b",,,;;;",
            )
        )


def _method(rng: random.Random) -> bytes:
    # fmt: off
    return rng.choices(
        (
            b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"TRACE",
            b"CONNECT", b"PROPFIND", b"BREW", b"get", b"G\xc9T", b"X" * 300,
        ),
        weights=(50, 12, 8, 8, 5, 3, 3, 2, 1, 1, 1, 2, 1, 1),
    )[0]
    # fmt: on


_WRITES = frozenset({b"PUT", b"POST", b"DELETE", b"PATCH"})
_SIZES = ("320x240", "400x300", "160x160", "640x480", "200x200", "320x240@2x")
_FILES = ("ffffff.jpg", "FFF.jpg", "ff5733.png", "transparent.webp", "000000.jpeg", "abc.png")
# fmt: off
_ADMIN_PATHS = (
    "/images", "/images/", "/images/{id}", "/images/{id}/", "/images/{id}/warm",
    "/images/{id}/variants", "/admin/costs", "/admin", "/admin/",
)
_ENGINE_PATHS = (
    "/_engine", "/_engine/", "/_engine/stats", "/_engine/stats/", "/_engine/health",
    "/_engine/faults", "/_engine/faults/", "/_engine/files/{name}", "/_engine/files/{name}",
    "/_engine/files/{name}", "/_engine/files/", "/_engine/api/v3/remove-bg/token/",
    "/_engine/v3/remove-bg/", "/_engine/_engine/stats", "/_engine/_engine/faults",
    "/_engine/api-key", "/_engine/files/../api-key", "/api/v3/remove-bg/token/", "/v3/remove-bg/",
)
_OPEN_PATHS = (
    "/", "/health", "/health/", "/health/live", "/health/ready", "/metrics", "/metrics/",
    "/srcset/demo", "/srcset/demo/", "/srcset/demo?widths=1,2,3", "/srcset/../images",
    "/demo/images", "/static/demo.js", "/static/../settings.py", "/static/..%2f..%2fsettings.py",
    "/static/", "/static", "/favicon.ico", "/img", "/img/", "/img/demo", "/img/demo/320x240",
    "/img/demo/320x240/", "/img/demo/320x240/ffffff.jpg/extra",
)
_HOSTILE_IDS = (
    "demo", "DEMO", "de mo", "demo%00", "..", ".", "%2e%2e", "demo\\..", "ünïcödé", "😀",
    "\u202edemo", "a" * 128, "a" * 129, "-", "_", "demo;rm", "demo'\"<script>", "%", "%zz", "%25",
)
# fmt: on


def _image_id(rng: random.Random) -> str:
    if rng.random() < 0.1:
        return "".join(rng.choice("abcXYZ019_-.~!$&'()*+,;=:@") for _ in range(rng.randint(1, 40)))
    if rng.random() < 0.05:
        return "x" * rng.choice((1000, 8000, 20_000))
    return rng.choice(_HOSTILE_IDS)


def _size(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.3:
        # fmt: off
        return rng.choice(
            (
                "0x0", "1x1", "4000x4000", "4001x1", "3464x3464", "3465x3465",
                "999999999x999999999", "9999999999x1", "18446744073709551617x1", "-1x-1",
                "1e3x1e3", "0x10", "00320x0240", "320X240", "320x240@0x", "320x240@1x",
                "320x240@4x", "320x240@5x", "320x240@9x", "320x240@10x", "320x240@-1x",
                "320x240@2.5x", "320x240@", "1000x1000@4x", "320*240", "x", "320x", "x240",
                "٣٢٠x٢٤٠", "３２０x２４０", "𝟑𝟐𝟎x𝟐𝟒𝟎", "320\u00d7240", "320x240\x00", " 320x240",
                "320x240 ",
            )
        )
        # fmt: on
    if r < 0.6:
        return f"{rng.randint(0, 5000)}x{rng.randint(0, 5000)}"
    if r < 0.8:
        return f"{rng.choice((160, 320, 400))}x{rng.choice((160, 240, 300))}@{rng.randint(0, 12)}x"
    return "9" * rng.randint(1, 400) + "x" + "9" * rng.randint(1, 40)


def _filename(rng: random.Random) -> str:
    # fmt: off
    bg = rng.choice(
        (
            "ffffff", "FFFFFF", "fff", "ff", "fffffff", "gggggg", "transparent", "TRANSPARENT",
            "Transparent", "", "#ffffff", "%23fff", "ffffff.ffffff", "00000\x00", "ℯℯℯ",
            "f" * 5000,
        )
    )
    ext = rng.choice(
        (
            "jpg", "JPG", "jpeg", "JPEG", "png", "webp", "gif", "avif", "svg", "", "jpg.exe",
            "png%00.jpg", "jp\u0261", "j" * 3000,
        )
    )
    # fmt: on
    return rng.choice((f"{bg}.{ext}", f"{bg}.{ext}", bg, f".{ext}", f"{bg}..{ext}", f"{bg}."))


def _file_name(rng: random.Random) -> str:
    # fmt: off
    return rng.choice(
        (
            "0123456789abcdef0123456789abcdef.png", "..", "..%2f..%2fapi-key", "%2e%2e%2fapi-key",
            "api-key", "secret", "cache.db", "x" * 5000, "a.png%00.txt", "\u2024\u2024", "files",
        )
    )
    # fmt: on


def _junk_path(rng: random.Random) -> str:
    # fmt: off
    pieces = [
        "img", "images", "_engine", "admin", "srcset", "metrics", "..", ".", "", "%2e", "%2f",
        "%5c", "\\", "evil.example", "//evil.example", "%00", "é", "\u3000",
        "a" * rng.choice((1, 300, 4000)),
    ]
    # fmt: on
    return "/" + "/".join(rng.choice(pieces) for _ in range(rng.randint(0, 8)))


def _mangle(rng: random.Random, path: str) -> str:
    """Dot segments, doubled and trailing slashes, backslashes: the spellings routers differ on."""
    r = rng.random()
    if r < 0.05:
        path = path.rstrip("/") + "/"
    elif r < 0.1:
        path = "/" + path
    elif r < 0.13:
        path = "//evil.example" + path
    elif r < 0.16:
        path = "/" + path[1:].replace("/", "\\", rng.randint(1, 3))
    elif r < 0.2:
        path = "/img/demo/../.." + path
    elif r < 0.23:
        path = path.replace("/", "//")
    elif r < 0.25:
        path = path + "/" + "." * rng.randint(1, 3)
    elif r < 0.27:
        path = "/\\evil.example" + path
    elif r < 0.29:
        path = path.replace("/", "/./")
    return path


def _encode(rng: random.Random, path: str) -> bytes:
    """The path as bytes: as it is (UTF-8, raw), fully percent-encoded, or partly."""
    r = rng.random()
    lead, raw = b"/", path.encode("utf-8", "surrogatepass")[1:]  # a target starts with "/"
    if r < 0.6:
        return lead + b"".join(bytes([c]) if 0x21 <= c < 0x7F else b"%%%02X" % c for c in raw)
    if r < 0.75:  # every byte escaped, slashes too
        escaped = (b"%%%02x" % c if c != 0x2F or rng.random() < 0.2 else b"/" for c in raw)
        return lead + b"".join(escaped)
    if r < 0.8:  # raw bytes: UTF-8, spaces, controls where the parser lets them through
        return lead + raw
    if r < 0.95:  # escapes of escapes
        return lead + raw.replace(b"%", b"%25").replace(b"/", rng.choice((b"%2F", b"%252F")))
    tail = rng.choice((b"%", b"%g0", b"%0", b"%00", b"%ff%fe", b"#frag", b"\t", b" x"))
    return lead + raw + tail


def _query(rng: random.Random) -> bytes:
    # fmt: off
    return rng.choice(
        (
            b"s=AAAA&exp=1",
            b"s=" + b"A" * 5000,
            b"exp=99999999999999999999999999", b"exp=-1&s=", b"exp=nan", b"after=&limit=-1",
            b"limit=999999999999", b"limit=1e309", b"limit=NaN", b"after=%00&limit=2",
            b"widths=" + b",".join(str(rng.randint(-5, 99999)).encode() for _ in range(40)),
            b"ratio=0:0&bg=zz",
            b"a=" + b"%" * 200,
            b"&&&==&",
            b"\xff\xfe",
        )
    )
    # fmt: on


def _forwarded_chain(rng: random.Random) -> bytes:
    # fmt: off
    hops = [
        rng.choice(
            (
                "203.0.113.7", "127.0.0.1", "::1", "[2001:db8::1]:443", "unknown",
                "999.999.999.999", "", " ", "10.0.0.1, 10.0.0.2", "a" * 300, "\u00e9",
            )
        )
        for _ in range(rng.choice((1, 2, 5, 200)))
    ]
    # fmt: on
    return ", ".join(hops).encode("utf-8")


def _accept(rng: random.Random) -> bytes:
    r = rng.random()
    if r < 0.5:
        # fmt: off
        return rng.choice(
            (
                b"application/json", b"application/json;q=0", b"application/json;q=nan",
                b"application/json;q=1e999", b"*/*", b"image/avif,image/webp,*/*;q=0.8",
                b"text/html", b"application/*", b"application/json, text/html;q=0.1", b";;;;,,,,",
                b"application/json;q=0.5;q=1", b"\xff\xfe",
            )
        )
        # fmt: on
    items = rng.randint(50, 3000)
    return b", ".join(b"type%d/sub%d;q=0.%d" % (i, i, i % 10) for i in range(items))


def _big_headers(rng: random.Random) -> list[tuple[bytes, bytes]]:
    kind = rng.choice(("one", "many", "huge"))
    if kind == "one":
        return [(b"X-Big", b"b" * rng.choice((8_000, 70_000, 300_000)))]
    if kind == "many":
        return [(b"X-Many-%d" % i, b"v") for i in range(rng.choice((100, 1000, 5000)))]
    return [(b"Cookie", b"c=" + b"x" * 1_000_000)]


def _odd_header(rng: random.Random) -> tuple[bytes, bytes]:
    return rng.choice(
        (
            (b"X-Null", b"a\x00b"),
            (b"X Space", b"v"),
            (b"X-Colon:", b"v"),
            (b"", b"empty-name"),
            (b"X-Nonlatin", "\u2603".encode()),
            (b"X-Obs-Fold", b"a\r\n folded"),
            (b"X-CR", b"a\rb"),
            (b"\xff", b"v"),
        )
    )


# fmt: off
_RANGES = (
    b"bytes=0-1", b"bytes=-1", b"bytes=5-1", b"bytes=0-", b"bytes=99999999-", b"bytes=0-0,1-1,2-2",
    b"bytes=" + b"0-1," * 150,
    b"bytes=x",
    b"items=0-1",
    b"bytes=-0",
)
# fmt: on
_HEADER_CHOICES: Sequence[tuple[bytes, float, Sequence[bytes]]] = (
    (b"X-Forwarded-Host", 0.08, (b"evil.example", b"evil.example:443, other.example", b"")),
    (b"X-Forwarded-Proto", 0.05, (b"https", b"javascript", b"http, https")),
    (b"X-Forwarded-Prefix", 0.03, (b"//evil.example", b"/x")),
    (b"Forwarded", 0.05, (b"for=203.0.113.9;host=evil.example;proto=https", b'for="[::1]"')),
    (b"X-Real-IP", 0.03, (b"203.0.113.5", b"not-an-ip")),
    (b"X-Request-ID", 0.05, (b"abc", b"a" * 500, b"\xff\xfe", b"id with spaces", b"")),
    (b"X-Original-URL", 0.02, (b"/admin/costs", b"//evil.example/")),
    (b"X-Rewrite-URL", 0.02, (b"/images",)),
    (b"X-HTTP-Method-Override", 0.03, (b"DELETE", b"PUT")),
    (b"Range", 0.06, _RANGES),
    (b"If-Range", 0.02, (b'"x"', b'W/"x"', b"Thu, 01 Jan 1970 00:00:00 GMT")),
    (b"If-None-Match", 0.03, (b"*", b'"x"', b"W/")),
    (b"If-Modified-Since", 0.02, (b"Thu, 01 Jan 1970 00:00:00 GMT", b"garbage")),
    (b"Content-Type", 0.15, (b"application/json", b"image/png", b"multipart/form-data")),
    (
        b"Content-Type",
        0.03,
        (b"multipart/form-data; boundary=", b"multipart/form-data; boundary=x" * 50),
    ),
    (b"Expect", 0.02, (b"100-continue", b"nonsense")),
    (b"Upgrade", 0.02, (b"websocket", b"h2c")),
    (b"Cookie", 0.03, (b"session=1", b"a=" + b"b" * 4000)),
    (b"Origin", 0.03, (b"https://evil.example", b"null")),
    (b"Referer", 0.02, (b"https://evil.example/", b"javascript:alert(1)")),
    (b"User-Agent", 0.1, (b"curl/8", b"\xff" * 10, b"u" * 10_000)),
)


def _body(rng: random.Random, method: bytes, png: bytes) -> tuple[bytes, str, Headers]:
    """A body and how its length is told (the framing headers, when odd, are returned)."""
    if method in (b"GET", b"HEAD") and rng.random() < 0.9:
        return b"", "none", ()
    kind = rng.choices(
        ("empty", "json", "bad_json", "png", "garbage", "multipart", "large", "huge"),
        weights=(20, 20, 10, 3, 20, 8, 5, 1),
    )[0]
    if kind == "empty":
        body = b""
    elif kind == "json":
        # fmt: off
        body = rng.choice(
            (
                b'{"sizes": ["320x320"], "bg": "zzz", "ext": "gif"}',
                b'{"sizes": ' + json.dumps(["1x1"] * rng.randint(0, 100)).encode() + b"}",
                b'{"sizes": [], "bg": "ffffff"}', b'{"unique_filename": "", "width": -1}',
                b'{"unique_filename": "u", "width": 1e999}',
                b'{"unique_filename": "u", "width": true}', b'{"mode": "sideways"}',
                b'{"error_rate": NaN}', b'{"error_rate": "nan"}', b'{"token_latency": -1}',
                b'{"mode": "down", "nonsense": 1}', b"[]", b"null", b'"string"',
                b'{"a": ' * 2000 + b"1" + b"}" * 2000,
            )
        )
        # fmt: on
    elif kind == "bad_json":
        body = rng.choice((b"{", b"{'a': 1}", b"\xff\xfe{}", b'{"a": 1}garbage', b"1" * 70_000))
    elif kind == "png":
        body = png if rng.random() < 0.5 else png[: rng.randint(8, len(png) - 1)]
    elif kind == "garbage":
        body = rng.randbytes(rng.choice((1, 100, 5000, 65_537)))
    elif kind == "multipart":
        boundary = b"fuzz" + str(rng.randint(0, 9)).encode()
        part = rng.choice((png, b"not an image", b"\x89PNG\r\n\x1a\n" + b"\x00" * 100))
        body = (
            b"--" + boundary + b"\r\n"
            b'Content-Disposition: form-data; name="image"; filename="x.png"\r\n'
            b"Content-Type: image/png\r\n\r\n" + part + b"\r\n--" + boundary + b"--\r\n"
        )
        if rng.random() < 0.5:
            body = body[: rng.randint(0, len(body))]
        extra = ((b"Content-Type", b"multipart/form-data; boundary=" + boundary),)
        return body, rng.choice(("length", "chunked")), extra
    elif kind == "large":
        body = b"\x00" * rng.choice((1 << 20, 3 << 20))
    else:
        body = b"\x00" * (13 << 20)  # over PROXY_MAX_UPLOAD_MB
    r = rng.random()
    if r < 0.7:
        return body, "length", ()
    if r < 0.9:
        return body, "chunked", ()
    # Framing the servers must refuse or read one way only.
    length = str(len(body)).encode()
    odd: list[Headers] = [
        ((b"Content-Length", length), (b"Transfer-Encoding", b"chunked")),
        ((b"Content-Length", length), (b"Content-Length", length + b"0")),
        ((b"Content-Length", b"-" + length),),
        ((b"Content-Length", b"+" + length),),
        ((b"Content-Length", length + b", " + length),),
        ((b"Content-Length", b"0x10"),),
        ((b"Content-Length", b"99999999999999999999999"),),
        ((b"Transfer-Encoding", b"gzip"),),
        ((b"Transfer-Encoding", b"chunked, gzip"),),
        ((b"Transfer-Encoding", b"identity"),),
        ((b"Transfer-Encoding", b" chunked"),),
        ((b"Transfer-Encoding", b"chunked"), (b"Transfer-Encoding", b"chunked")),
    ]
    return body[:4096], "raw", rng.choice(odd)


# --- the wire ---------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int | None  # None: the connection closed (or reset) before a status line
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    raw: bytes = b""
    error: str | None = None

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


def exchange(port: int, probe: Probe, timeout: float = SOCKET_TIMEOUT) -> Reply:
    """Send ``probe`` on a fresh connection and read one answer."""
    data = b""
    sent_error = None
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(probe.raw())
        except OSError as exc:  # the server answered and closed before taking the whole body
            sent_error = type(exc).__name__
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
                if _complete(data, probe.method):
                    break
        except TimeoutError:
            return Reply(None, raw=data, error="timeout")
        except OSError as exc:
            if not data:
                return Reply(None, error=sent_error or type(exc).__name__)
    return parse_reply(data, probe.method, sent_error)


def _complete(data: bytes, method: bytes) -> bool:
    reply = parse_reply(data, method, None)
    if reply.status is None:
        return False
    if method == b"HEAD" or reply.status in (204, 304):
        return True
    length = reply.header("content-length")
    if length is not None and length.isdigit():
        return len(reply.body) >= int(length)
    return False  # chunked or until close: read on


def parse_reply(data: bytes, method: bytes, error: str | None) -> Reply:
    while data.startswith(b"HTTP/1.1 1") and b"\r\n\r\n" in data:  # 100 Continue: interim
        data = data.partition(b"\r\n\r\n")[2]
    head, sep, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    if not sep or not lines[0].startswith(b"HTTP/1.1 "):
        return Reply(None, raw=data, error=error or "no status line")
    status = int(lines[0].split(b" ")[1])
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers.append((name.strip().lower().decode("latin-1"), value.strip().decode("latin-1")))
    reply = Reply(status, headers, body, data, error)
    if method != b"HEAD" and (reply.header("transfer-encoding") or "").lower() == "chunked":
        reply.body = _dechunk(body)
    return reply


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2 :]
    return out


# --- what must not happen ---------------------------------------------------------------------


ADMIN_PREFIXES = ("/images", "/admin", "/_engine/faults", "/_engine/_engine/faults")


def problems(probe: Probe, reply: Reply, origin: str, secrets: Secrets) -> list[str]:
    """Everything wrong with ``reply`` as the answer to ``probe`` (empty: all is well)."""
    found = []
    for secret in secrets.all():
        if secret in reply.raw:
            found.append("a secret is in the answer")
    if reply.status is None:
        # A server may drop a connection it cannot read; it must not hang on one.
        if reply.error == "timeout":
            found.append("no answer within the timeout")
        return found
    status = reply.status
    if status >= 500:
        found.append(f"status {status}")
    if 300 <= status < 400 and status != 304:  # 304 Not Modified is no redirect
        found += _redirect_problems(reply.header("location"), origin)
    app_answered = reply.header("x-request-id") is not None
    if status >= 400 and not app_answered and status not in SERVER_REJECTS:
        found.append(f"the HTTP server answered {status} itself")
    if status >= 400 and app_answered and probe.method != b"HEAD":
        found += _error_body_problems(reply, engine=probe.path().startswith("/_engine"))
    if 200 <= status < 300 and _is_admin_path(probe.path()) and not _has_admin(probe, secrets):
        found.append("the admin API answered 2xx without the admin token")
    return found


def _redirect_problems(location: str | None, origin: str) -> list[str]:
    if location is None:
        return ["a redirect without a Location"]
    if any(c in location for c in "\\\t\r\n ") or any(ord(c) < 0x20 for c in location):
        return [f"Location {location[:120]!r} has a backslash, space or control character"]
    if location.startswith("//"):
        return [f"Location {location[:120]!r} is scheme-relative"]
    target = urlsplit(urljoin(origin + "/", location))
    own = urlsplit(origin)
    if (target.scheme, target.netloc) != (own.scheme, own.netloc):
        return [f"Location {location[:120]!r} leaves {origin}"]
    return []


def _error_body_problems(reply: Reply, *, engine: bool) -> list[str]:
    if not (reply.header("content-type") or "").startswith("application/json"):
        return [f"error {reply.status} is {reply.header('content-type')!r}, not JSON"]
    try:
        body = json.loads(reply.body)
    except ValueError:
        return [f"error {reply.status} has a body that is not JSON: {reply.body[:80]!r}"]
    second = ("message", "code") if engine else ("message",)
    if (
        not isinstance(body, dict)
        or not isinstance(body.get("error"), str)
        or not any(isinstance(body.get(k), str) for k in second)
    ):
        return [f"error {reply.status} body is not {{error, message}}: {reply.body[:120]!r}"]
    return []


def _is_admin_path(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in ADMIN_PREFIXES)


def _has_admin(probe: Probe, secrets: Secrets) -> bool:
    return any(secrets.admin.encode() in value for value in probe.header(b"authorization"))


# --- the server and its memory ----------------------------------------------------------------


def worker_pids(server: Server) -> list[int]:
    """uvicorn's worker processes: the children of ``cutproxy serve`` that serve requests."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == server.proc.pid and b"spawn_main" in cmdline:
            pids.append(int(entry.name))
    return sorted(pids)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def output_files(server: Server) -> list[str]:
    """Render a few demo variants; the names of the engine's files their redirects point at."""
    names = []
    for size in ("320x240", "160x160"):
        answer = exchange(
            server.port,
            Probe(
                -1,
                b"GET",
                f"/img/{DEMO}/{size}/ffffff.png".encode(),
                ((b"Host", b"127.0.0.1"),),
                b"",
                "none",
            ),
        )
        location = answer.header("location") or ""
        assert answer.status == 302 and "/_engine/files/" in location, answer.raw[:300]
        names.append(location.rsplit("/", 1)[1])
    return names


def engine_key(data_dir: Path) -> str:
    return (data_dir / "engine" / "api-key").read_text().strip()


@contextmanager
def serving(
    tmp: Path, workers: int = 2, extra_env: dict[str, str] | None = None
) -> Iterator[tuple[Server, Secrets]]:
    """``cutproxy serve --demo`` with the embedded engine and an admin token."""
    data = tmp / "data"
    server = start(
        cutproxy("serve", "--host", "127.0.0.1", "--port", "{port}", "--workers", str(workers)),
        port=free_port(),
        log_path=tmp / "serve.log",
        env={
            "PROXY_DATA_DIR": str(data),
            "PROXY_API_KEY": "",
            "PROXY_ADMIN_TOKEN": ADMIN,
            "PROXY_DEMO": "true",
            **(extra_env or {}),
        },
        ready_path="/health/ready",
        timeout=60,
    )
    try:
        yield server, Secrets(ADMIN, engine_key(data))
    finally:
        server.stop()


# --- a run ------------------------------------------------------------------------------------


@dataclass
class Failure:
    probe: str
    status: int | None
    problems: list[str]
    answer: bytes


@dataclass
class Result:
    requests: int = 0
    statuses: Counter[int | None] = field(default_factory=Counter)
    failures: list[Failure] = field(default_factory=list)
    failed: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        statuses = ", ".join(f"{s}: {n}" for s, n in sorted(self.statuses.items(), key=_order))
        return f"{self.requests} requests in {self.seconds:.1f}s; statuses {statuses}"


def _order(item: tuple[int | None, int]) -> int:
    return -1 if item[0] is None else item[0]


def run(
    generator: Generator,
    port: int,
    indexes: Sequence[int],
    *,
    threads: int = 4,
    keep: int = 20,
    on_progress: Callable[[int], None] | None = None,
) -> Result:
    """Send the probes ``indexes`` from ``threads`` connections at a time; check each answer."""
    origin = f"http://127.0.0.1:{port}"
    result = Result()
    lock = threading.Lock()
    todo = iter(indexes)
    started = time.perf_counter()

    def work() -> None:
        while True:
            with lock:
                index = next(todo, None)
            if index is None:
                return
            probe = generator.probe(index)
            reply = exchange(port, probe)
            found = problems(probe, reply, origin, generator.secrets)
            with lock:
                result.requests += 1
                result.statuses[reply.status] += 1
                if found:
                    result.failed += 1
                    if len(result.failures) < keep:
                        failure = Failure(probe.describe(), reply.status, found, reply.raw[:600])
                        result.failures.append(failure)
                done = result.requests
            if on_progress is not None and done % 1000 == 0:
                on_progress(done)

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    result.seconds = time.perf_counter() - started
    return result


def demo_png() -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(out, "PNG")
    return out.getvalue()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--only", type=int, nargs="*", help="send just these probe indexes")
    args = parser.parse_args(argv)
    indexes = args.only or range(args.requests)
    with tempfile.TemporaryDirectory(prefix="cutproxy-fuzz-") as tmp:
        with serving(Path(tmp)) as (server, secrets):
            return _run_and_report(server, secrets, args.seed, indexes, args.threads)


def _run_and_report(
    server: Server, secrets: Secrets, seed: int, indexes: Sequence[int], threads: int
) -> int:
    generator = Generator(seed, secrets, demo_png(), output_files(server))
    pids = worker_pids(server)
    before = {pid: rss_kib(pid) for pid in pids}
    peak = dict(before)

    def progress(done: int) -> None:
        for pid in pids:
            peak[pid] = max(peak[pid], rss_kib(pid))
        if done % 10_000 == 0:
            print(f"{done} requests; RSS KiB {peak}", file=sys.stderr, flush=True)

    result = run(generator, server.port, indexes, threads=threads, on_progress=progress)
    after = {pid: rss_kib(pid) for pid in pids}
    print(result.summary())
    for pid in pids:
        print(
            f"worker {pid}: RSS {before[pid]} KiB before, {after[pid]} after, "
            f"peak {peak[pid]} (+{(peak[pid] - before[pid]) / 1024:.1f} MiB)"
        )
    for failure in result.failures:
        print(failure)
    print(f"{result.failed} probes failed")
    return 1 if result.failed else 0


if __name__ == "__main__":
    sys.exit(main())
