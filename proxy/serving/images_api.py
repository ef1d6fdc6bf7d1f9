"""The admin API for images (``Authorization: Bearer <PROXY_ADMIN_TOKEN>``).

    PUT    /images/{id}        image body (image/*, octet-stream) or multipart ``image``;
                               application/json registers an upload made elsewhere
    POST   /images             multipart ``image`` (+ optional ``image_id``) or image body;
                               no id: one is derived from the content
    GET    /images             paginated: ?after=<id>&limit=<n>
    GET    /images/{id}        metadata and the variants currently cached
    DELETE /images/{id}        mapping, cached variants, and the original unless shared
    POST   /images/{id}/warm   {"sizes": ["640x640", ...], "bg": "ffffff", "ext": "jpg"}

Bodies are read as a stream with a running count, refused with 413 the moment they pass the
limit (and before reading, from Content-Length); nothing is stored before the image passes
every check.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, Protocol, runtime_checkable

import anyio.to_thread
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from proxy.errors import BadRequestError, NotFoundError, PayloadTooLargeError
from proxy.images.service import Stored, check_size, sha256_hex
from proxy.serving.admin import require_admin
from proxy.serving.handlers import MAX_JSON_BODY, read_json, record_json, registration, state_of
from proxy.state import AppState
from proxy.stores.cache import CachedOutput
from proxy.stores.registry import ImageRecord, record_version
from proxy.upstream.contract import estimate_credits
from proxy.url import grammar
from proxy.url.variant import Variant, image_prefix, output_variant
from proxy.variants.coalesce import holding

# Room for the multipart framing and the small text fields around the image.
MULTIPART_SLACK = 64 * 1024
MAX_PAGE = 1000
MAX_WARM_SIZES = 32


@runtime_checkable
class ScannableTier(Protocol):
    """A shared tier that can list an image's entries (for ``GET /images/{id}``)."""

    async def scan(self, prefix: str) -> dict[str, CachedOutput]: ...


def _admin(request: Request) -> AppState:
    state = state_of(request)
    require_admin(request, state.settings.admin_token)
    return state


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


# --- uploads ----------------------------------------------------------------------------------


async def put_image(request: Request) -> Response:
    state = _admin(request)
    image_id = grammar.check_image_id(request.path_params["image_id"])
    if _media_type(request) == "application/json":
        return await _register(state, image_id, await read_json(request))
    data, _ = await read_upload(request, state.settings.max_upload_bytes)
    if not _media_type(request) and data.lstrip()[:1] == b"{":
        # No Content-Type and a JSON object: the registration clients of old.
        return await _register(state, image_id, _parse_json(data))
    return _stored(await state.images.store(image_id, data))


async def _register(state: AppState, image_id: str, body: Any) -> Response:
    stored = await state.images.register(registration(image_id, body, state.clock()))
    return _stored(stored)


def _parse_json(data: bytes) -> Any:
    if len(data) > MAX_JSON_BODY:
        raise BadRequestError(f"JSON body over {MAX_JSON_BODY // 1024} KiB", code="body_too_large")
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise BadRequestError("the body is not valid JSON", code="bad_json") from None


async def post_image(request: Request) -> Response:
    state = _admin(request)
    data, given_id = await read_upload(request, state.settings.max_upload_bytes)
    if given_id:
        image_id = grammar.check_image_id(given_id)
        return _stored(await state.images.store(image_id, data))
    # Checked before the id is derived, so a text file is a 415, not a new id.
    checked = await state.images.check(data)
    sha = await anyio.to_thread.run_sync(sha256_hex, data)
    return _stored(await state.images.store(sha[:20], data, checked=checked, sha=sha))


def _stored(stored: Stored) -> Response:
    status = 201 if stored.outcome == "created" else 200
    body = {"status": stored.outcome, **image_json(stored.record)}
    headers = {"Location": f"/images/{stored.record.image_id}"} if status == 201 else None
    return JSONResponse(body, status_code=status, headers=headers)


async def read_upload(request: Request, limit: int) -> tuple[bytes, str | None]:
    """The image bytes (raw body or multipart ``image``) and a multipart ``image_id``."""
    declared = request.headers.get("content-length", "")
    slack = MULTIPART_SLACK if _media_type(request) == "multipart/form-data" else 0
    if declared.isdigit():
        check_size(int(declared) - slack, limit)
    stream = _counted(request.stream(), limit + slack)
    if _media_type(request) != "multipart/form-data":
        return b"".join([chunk async for chunk in stream]), None
    parser = MultiPartParser(request.headers, stream, max_files=1, max_fields=8)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise BadRequestError(f"malformed multipart body: {exc.message}", code="bad_body") from None
    try:
        upload = form.get("image")
        if not isinstance(upload, UploadFile):
            raise BadRequestError(
                "the multipart body needs a file field named 'image'", code="missing_image"
            )
        data = await upload.read()
        check_size(len(data), limit)
        image_id = form.get("image_id")
        return data, image_id if isinstance(image_id, str) and image_id else None
    finally:
        await form.close()


async def _counted(stream: AsyncIterator[bytes], limit: int) -> AsyncGenerator[bytes, None]:
    total = 0
    async for chunk in stream:
        total += len(chunk)
        if total > limit:
            raise PayloadTooLargeError(
                f"the body is over {limit / 1024 / 1024:g} MiB (PROXY_MAX_UPLOAD_MB)",
                code="image_too_large",
            )
        yield chunk


# --- reading and removing ---------------------------------------------------------------------


def image_json(record: ImageRecord) -> dict[str, Any]:
    data = record_json(record)
    data["original_kept"] = record.sha256 is not None
    return data


