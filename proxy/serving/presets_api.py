"""``GET /presets``: the named presets of ``PROXY_PRESETS_FILE``, for people and tools.

Public, like the variant URLs it describes (a preset's name is in every URL that uses it;
nothing in a recipe is secret). Each entry is :meth:`proxy.url.presets.Preset.as_json` plus
``available``: whether this server's mode can make it (redirect mode makes only presets
the upstream can: contain, no framing, no quality of their own, no avif).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from proxy.settings import Settings
from proxy.url.decision import Decider


class PresetsAPI:
    """The listing, from the presets the variant decision serves."""

    def __init__(self, settings: Settings, *, decider: Decider[Any]) -> None:
        self.settings = settings
        self.decider = decider

    def body(self) -> dict[str, Any]:
        store = self.settings.store_mode
        return {
            "mode": self.settings.mode,
            "presets": [
                {**preset.as_json(), "available": store or not preset.needs_store}
                for preset in self.decider.presets.values()
            ],
        }

    async def listing(self, request: Request) -> Response:
        # The file is read at start only: the list changes with a restart, so keep it briefly.
        headers = {"Cache-Control": f"public, max-age={self.settings.error_max_age}"}
        return JSONResponse(self.body(), headers=headers)
