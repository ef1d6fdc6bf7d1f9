"""``GET /admin/costs`` (admin): credits spent and saved, and what is left of the budget; in
store mode also the masters minted, the variants derived, the bytes kept and what store mode
saved."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from proxy.guards.budget import LEDGER_FIELDS
from proxy.guards.misses import MissGuard
from proxy.serving.admin import require_admin

if TYPE_CHECKING:  # imports pyvips: built in store mode only
    from proxy.variants.store_mode import StoreVariants

# Without a miss guard nothing is counted: every total is zero and there is no budget.
_NOTHING_COUNTED = {**dict.fromkeys(LEDGER_FIELDS, 0.0), "ambiguous_mints": 0, "budget": {}}


@dataclass(frozen=True)
class CostsAPI:
    admin_token: str | None
    guard: MissGuard | None
    store: StoreVariants | None = None  # store mode adds masters, derivations, bytes kept

    async def costs(self, request: Request) -> Response:
        require_admin(request, self.admin_token)
        body: dict[str, Any] = (
            await self.guard.costs() if self.guard is not None else dict(_NOTHING_COUNTED)
        )
        if self.store is not None:
            body.update(await self.store.costs())
        return JSONResponse(body, headers={"Cache-Control": "no-store"})
