"""The admin API for images (``Authorization: Bearer <PROXY_ADMIN_TOKEN>``).

    PUT    /images/{id}        image body (image/*, octet-stream) or multipart ``image``;
                               application/json registers an upload made elsewhere
    POST   /images             multipart ``image`` (+ optional ``image_id``) or image body;
                               no id: one is derived from the content
    GET    /images             paginated: ?after=<id>&limit=<n>
    GET    /images/{id}        metadata and the variants currently cached
    DELETE /images/{id}        mapping, cached variants, and the original unless shared
    POST   /images/{id}/warm   {"sizes": ["640x640", ...], "bg": "ffffff", "ext": "jpg",
                                "fit": "cover", "presets": ["main"]}  (store mode: the
                               master minted if missing, the sizes and presets derived;
                               ext "auto": every format it may become)

Bodies are read as a stream with a running count, refused with 413 the moment they pass the
limit (and before reading, from Content-Length); nothing is stored before the image passes
every check.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import anyio.to_thread
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from proxy.errors import BadRequestError, NotFoundError, PayloadTooLargeError
from proxy.images.checks import check_size, sha256_hex
from proxy.images.service import ImageService, Stored
from proxy.serving import formats
from proxy.serving.admin import require_admin
from proxy.serving.handlers import MAX_JSON_BODY, read_json, record_json, registration
from proxy.settings import Settings
from proxy.stores.cache import CachedOutput, SharedTier
from proxy.stores.registry import ImageRecord, Registry, record_version
from proxy.upstream.contract import estimate_credits
from proxy.url import grammar
from proxy.url.decision import Decider
from proxy.url.variant import AUTO, TRANSPARENT, Variant, image_prefix, output_variant
from proxy.variants.coalesce import holding
from proxy.variants.service import VariantService

if TYPE_CHECKING:  # imports pyvips: built in store mode only
    from proxy.variants.store_mode import StoreVariants

# Room for the multipart framing and the small text fields around the image.
MULTIPART_SLACK = 64 * 1024
MAX_PAGE = 1000
MAX_WARM_SIZES = 32


@runtime_checkable
class ScannableTier(Protocol):
    """A shared tier that can list an image's entries (for ``GET /images/{id}``)."""

    async def scan(self, prefix: str) -> dict[str, CachedOutput]: ...


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