async def get_image(request: Request) -> Response:
    state = _admin(request)
    image_id = grammar.check_image_id(request.path_params["image_id"])
    record = await state.registry.get(image_id)
    if record is None:
        raise NotFoundError(f"unknown image {image_id!r}", code="unknown_image")
    body = image_json(record)
    body["variants"] = await cached_variants(state, record)
    return JSONResponse(body)


async def cached_variants(state: AppState, record: ImageRecord) -> list[dict[str, Any]] | None:
    """The record's current variants in the shared tier (None: the tier cannot list)."""
    shared = state.variants.cache.shared
    if not isinstance(shared, ScannableTier):
        return None
    suffix = f"~{record_version(record)}"
    now = state.clock()
    found = await shared.scan(image_prefix(record.image_id))
    rows = [
        {
            "path": key.split("#", 1)[0],
            "url": output.url,
            "expires_in": round(output.remaining(now)),
        }
        for key, output in found.items()
        if key.endswith(suffix) and output.remaining(now) > 0
    ]
    return sorted(rows, key=lambda row: str(row["path"]))


async def list_images(request: Request) -> Response:
    state = _admin(request)
    after = request.query_params.get("after") or None
    raw_limit = request.query_params.get("limit", "100")
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_PAGE:
        raise BadRequestError(f"limit must be 1 to {MAX_PAGE}", code="bad_limit")
    limit = int(raw_limit)
    records = await state.registry.list(after=after, limit=limit)
    body = {
        "images": [image_json(r) for r in records],
        "total": await state.registry.count(),
        "next": records[-1].image_id if len(records) == limit else None,
    }
    return JSONResponse(body)


async def delete_image(request: Request) -> Response:
    state = _admin(request)
    image_id = grammar.check_image_id(request.path_params["image_id"])
    removed = await state.images.remove(image_id)
    if removed is None:
        raise NotFoundError(f"unknown image {image_id!r}", code="unknown_image")
    return JSONResponse(
        {
            "deleted": image_id,
            "variants_dropped": removed.variants_dropped,
            "original_deleted": removed.original_deleted,
        }
    )


# --- warm-up ------------------------------------------------------------------------------------


async def warm_image(request: Request) -> Response:
    """Render the asked variants that are not cached yet, all in one token."""
    state = _admin(request)
    image_id = grammar.check_image_id(request.path_params["image_id"])
    wanted = warm_variants(image_id, await read_json(request), state)
    record = await state.registry.get(image_id)
    if record is None:
        raise NotFoundError(f"unknown image {image_id!r}", code="unknown_image")
    service = state.variants
    version = record_version(record)
    keys = {variant: service.key(variant, version) for variant in wanted}
    missing: list[Variant] = []
    skipped: list[str] = []
    pending: list[str] = []
    for variant, key in keys.items():
        output, _tier = await service.cache.get(key)
        if output is None:
            missing.append(variant)
        else:
            skipped.append(variant.path)
    credits = 0.0
    # The leases of the variants it renders: a visitor's miss for one of them meanwhile waits
    # for this token instead of minting its own; a variant already being minted is left out.
    async with holding(
        service.lease, [keys[v] for v in missing], ttl=state.settings.lease_ttl
    ) as held:
        todo: list[Variant] = []
        for variant in missing:
            if keys[variant] not in held:
                pending.append(variant.path)
            elif (await service.cache.get(keys[variant]))[0] is not None:
                skipped.append(variant.path)  # a miss finished it just before
            else:
                todo.append(variant)
        if todo:
            outputs = await service.render_many(record, todo)
            for variant, output in outputs.items():
                await service.cache.set(keys[variant], output)
            specs = [output_variant(v, state.settings, record.original_size) for v in todo]
            credits = estimate_credits(specs)
    return JSONResponse(
        {
            "image_id": image_id,
            "rendered": [v.path for v in todo],
            "skipped": skipped,
            "pending": pending,
            "tokens": 1 if todo else 0,
            "estimated_credits": credits,
        }
    )


def warm_variants(image_id: str, body: Any, state: AppState) -> list[Variant]:
    """The body's sizes × bg × ext as canonical variants, through the URL grammar's limits
    and the size ladder."""
    if not isinstance(body, dict):
        raise BadRequestError("the body must be a JSON object", code="bad_body")
    unknown = set(body) - {"sizes", "bg", "ext"}
    if unknown:
        raise BadRequestError(f"unknown field(s): {', '.join(sorted(unknown))}", code="bad_body")
    sizes = body.get("sizes")
    if (
        not isinstance(sizes, list)
        or not 1 <= len(sizes) <= MAX_WARM_SIZES
        or not all(isinstance(s, str) for s in sizes)
    ):
        raise BadRequestError(
            f'sizes must be a list of 1 to {MAX_WARM_SIZES} sizes like "640x640"',
            code="bad_sizes",
        )
    bg, ext = body.get("bg", "ffffff"), body.get("ext", "jpg")
    if not isinstance(bg, str) or not isinstance(ext, str):
        raise BadRequestError("bg and ext must be strings", code="bad_body")
    variants: dict[str, Variant] = {}
    for size in sizes:
        parsed = grammar.parse(image_id, size, f"{bg}.{ext}", state.limits)
        if isinstance(parsed, grammar.Canonical):
            _, _, canon_id, canon_size, canon_file = parsed.path.split("/")
            parsed = grammar.parse(canon_id, canon_size, canon_file, state.limits)
        assert isinstance(parsed, Variant)
        # The ladder, as for a visitor's URL: its rung under snap, a 400 under strict.
        held = state.variants.minter.hold(parsed)
        variants[held.path] = held
    return list(variants.values())
