"""The guarded minter: the one door through which the proxy spends credits.

Every token the proxy mints passes :meth:`Minter.mint`, whoever asks for it: a visitor's
miss (alone or batched), a warm-up, an upload's first request, a re-upload of an original
the upstream forgot. For each token it

- counts the token's price against the credit budget *before* the call (a miss that was
  admitted at its price draws on that reservation instead), refusing with a 429 when a
  window is spent;
- records the price in the cost ledger once the upstream answered with a token (that is
  when the upstream charges), with what minting the variants together saved;
- gives back to the budget only what provably was not charged: a reservation no token was
  minted against, or a mint that never reached the upstream or that it refused (the upstream
  client decides, :mod:`proxy.upstream`). A mint that failed after the upstream may have
  charged it (a lost answer, a timeout, a 5xx) stays counted in the budget and goes into the
  ledger as *possibly spent*, one more *ambiguous mint*.

:meth:`Minter.hold` holds variants to the size ladder the way a visitor's URL is held
(``PROXY_LADDER_POLICY``), so warm-ups cannot mint sizes visitors are refused, and
:meth:`Minter.check` refuses any variant off the ladder at the door itself.

Reservations are paid with explicitly: :meth:`Minter.paying` opens an :class:`Account` of
them, and the mints given that account draw on it. A mint given none opens its own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from proxy.errors import (
    BadRequestError,
    MissRefusedError,
    ProxyError,
    UpstreamError,
)
from proxy.guards.budget import CostLedger, CreditBudget, batching_saving, estimate_credits
from proxy.upstream.client import ProcessResult, UpstreamClient
from proxy.url import ladder as size_ladder
from proxy.url.variant import Variant

log = logging.getLogger("cutproxy.minter")

# An upload is named for the upstream by the image id and its type's usual extension.
UPLOAD_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}


class CostEvents(Protocol):
    """What the minter and the miss guard report; :class:`proxy.ops.metrics.Metrics` listens."""

    def credits_saved_by(self, by: str, credits: float) -> None:
        """Credits not spent, ``by`` coalescing or batching."""

    def budget_remaining(self, window: str, credits: float) -> None:
        """Credits left in the budget ``window`` (hour, day)."""

    def miss_refused(self, reason: str, answer: str) -> None:
        """A miss was refused for ``reason`` (client_rate, budget), answered by ``answer``
        (fallback, 429)."""


class NoCostEvents:
    def credits_saved_by(self, by: str, credits: float) -> None:
        pass

    def budget_remaining(self, window: str, credits: float) -> None:
        pass

    def miss_refused(self, reason: str, answer: str) -> None:
        pass


@dataclass(frozen=True, slots=True)
class Reservation:
    """Credits counted against the budget before a mint, and when (for a refund)."""

    credits: float
    at: float


@dataclass
class Account:
    """Credits reserved for the mints of one render, and how much of them tokens drew.

    Open while its :meth:`Minter.paying` block runs; a mint given a closed account (its
    render is over, e.g. a re-upload that outlived the request that started it) opens its own.
    """

    reserved: float
    at: float
    drawn: float = 0.0
    open: bool = True


class Minter:
    """Mints tokens at the upstream within the ladder and the budget, and keeps the books.

    ``budget`` and ``ledger`` may be None (no budget, no books): tests and tools that build
    a bare service still mint through here.
    """

    def __init__(
        self,
        upstream: UpstreamClient,
        *,
        budget: CreditBudget | None = None,
        ledger: CostLedger | None = None,
        ladder: size_ladder.Ladder | None = None,
        policy: str = "off",
        clock: Callable[[], float] = time.time,
        events: CostEvents | None = None,
    ) -> None:
        self.upstream = upstream
        self.budget = budget
        self.ledger = ledger
        self.ladder = ladder
        self.policy = policy
        self.clock = clock
        self.events: CostEvents = events or NoCostEvents()

    # -- the ladder -----------------------------------------------------------------------
    def hold(self, variant: Variant) -> Variant:
        """``variant`` held to the ladder as a visitor's URL is: itself when offered, its
        rung under ``snap``; a 400 ``size_not_offered`` under ``strict`` (or above every rung)."""
        held = size_ladder.apply(self.ladder, self.policy, variant)
        if isinstance(held, Variant):
            return held
        assert self.ladder is not None  # apply() redirects only with a ladder
        size = self.ladder.snap(variant.width, variant.height)
        assert size is not None  # apply() refused the sizes with no rung
        return dataclasses.replace(variant, width=size[0], height=size[1])

    def check(self, variants: Iterable[Variant]) -> None:
        """Refuse (400) to mint any size the ladder does not offer (a named preset's size is
        the operator's own: the ladder does not apply to it)."""
        for variant in variants:
            if variant.preset is None and self.hold(variant) != variant:
                raise BadRequestError(
                    f"size {variant.width}x{variant.height} is not offered "
                    f"(PROXY_LADDER_POLICY={self.policy})",
                    code="size_not_offered",
                )

    # -- the budget -----------------------------------------------------------------------
    async def reserve(self, credits: float, *, client: str | None = None) -> Reservation:
        """Count ``credits`` against every budget window now; a 429 if one is spent."""
        now = self.clock()
        if self.budget is not None and self.budget.limited:
            if not await self.budget.try_spend(credits, now):
                raise await self._spent(credits, now, client)
            await self._report(now)
        return Reservation(credits, now)

    async def _spent(self, credits: float, now: float, client: str | None) -> MissRefusedError:
        assert self.budget is not None
        windows = await self.budget.remaining(now)
        self._report_windows(windows)
        spent = [name for name, window in windows.items() if window["remaining"] < credits]
        retry = await self.budget.retry_after(credits, now)
        return MissRefusedError(
            f"the credit budget for this {' and '.join(spent) or 'hour'} is spent; "
            "sizes already cached are still served",
            code="credit_budget_spent",
            retry_after=max(1.0, retry if retry is not None else 60.0),
            reason="budget",
            client=client,
        )

    async def _refund(self, credits: float, at: float) -> None:
        if self.budget is None or not self.budget.limited or credits <= 0:
            return
        try:
            await self.budget.refund(credits, at)
            await self._report(self.clock())
        except ProxyError as exc:  # the shared store is down: the budget keeps the credits
            log.warning("could not give %.2f credits back to the budget: %s", credits, exc.message)

    async def _report(self, now: float) -> None:
        if self.budget is not None and self.budget.limited:
            self._report_windows(await self.budget.remaining(now))

    def _report_windows(self, windows: Mapping[str, Mapping[str, float]]) -> None:
        for name, window in windows.items():
            self.events.budget_remaining(name, window["remaining"])

    @contextlib.asynccontextmanager
    async def paying(self, reservations: Sequence[Reservation] = ()) -> AsyncIterator[Account]:
        """An account of ``reservations`` for the mints given it inside the block.

        A mint that costs more than is left reserves the difference itself. When the block
        ends, what no token drew is given back, so the books are square before anyone is
        answered.
        """
        at = min((r.at for r in reservations), default=self.clock())
        account = Account(reserved=round(sum(r.credits for r in reservations), 2), at=at)
        try:
            yield account
        finally:
            account.open = False
            await self._refund(round(account.reserved - account.drawn, 2), account.at)

    # -- the mint -------------------------------------------------------------------------
    async def mint(
        self,
        output_variants: Sequence[Mapping[str, Any]],
        unique_filename: str | None = None,
        account: Account | None = None,
    ) -> str:
        """One token for ``output_variants`` (of the upload ``unique_filename``, if given),
        drawing on ``account`` (see :meth:`paying`) while it is open."""
        if account is None or not account.open:
            async with self.paying() as own:
                return await self.mint(output_variants, unique_filename, own)
        specs = [dict(v) for v in output_variants]
        cost = estimate_credits(specs)
        short = round(cost - (account.reserved - account.drawn), 2)
        if short > 0:
            reservation = await self.reserve(short)
            if account.reserved == 0:
                account.at = reservation.at
            account.reserved = round(account.reserved + short, 2)
        account.drawn = round(account.drawn + cost, 2)
        try:
            token = await self.upstream.mint(specs, unique_filename=unique_filename)
        except UpstreamError as exc:
            if exc.maybe_charged:
                await self._book_ambiguous(cost)  # stays counted in the budget too
            else:
                account.drawn = round(account.drawn - cost, 2)  # provably not charged
            raise
        await self._book(specs, cost)
        return token

    async def render(
        self,
        output_variants: Sequence[Mapping[str, Any]],
        *,
        unique_filename: str | None = None,
        image: bytes | None = None,
        filename: str = "image",
        content_type: str = "application/octet-stream",
        account: Account | None = None,
    ) -> ProcessResult:
        """Mint a token, then process it: with ``image`` for an upload, else the upload
        ``unique_filename`` is reused."""
        token = await self.mint(output_variants, unique_filename, account)
        return await self.upstream.process(
            token, image, filename=filename, content_type=content_type
        )

    async def upload_original(
        self,
        output_variants: Sequence[Mapping[str, Any]],
        data: bytes,
        *,
        image_id: str,
        content_type: str | None,
        account: Account | None = None,
    ) -> ProcessResult:
        """One token (no ``unique_filename``, minted within the budget) and one processing call
        carrying the image."""
        kind = content_type or "application/octet-stream"
        return await self.render(
            output_variants,
            image=data,
            filename=f"{image_id}.{UPLOAD_EXTENSIONS.get(kind, 'bin')}",
            content_type=kind,
            account=account,
        )

    async def _book_ambiguous(self, cost: float) -> None:
        """A mint that failed after the upstream may have charged it: "possibly spent"."""
        if self.ledger is None:
            return
        try:
            await self.ledger.record(possibly_spent=cost, ambiguous_mints=1)
        except ProxyError as exc:  # the shared store is down: the books lose one entry
            log.warning("could not record an ambiguous mint: %s", exc.message)

    async def _book(self, specs: list[dict[str, Any]], cost: float) -> None:
        saved = batching_saving(specs) if len(specs) > 1 else 0.0
        if self.ledger is not None:
            try:
                await self.ledger.record(spent=cost, saved_by_batching=saved)
            except ProxyError as exc:  # the shared store is down: the books lose one entry
                log.warning("could not record a mint's cost: %s", exc.message)
                return
        if saved:
            self.events.credits_saved_by("batching", saved)
