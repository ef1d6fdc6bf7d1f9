"""``/admin/store/orphans`` (admin): the object store's orphans, reported or removed.

    GET    /admin/store/orphans[?grace=SECONDS]   images with objects in the store and no
                                                  record: objects, bytes, newest write
    DELETE /admin/store/orphans[?grace=SECONDS]   the same, removed from the store (and this
                                                  host's local copies of their masters)

An orphan is what a delete missed (the store was down, a replica died mid-delete, a write
that timed out landed later). Only images whose newest object is older than ``grace``
(default an hour, :data:`proxy.stores.orphans.GRACE`) count: an upload keeps its master
before it registers the image. ``cutproxy store orphans [--clean]`` calls these.
Without ``PROXY_STORE_URL`` both answer 404 ``object_store_not_configured``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from proxy.errors import BadRequestError, NotFoundError
from proxy.serving.admin import require_admin
from proxy.stores.registry import Registry

if TYPE_CHECKING:  # imports obstore: loaded with an object store only
    from proxy.stores.object_tiers import ObjectTiers
    from proxy.stores.orphans import Orphan

GRACE = 3600.0  # proxy.stores.orphans.GRACE (a test keeps them equal)


@dataclass(frozen=True)
class StoreAdmin:
    admin_token: str | None
    registry: Registry
    objects: ObjectTiers | None

    async def orphans(self, request: Request) -> Response:
        require_admin(request, self.admin_token)
        if self.objects is None:
            raise NotFoundError(
                "no object store: set PROXY_STORE_URL (with PROXY_MODE=store) to keep masters "
                "and variants in one",
                code="object_store_not_configured",
            )
        from proxy.stores.orphans import clean_local_masters, clean_orphans, orphan_report

        grace = _grace(request)
        store = self.objects.store

        async def registered(image_id: str) -> bool:
            return await self.registry.get(image_id) is not None

        body: dict[str, object] = {"grace_seconds": grace}
        if request.method == "DELETE":
            removed = await clean_orphans(store, registered, grace=grace)
            local = await clean_local_masters(self.objects.masters.local, registered, grace=grace)
            body["removed"] = [_json(orphan) for orphan in removed]
            body["local_masters_removed"] = local
        else:
            body["orphans"] = [
                _json(orphan) for orphan in await orphan_report(store, registered, grace=grace)
            ]
        return JSONResponse(body, headers={"Cache-Control": "no-store"})


def _grace(request: Request) -> float:
    raw = request.query_params.get("grace")
    if raw is None:
        return GRACE
    try:
        grace = float(raw)
    except ValueError:
        grace = -1.0
    if not (math.isfinite(grace) and grace >= 0):
        raise BadRequestError("grace must be a number of seconds, 0 or more", code="invalid_grace")
    return grace


def _json(orphan: Orphan) -> dict[str, object]:
    return {
        "image_id": orphan.image_id,
        "objects": orphan.objects,
        "bytes": orphan.nbytes,
        "newest": orphan.newest,
    }
