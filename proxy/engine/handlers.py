"""The engine's HTTP endpoints: the v3 token flow, output files, stats and fault control.

Each call goes through a fixed order: faults → rate limit → credentials → parse → check the
source → charge or spend → work → answer. Blocking work (diskcache, files, Pillow) goes to
worker threads; renders additionally queue on their own limiter so they can never take the
threads that answer everything else.
"""

from __future__ import annotations

import functools
import hmac
import json
import logging
import os
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, TypeVar

import anyio
import anyio.to_thread
from starlette.background import BackgroundTask
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.types import Message, Receive

from proxy.engine.cutout import Cutout
from proxy.engine.errors import (
    EngineError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    PaymentRequiredError,
    RateLimitedError,
    UnauthorizedError,
)
from proxy.engine.faults import Faults
from proxy.engine.ratelimit import ApiRateLimit
from proxy.engine.render import decode, render
from proxy.engine.settings import EngineSettings
from proxy.engine.store import Store, StoredFile, Upload
from proxy.engine.tokens import TokenSigner
from proxy.engine.variants import OutputVariant, parse_output_variants
from proxy.files import WholeFile
from proxy.upstream.contract import estimate_credits

log = logging.getLogger("cutproxy.engine")

MAX_JSON_BYTES = 1024 * 1024
#: Room for the multipart framing and the token around the image itself.
FORM_OVERHEAD = 64 * 1024
MINT_FIELDS = frozenset({"output_variants", "unique_filename"})

T = TypeVar("T")


async def off_loop(
    fn: Callable[..., T], *args: Any, limiter: anyio.CapacityLimiter | None = None
) -> T:
    """Run blocking ``fn(*args)`` in a worker thread."""
    return await anyio.to_thread.run_sync(functools.partial(fn, *args), limiter=limiter)


