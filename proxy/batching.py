"""Batching: misses for several variants of one image, arriving together, share one token.

A token's first variant costs the full rate and every further one 0.25 credit, so six sizes
of one product photo asked for by one page cost about 1.75 credits together instead of 3 or
6.6 apart. The :class:`Batcher` holds each miss of an image for a short window
(``PROXY_BATCH_WINDOW_MS``); every miss of the same image arriving meanwhile joins, then one
``render_many`` call mints one token for all of them and each waiting request gets its own
output. A window of 0 renders each miss at once, with no added latency.

Only a variant's single-flight leader that also holds the variant's cross-process lease
enters the batcher, so each variant of a batch is leased by the process minting it.

The render runs inside ``pay``: the minter's account of what the members were admitted at
(:meth:`proxy.minter.Minter.paying`), which the token draws on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from proxy.cache import CachedOutput
from proxy.registry import ImageRecord
from proxy.variant import Variant

P = TypeVar("P")
RenderMany = Callable[[ImageRecord, list[Variant]], Awaitable[dict[Variant, CachedOutput]]]


# --- the batcher -----------------------------------------------------------------------------


@dataclass
class Member(Generic[P]):
    """One waiting miss: its variant, and what admitting it returned (a budget reservation)."""

    variant: Variant
    payload: P
    future: asyncio.Future[CachedOutput]


Price = Callable[[ImageRecord, list[Variant]], float]
Admit = Callable[[float], Awaitable[P]]
# Opens the books for one render, given its members' payloads; closes them after it.
Pay = Callable[[list[P]], AbstractAsyncContextManager[None]]


@dataclass
class _Batch(Generic[P]):
    record: ImageRecord
    members: list[Member[P]] = field(default_factory=list)
    admitting: int = 0  # joined, waiting for ``admit``: the batch is not minted before them
    admitted: asyncio.Event = field(default_factory=asyncio.Event)
    turn: asyncio.Lock = field(default_factory=asyncio.Lock)  # one admission at a time
    full: asyncio.Event = field(default_factory=asyncio.Event)


class Batcher(Generic[P]):
    """Collects misses per image for ``window`` seconds (or ``max_size`` variants) and
    renders them with one ``render_many`` call.

    Each miss is admitted (``admit``: rate and budget) at what it adds to its batch, by
    ``price``: the full rate when it is the first, 0.25 credit after (more if it is the
    first over 1 MP). Admissions of one batch take turns, so what its members were admitted
    at adds up to what the batch costs. The render runs inside ``pay`` (the minter's
    account of those admissions), which gives back what no token used before any waiter is
    answered, so the books are square by the time a client sees its response.
    """

    def __init__(self, *, window: float, max_size: int, price: Price, pay: Pay[P]) -> None:
        if window < 0 or max_size < 1:
            raise ValueError("window must be >= 0 and max_size >= 1")
        self.window = window
        self.max_size = max_size
        self._price = price
        self._pay = pay
        self._open: dict[tuple[str, str], _Batch[P]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def render(
        self, record: ImageRecord, variant: Variant, admit: Admit[P], render_many: RenderMany
    ) -> CachedOutput:
        """This variant's output, minted alone or together with others of the same image.

        ``admit`` may raise (the miss is refused): the variant then leaves its batch.
        """
        future: asyncio.Future[CachedOutput] = asyncio.get_running_loop().create_future()
        if self.window == 0 or self.max_size == 1:
            payload = await admit(self._price(record, [variant]))
            await self._flush(_Batch(record, [Member(variant, payload, future)]), render_many)
            return future.result()
        batch = self._join(record, render_many)
        try:
            # Admitted one at a time, each at what it adds to the members admitted before it.
            async with batch.turn:
                admitted = [m.variant for m in batch.members]
                cost = self._price(record, [*admitted, variant]) - self._price(record, admitted)
                payload = await admit(round(cost, 2))
                batch.members.append(Member(variant, payload, future))
        finally:
            batch.admitting -= 1
            if batch.admitting == 0:
                batch.admitted.set()
        return await asyncio.shield(future)

    def _join(self, record: ImageRecord, render_many: RenderMany) -> _Batch[P]:
        group = (record.image_id, record.unique_filename)
        batch = self._open.get(group)
        if batch is None:
            batch = self._open[group] = _Batch(record)
            task = asyncio.ensure_future(self._close_later(group, batch, render_many))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        batch.admitting += 1
        batch.admitted.clear()
        if len(batch.members) + batch.admitting >= self.max_size:
            self._open.pop(group, None)  # the next miss starts a new batch
            batch.full.set()
        return batch

    async def _close_later(
        self, group: tuple[str, str], batch: _Batch[P], render_many: RenderMany
    ) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(batch.full.wait(), self.window)
        if self._open.get(group) is batch:
            del self._open[group]
        while batch.admitting:
            await batch.admitted.wait()
        if batch.members:
            await self._flush(batch, render_many)

    async def _flush(self, batch: _Batch[P], render_many: RenderMany) -> None:
        variants = list(dict.fromkeys(m.variant for m in batch.members))
        outputs: dict[Variant, CachedOutput] = {}
        error: BaseException | None = None
        try:
            async with self._pay([m.payload for m in batch.members]):
                outputs = await render_many(batch.record, variants)
        except asyncio.CancelledError:
            for member in batch.members:
                member.future.cancel()
            raise
        except Exception as exc:
            error = exc
        for member in batch.members:
            if member.future.done():
                continue
            if error is not None:
                member.future.set_exception(error)
            else:
                member.future.set_result(outputs[member.variant])
