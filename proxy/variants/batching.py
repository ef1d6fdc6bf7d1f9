"""Batching: misses for several variants of one image, arriving together, share one token.

A token's first variant costs the full rate and every further one 0.25 credit, so six sizes
of one product photo asked for by one page cost about 1.75 credits together instead of 3 or
6.6 apart. Then one ``render_many`` call mints one token for all of them and each waiting
request gets its own output.

A miss waits for companions only when there is something to wait for. Each miss announces
itself to the :class:`Batcher` as soon as it starts (:meth:`Batcher.expect`), before the
cache and lease checks that come first; when it reaches the batcher, it goes

- straight to the mint, alone, when no other miss of its image is on its way or minting:
  a lone miss pays no window;
- into its image's batch otherwise, which is minted as soon as no further miss of the image
  is on its way and none is minting, when it is full (``PROXY_BATCH_MAX_VARIANTS``), or at
  the latest ``PROXY_BATCH_WINDOW_MS`` after it opened.

So a page's burst of sizes is one token, and a size asked for on its own costs only the
upstream's time. A window of 0 renders each miss at once, never batched.

Only a variant's single-flight leader that also holds the variant's cross-process lease
enters the batcher, so each variant of a batch is leased by the process minting it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Generic, TypeVar

from proxy.stores.cache import CachedOutput
from proxy.stores.registry import ImageRecord
from proxy.url.variant import Variant

P = TypeVar("P")
# One token for the variants of one image, paid with what admitting its members returned.
RenderMany = Callable[[ImageRecord, list[Variant], list[P]], Awaitable[dict[Variant, CachedOutput]]]


@dataclass
class Member(Generic[P]):
    """One waiting miss: its variant, and what admitting it returned (a budget reservation)."""

    variant: Variant
    payload: P
    future: asyncio.Future[CachedOutput]


Price = Callable[[ImageRecord, list[Variant]], float]
Admit = Callable[[float], Awaitable[P]]


@dataclass
class _Batch(Generic[P]):
    record: ImageRecord
    members: list[Member[P]] = field(default_factory=list)
    admitting: int = 0  # joined, waiting for ``admit``: the batch is not minted before them
    admitted: asyncio.Event = field(default_factory=asyncio.Event)
    turn: asyncio.Lock = field(default_factory=asyncio.Lock)  # one admission at a time
    ready: asyncio.Event = field(default_factory=asyncio.Event)  # full, or nothing more coming


@dataclass
class _Image:
    """What this process knows of one image's misses."""

    coming: int = 0  # announced misses that have not reached the batcher nor given up
    minting: int = 0  # renders of the image in progress


class Ticket:
    """A miss on its way to the batcher. It leaves once: on arriving, or on giving up
    (the variant was cached meanwhile, another worker mints it, an error). As a context
    manager it leaves on exit, whatever happened."""

    def __init__(self, on_leave: Callable[[], None]) -> None:
        self._on_leave: Callable[[], None] | None = on_leave

    def leave(self) -> None:
        on_leave, self._on_leave = self._on_leave, None
        if on_leave is not None:
            on_leave()

    def __enter__(self) -> Ticket:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.leave()


class Batcher(Generic[P]):
    """Renders misses of one image together when several are on their way at once.

    Each miss is admitted (``admit``: rate and budget) at what it adds to its batch, by
    ``price``: the full rate when it is the first, 0.25 credit after (more if it is the
    first over 1 MP). Admissions of one batch take turns, so what its members were admitted
    at adds up to what the batch costs. ``render_many`` is given those admissions to pay
    with, and gives back what no token used before it returns, that is before any waiter is
    answered, so the books are square by the time a client sees its response.
    """

    def __init__(self, *, window: float, max_size: int, price: Price) -> None:
        if window < 0 or max_size < 1:
            raise ValueError("window must be >= 0 and max_size >= 1")
        self.window = window
        self.max_size = max_size
        self._price = price
        self._open: dict[tuple[str, str], _Batch[P]] = {}
        self._images: dict[str, _Image] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # -- who is coming -----------------------------------------------------------------------
    def expect(self, image_id: str) -> Ticket:
        """Announce a miss of ``image_id`` that may reach :meth:`render` soon."""
        self._image(image_id).coming += 1
        return Ticket(functools.partial(self._left, image_id))

    def _image(self, image_id: str) -> _Image:
        state = self._images.get(image_id)
        if state is None:
            state = self._images[image_id] = _Image()
        return state

    def _left(self, image_id: str) -> None:
        self._images[image_id].coming -= 1
        self._settled(image_id)

    def _settled(self, image_id: str) -> None:
        """Release the image's open batches once no miss of it is coming or minting."""
        state = self._images[image_id]
        if state.coming or state.minting:
            return
        batches = [batch for (image, _), batch in self._open.items() if image == image_id]
        for batch in batches:
            batch.ready.set()
        if not batches:
            del self._images[image_id]

    # -- rendering ---------------------------------------------------------------------------
    async def render(
        self,
        record: ImageRecord,
        variant: Variant,
        admit: Admit[P],
        render_many: RenderMany[P],
        ticket: Ticket | None = None,
    ) -> CachedOutput:
        """This variant's output, minted alone or together with others of the same image.

        ``admit`` may raise (the miss is refused): the variant then leaves its batch.
        """
        if ticket is not None:
            ticket.leave()
        future: asyncio.Future[CachedOutput] = asyncio.get_running_loop().create_future()
        group = (record.image_id, record.unique_filename)
        state = self._image(record.image_id)
        alone = self.window == 0 or self.max_size == 1
        if alone or (group not in self._open and not state.coming and not state.minting):
            state.minting += 1  # from now on, a miss of this image that arrives waits
            try:
                payload = await admit(self._price(record, [variant]))
                await self._render(_Batch(record, [Member(variant, payload, future)]), render_many)
            finally:
                state.minting -= 1
                self._settled(record.image_id)
            return future.result()
        batch = self._join(group, record, render_many)
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

    def _join(
        self, group: tuple[str, str], record: ImageRecord, render_many: RenderMany[P]
    ) -> _Batch[P]:
        batch = self._open.get(group)
        if batch is None:
            batch = self._open[group] = _Batch(record)
            task = asyncio.ensure_future(self._close_later(group, batch, render_many))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            state = self._images[group[0]]
            if not state.coming and not state.minting:
                batch.ready.set()
        batch.admitting += 1
        batch.admitted.clear()
        if len(batch.members) + batch.admitting >= self.max_size:
            self._open.pop(group, None)  # the next miss starts a new batch
            batch.ready.set()
        return batch

    async def _close_later(
        self, group: tuple[str, str], batch: _Batch[P], render_many: RenderMany[P]
    ) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(batch.ready.wait(), self.window)
        if self._open.get(group) is batch:
            del self._open[group]
        state = self._image(group[0])
        state.minting += 1
        try:
            while batch.admitting:
                await batch.admitted.wait()
            if batch.members:
                await self._render(batch, render_many)
        finally:
            state.minting -= 1
            self._settled(group[0])

    async def _render(self, batch: _Batch[P], render_many: RenderMany[P]) -> None:
        variants = list(dict.fromkeys(m.variant for m in batch.members))
        outputs: dict[Variant, CachedOutput] = {}
        error: BaseException | None = None
        try:
            payloads = [m.payload for m in batch.members]
            outputs = await render_many(batch.record, variants, payloads)
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