class EngineAPI:
    """The endpoints, bound to the engine's parts."""

    def __init__(
        self,
        settings: EngineSettings,
        *,
        store: Store,
        signer: TokenSigner,
        cutout: Cutout,
        faults: Faults,
        rate_limit: ApiRateLimit | None,
        render_limiter: anyio.CapacityLimiter,
    ) -> None:
        self.settings = settings
        self.store = store
        self.signer = signer
        self.cutout = cutout
        self.faults = faults
        self.rate_limit = rate_limit
        self.render_limiter = render_limiter

    # --- POST /api/v3/remove-bg/token/ ------------------------------------------------------
    async def mint(self, request: Request) -> Response:
        if (fault := await self.faults.before("token")) is not None:
            return fault
        self._check_api_key(request.headers.get("authorization"))
        await self._count_call()
        body = await self._json_body(request)
        for key in body:
            if key not in MINT_FIELDS:
                raise InvalidRequestError(f"{key}: unknown field")
        variants = parse_output_variants(
            body.get("output_variants"), max_variants=self.settings.max_variants
        )
        unique_filename = body.get("unique_filename")
        if unique_filename is not None:
            if not isinstance(unique_filename, str) or not unique_filename:
                raise InvalidRequestError("unique_filename: must be a non-empty string")
            if await off_loop(self.store.upload, unique_filename) is None:
                raise NotFoundError("unique_filename: unknown or expired; upload the image again")

        credits = estimate_credits([v.as_json() for v in variants])
        paid, left = await off_loop(self.store.charge, credits)
        if not paid:
            raise PaymentRequiredError(
                f"insufficient credits: this token costs {credits:g}, {left:g} left"
            )
        token, _ = self.signer.mint(variants, unique_filename=unique_filename, credits=credits)
        await off_loop(self.store.note_mint, len(variants))
        headers = {"X-Credits-Charged": f"{credits:g}"}
        if left is not None:
            headers["X-Credits-Remaining"] = f"{left:g}"
        return JSONResponse({"access_token": token}, headers=headers)

    # --- POST /v3/remove-bg/ ------------------------------------------------------------------
    async def process(self, request: Request) -> Response:
        if (fault := await self.faults.before("process")) is not None:
            return fault
        await self._count_call()
        form = await self._form(request)
        try:
            return await self._process(form)
        finally:
            await form.close()

    async def _process(self, form: FormData) -> Response:
        token = form.get("token")
        if not isinstance(token, str) or not token.strip():
            raise UnauthorizedError("token: missing")
        claims = self.signer.verify(token.strip())
        if self.settings.single_use and await off_loop(self.store.token_spent, claims.token_id):
            raise UnauthorizedError("token: already used")
        image = form.get("image")

        upload: Upload | None = None
        if claims.unique_filename is not None:
            if image is not None:
                raise InvalidRequestError(
                    "image: not expected; this token reuses an uploaded image"
                )
            upload = await off_loop(self.store.upload, claims.unique_filename)
            if upload is None:
                raise NotFoundError("unique_filename: unknown or expired; upload the image again")
            data = await off_loop(upload.file.path.read_bytes)
        else:
            if not isinstance(image, UploadFile):
                raise InvalidRequestError(
                    "image: required (a file) when the token has no unique_filename"
                )
            if image.size is not None and image.size > self.settings.max_upload_bytes:
                raise self._too_large()
            data = await image.read()
            if len(data) > self.settings.max_upload_bytes:
                raise self._too_large()

        source = await off_loop(
            functools.partial(decode, max_pixels=self.settings.max_input_pixels),
            data,
            limiter=self.render_limiter,
        )
        # Spent only now: a request refused for its image leaves the token usable.
        if self.settings.single_use and not await off_loop(
            self.store.spend_token, claims.token_id, self.settings.token_ttl
        ):
            raise UnauthorizedError("token: already used")
        uploaded = upload is None
        if upload is None:
            upload = await off_loop(
                self.store.save_upload, data, source.format, source.content_type
            )

        outputs = await off_loop(
            render, source, claims.variants, self.cutout, limiter=self.render_limiter
        )
        stored = await off_loop(self._save_outputs, outputs, claims.variants)
        answer: dict[str, Any] = {
            "unique_filename": upload.unique_filename,
            "output_urls": {
                variant.variant_name: self._url(file)
                for variant, file in zip(claims.variants, stored, strict=True)
            },
        }
        if uploaded:
            answer["input_url"] = self._url(upload.file)
        return JSONResponse(answer, background=BackgroundTask(off_loop, self.store.maybe_sweep))

    def _save_outputs(
        self, outputs: list[bytes], variants: Sequence[OutputVariant]
    ) -> list[StoredFile]:
        stored = [
            self.store.save_file(data, variant.format, variant.content_type)
            for data, variant in zip(outputs, variants, strict=True)
        ]
        self.store.count("variants_rendered", len(stored))
        self.store.count("processed")
        return stored

    def _url(self, file: StoredFile) -> str:
        return f"{self.settings.base_url}/files/{file.name}"

    # --- GET /files/{name} --------------------------------------------------------------------
    async def serve_file(self, request: Request) -> Response:
        if (fault := await self.faults.before("file")) is not None:
            return fault
        stored = await off_loop(self.store.file, request.path_params["name"])
        if stored is None:
            raise NotFoundError("file: unknown or expired")
        remaining = max(0, int(stored.created + self.settings.retention - self.store.clock()))
        return WholeFile(
            stored.path,
            media_type=stored.content_type,
            headers={"Cache-Control": f"private, max-age={remaining}"},
        )

    # --- GET /stats, /health; GET|PUT /faults -------------------------------------------------
    async def stats(self, request: Request) -> Response:
        stats = await off_loop(self.store.stats)
        stats["faults"] = (await self.faults.state()).as_json()
        return JSONResponse(stats)

    async def health(self, request: Request) -> Response:
        # The pid tells apart the worker processes sharing one port.
        return JSONResponse({"status": "ok", "pid": os.getpid()})

    async def faults_endpoint(self, request: Request) -> Response:
        self._check_api_key(request.headers.get("authorization"))
        return await self.fault_control(request)

    async def fault_control(self, request: Request) -> Response:
        """GET or PUT the fault state, for a caller its route has already let in."""
        if request.method == "PUT":
            state = await self.faults.change(await self._json_body(request))
            log.info("fault state changed: %s", state.as_json())
        else:
            state = await self.faults.state()
        return JSONResponse(state.as_json())

    # --- errors -------------------------------------------------------------------------------
    async def engine_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, EngineError)
        return await self._error(exc.status_code, exc.code, exc.message, exc.headers)

    async def http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
        return await self._error(exc.status_code, code, str(exc.detail), dict(exc.headers or {}))

    async def _error(
        self, status: int, code: str, message: str, headers: dict[str, str]
    ) -> Response:
        await off_loop(self.store.note_rejection, status)
        style = self.settings.error_style
        if style == "text":
            return PlainTextResponse(message, status_code=status, headers=headers)
        body: dict[str, Any]
        if style == "detail":
            body = {"detail": message}
        elif style == "errors":
            body = {"errors": [{"title": message, "code": code}]}
        else:
            body = {"error": message, "code": code}
        return JSONResponse(body, status_code=status, headers=headers)

    # --- helpers ------------------------------------------------------------------------------
    def _check_api_key(self, authorization: str | None) -> None:
        # create_engine_app resolved the key (configured, or the data dir's).
        assert self.settings.api_key is not None
        check_bearer(authorization, self.settings.api_key, "API key")

    async def _count_call(self) -> None:
        if self.rate_limit is None:
            return
        wait = await off_loop(self.rate_limit.hit)
        if wait is not None:
            raise RateLimitedError("API rate limit crossed", retry_after=wait)

    async def _json_body(self, request: Request) -> dict[str, Any]:
        chunks = []
        async for chunk in _limited(request.stream(), MAX_JSON_BYTES, "body"):
            chunks.append(chunk)
        try:
            body = json.loads(b"".join(chunks) or b"null")
        except (ValueError, UnicodeDecodeError):
            raise InvalidRequestError("body: not valid JSON") from None
        if not isinstance(body, dict):
            raise InvalidRequestError("body: must be a JSON object")
        return body

    async def _form(self, request: Request) -> FormData:
        allowance = self.settings.max_upload_bytes + FORM_OVERHEAD
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > allowance:
            raise self._too_large()
        limited = Request(request.scope, _limited_receive(request.receive, allowance))
        try:
            return await limited.form(max_files=1, max_fields=8)
        except _BodyTooLarge:
            raise self._too_large() from None

    def _too_large(self) -> PayloadTooLargeError:
        return PayloadTooLargeError(f"image: larger than {self.settings.max_upload_mb:g} MiB")


def check_bearer(authorization: str | None, expected: str, what: str) -> None:
    """401 unless ``authorization`` is ``Bearer <expected>`` (compared in constant time)."""
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise UnauthorizedError(f"Authorization: a Bearer {what} is required")
    if not hmac.compare_digest(given.strip().encode(), expected.encode()):
        raise UnauthorizedError(f"Authorization: invalid {what}")


class _BodyTooLarge(Exception):
    """The request body went over its allowance while being read."""


def _limited_receive(receive: Receive, allowance: int) -> Receive:
    """``receive`` that counts body bytes and stops reading past ``allowance``."""
    seen = 0

    async def limited() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > allowance:
                raise _BodyTooLarge
        return message

    return limited


async def _limited(
    stream: AsyncIterator[bytes], allowance: int, field: str
) -> AsyncIterator[bytes]:
    seen = 0
    async for chunk in stream:
        seen += len(chunk)
        if seen > allowance:
            raise PayloadTooLargeError(f"{field}: larger than {allowance // 1024} KiB")
        yield chunk