class ImagesAPI:
    """The ``/images`` routes: the image service and the registry behind the admin token;
    warm-up asks the variant decision, then renders through the variant service."""

    def __init__(
        self,
        settings: Settings,
        *,
        images: ImageService,
        registry: Registry,
        variants: VariantService,
        decider: Decider[Any],
        clock: Callable[[], float],
        store: StoreVariants | None = None,
    ) -> None:
        self.settings = settings
        self.images = images
        self.registry = registry
        self.variants = variants
        self.decider = decider
        self.clock = clock
        self.store = store

    def routes(self) -> list[Route]:
        return [
            Route("/images", self.list_images, methods=["GET"]),
            Route("/images", self.post_image, methods=["POST"]),
            Route("/images/{image_id}", self.put_image, methods=["PUT"]),
            Route("/images/{image_id}", self.get_image, methods=["GET"]),
            Route("/images/{image_id}", self.delete_image, methods=["DELETE"]),
            Route("/images/{image_id}/warm", self.warm_image, methods=["POST"]),
        ]

    def _admin(self, request: Request) -> None:
        require_admin(request, self.settings.admin_token)

    # --- uploads ------------------------------------------------------------------------------

    async def put_image(self, request: Request) -> Response:
        self._admin(request)
        image_id = grammar.check_image_id(request.path_params["image_id"])
        if _media_type(request) == "application/json":
            return await self._register(image_id, await read_json(request))
        data, _ = await read_upload(request, self.settings.max_upload_bytes)
        if not _media_type(request) and data.lstrip()[:1] == b"{":
            # No Content-Type and a JSON object: the registration clients of old.
            return await self._register(image_id, _parse_json(data))
        return _stored(await self.images.store(image_id, data))

    async def _register(self, image_id: str, body: Any) -> Response:
        return _stored(await self.images.register(registration(image_id, body, self.clock())))

    async def post_image(self, request: Request) -> Response:
        self._admin(request)
        data, given_id = await read_upload(request, self.settings.max_upload_bytes)
        if given_id:
            image_id = grammar.check_image_id(given_id)
            return _stored(await self.images.store(image_id, data))
        # Checked before the id is derived, so a text file is a 415, not a new id.
        checked = await self.images.check(data)
        sha = await anyio.to_thread.run_sync(sha256_hex, data)
        return _stored(await self.images.store(sha[:20], data, checked=checked, sha=sha))

    # --- reading and removing -----------------------------------------------------------------

    async def get_image(self, request: Request) -> Response:
        self._admin(request)
        image_id = grammar.check_image_id(request.path_params["image_id"])
        record = await self.registry.get(image_id)
        if record is None:
            raise NotFoundError(f"unknown image {image_id!r}", code="unknown_image")
        body = image_json(record)
        body["variants"] = await cached_variants(self.variants.cache.shared, record, self.clock())
        return JSONResponse(body)

    async def list_images(self, request: Request) -> Response:
        self._admin(request)
        after = request.query_params.get("after") or None
        raw_limit = request.query_params.get("limit", "100")
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_PAGE:
            raise BadRequestError(f"limit must be 1 to {MAX_PAGE}", code="bad_limit")
        limit = int(raw_limit)
        records = await self.registry.list(after=after, limit=limit)
        body = {
            "images": [image_json(r) for r in records],
            "total": await self.registry.count(),
            "next": records[-1].image_id if len(records) == limit else None,
        }
        return JSONResponse(body)

    async def delete_image(self, request: Request) -> Response:
        self._admin(request)
        image_id = grammar.check_image_id(request.path_params["image_id"])
        removed = await self.images.remove(image_id)
        if removed is None:
            raise NotFoundError(f"unknown image {image_id!r}", code="unknown_image")
        return JSONResponse(
            {
                "deleted": image_id,
                "variants_dropped": removed.variants_dropped,
                "original_deleted": removed.original_deleted,
            }
        )

    # --- warm-up ------------------------------------------------------------------------------

    async def warm_image(self, request: Request) -> Response:
        """Render the asked variants that are not cached yet, all in one token."""
        self._admin(request)
        image_id = grammar.check_image_id(request.path_params["image_id"])
        wanted = warm_variants(image_id, await read_json(request), self.decider)
        record = await self.registry.get(image_id)
        if record is None:
            raise NotFoundError(f"unknown image {image_id!r}", code="unknown_image")
        if self.store is not None:
            return await self._warm_stored(self.store, record, wanted)
        service = self.variants
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
        # The leases of the variants it renders: a visitor's miss for one of them meanwhile
        # waits for this token instead of minting its own; one already being minted is left out.
        async with holding(
            service.lease, [keys[v] for v in missing], ttl=self.settings.lease_ttl
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
                specs = [output_variant(v, self.settings, record.original_size) for v in todo]
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

    async def _warm_stored(
        self, store: StoreVariants, record: ImageRecord, wanted: list[Variant]
    ) -> Response:
        """Store mode: the master minted if no worker keeps it, then the variants derived."""
        warmed = await store.warm(record, wanted)
        return JSONResponse(
            {
                "image_id": record.image_id,
                "rendered": warmed.derived,
                "skipped": warmed.kept,
                "pending": [],
                "tokens": 1 if warmed.minted else 0,
                "estimated_credits": warmed.credits,
                "master": "minted" if warmed.minted else "kept",
            }
        )


def _parse_json(data: bytes) -> Any:
    if len(data) > MAX_JSON_BODY:
        raise BadRequestError(f"JSON body over {MAX_JSON_BODY // 1024} KiB", code="body_too_large")
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise BadRequestError("the body is not valid JSON", code="bad_json") from None


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


def image_json(record: ImageRecord) -> dict[str, Any]:
    data = record_json(record)
    data["original_kept"] = record.sha256 is not None
    return data


async def cached_variants(
    shared: SharedTier, record: ImageRecord, now: float
) -> list[dict[str, Any]] | None:
    """The record's current variants in the shared tier (None: the tier cannot list)."""
    if not isinstance(shared, ScannableTier):
        return None
    suffix = f"~{record_version(record)}"
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


def warm_variants(image_id: str, body: Any, decider: Decider[Any]) -> list[Variant]:
    """The body's sizes × bg × ext, and its named presets, as the variants visitors' URLs of
    them are served: the same decision (the grammar's limits, the size ladder), with no
    signature to check. ``auto`` stands for every format it may become."""
    if not isinstance(body, dict):
        raise BadRequestError("the body must be a JSON object", code="bad_body")
    unknown = set(body) - {"sizes", "bg", "ext", "fit", "presets"}
    if unknown:
        raise BadRequestError(f"unknown field(s): {', '.join(sorted(unknown))}", code="bad_body")
    sizes, names = body.get("sizes"), body.get("presets")
    if names is not None and (
        not isinstance(names, list)
        or not 1 <= len(names) <= MAX_WARM_SIZES
        or not all(isinstance(n, str) for n in names)
    ):
        raise BadRequestError(
            f'presets must be a list of 1 to {MAX_WARM_SIZES} preset names like "main"',
            code="bad_presets",
        )
    if (names is None or sizes is not None) and (
        not isinstance(sizes, list)
        or not 1 <= len(sizes) <= MAX_WARM_SIZES
        or not all(isinstance(s, str) for s in sizes)
    ):
        raise BadRequestError(
            f'sizes must be a list of 1 to {MAX_WARM_SIZES} sizes like "640x640"',
            code="bad_sizes",
        )
    bg, ext, fit = body.get("bg", "ffffff"), body.get("ext"), body.get("fit")
    if not isinstance(bg, str) or not isinstance(ext, str | None):
        raise BadRequestError("bg and ext must be strings", code="bad_body")
    if fit is not None and not isinstance(fit, str):
        raise BadRequestError("fit must be a string: contain, pad or cover", code="bad_body")
    variants: dict[str, Variant] = {}
    for size in sizes or ():
        # As for a visitor's URL: the canonical spelling, the rung under snap, 400s alike.
        variant = decider.variant(image_id, with_fit(size, fit), f"{bg}.{ext or 'jpg'}")
        variants[variant.path] = variant
    for name in names or ():
        preset = decider.presets.get(name)
        # No ext: the preset's own format, else its first (jpg, or png when transparent).
        chosen = ext or (preset.formats[0] if preset is not None else "jpg")
        variant = decider.preset(image_id, f"{name}.{chosen}")
        variants[variant.path] = variant
    store = decider.limits.store
    return [
        dataclasses.replace(variant, ext=fmt) if variant.ext == AUTO else variant
        for variant in variants.values()
        for fmt in (
            formats.formats(transparent=variant.bg == TRANSPARENT, store=store)
            if variant.ext == AUTO
            else (variant.ext,)
        )
    ]


def with_fit(size: str, fit: str | None) -> str:
    """A size segment with the fit suffix put in its place, right after the box:
    ``320x320@2x`` with ``cover`` is ``320x320-cover@2x``, ``400x400-f85`` is
    ``400x400-cover-f85`` (the grammar judges them, a default fit is spelled away)."""
    if not fit:
        return size
    box, at, density = size.partition("@")
    wh, dash, framing = box.partition("-")
    return f"{wh}-{fit}{dash}{framing}{at}{density}"
