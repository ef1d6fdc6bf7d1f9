"""Prometheus metrics: what an operator watches (hit rates, upstream latency, credits spent).

One :class:`Metrics` per app holds its own registry, so tests can build many apps in one
process. With several worker processes (``cutproxy serve --workers N``) each worker counts
into files under ``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's multiprocess mode, chosen
by that variable when prometheus_client is first imported) and ``/metrics`` adds up every
worker's files, so any worker answers a scrape with the totals of all of them.

Names follow Prometheus conventions: counters end in ``_total``, durations are histograms in
``_seconds``. Labels have small, fixed value sets (route templates, never raw paths).

The per-request counts (requests, their durations, cache results) are tallied in plain
integers and added to the Prometheus metrics in batches (:class:`Tally`): a counter's
``inc()`` takes a lock, and in multiprocess mode writes a file, which is most of what a cache
hit would otherwise cost. A scrape adds its own worker's tally first, so one process's
``/metrics`` is exact; another worker's counts reach it within :data:`FLUSH_SECONDS`.

Why over 400 lines: every metric is declared here once, with its help text and labels, so
an operator has one place to read what a dashboard can show.
"""

from __future__ import annotations

import asyncio
import glob
import os
import shutil
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio.to_thread
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Metric,
    generate_latest,
    multiprocess,
)
from starlette.requests import Request
from starlette.responses import Response

from proxy.upstream.contract import estimate_credits

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Hits answer in well under a millisecond, misses take seconds: the buckets span both.
REQUEST_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
# How long a worker's tallied counts wait before they are added to the Prometheus metrics.
FLUSH_SECONDS = 1.0

# A derivation from a cached master takes ~15 ms (jpg) to ~150 ms (avif); decoding adds ~60 ms.
DERIVE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

UPSTREAM_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0, 300.0)


def multiprocess_dir(environ: Mapping[str, str] | None = None) -> Path | None:
    """The directory of multiprocess mode, if this process runs in it.

    prometheus_client decides from this variable alone (at import), so the proxy must agree
    with it rather than keep a setting of its own.
    """
    value = (os.environ if environ is None else environ).get(MULTIPROC_ENV, "")
    return Path(value) if value else None


def reset_multiprocess_dir(directory: Path) -> None:
    """Create ``directory`` empty: counts left by an earlier run must not be added in."""
    if directory.exists():
        for item in directory.iterdir():
            if item.is_file() and item.suffix == ".db":
                item.unlink()
            elif item.is_dir():
                shutil.rmtree(item)
    directory.mkdir(parents=True, exist_ok=True)


_METHODS = frozenset(
    ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT")
)


class _WorkerFiles(multiprocess.MultiProcessCollector):
    """Every worker's metrics files added up, but those still empty: prometheus_client
    creates a file before it sizes it, and reading one in that moment (or one a worker
    killed in it left behind) fails the whole scrape (prometheus/client_python#1199)."""

    def collect(self) -> Iterable[Metric]:
        files = []
        for name in glob.glob(os.path.join(self._path, "*.db")):
            try:
                if os.path.getsize(name) > 0:
                    files.append(name)
            except OSError:  # gone since the glob: a worker's files removed as it stopped
                pass
        return self.merge(files, accumulate=True)


class _Pending:
    """One route, method and status: requests answered, their seconds, per bucket."""

    __slots__ = ("buckets", "count", "seconds")

    def __init__(self) -> None:
        self.count = 0
        self.seconds = 0.0
        # As the histogram keeps them: one count per bucket (not cumulative), +Inf last.
        self.buckets = [0] * (len(REQUEST_BUCKETS) + 1)


class Tally:
    """The per-request counts, kept in plain numbers and added to Prometheus in one go.

    Only the event loop's thread counts and flushes: a flush is scheduled there
    :data:`FLUSH_SECONDS` after the first count since the last one, and a scrape flushes
    before it reads.
    """

    def __init__(
        self,
        requests: Counter,
        request_seconds: Histogram,
        cache_results: Counter,
        hit_path_answers: Counter | None = None,
    ) -> None:
        self._requests_metric = requests
        self._seconds_metric = request_seconds
        self._tiers_metric = cache_results
        self._hit_path_metric = hit_path_answers
        self._requests: dict[tuple[str, str, int], _Pending] = {}
        self._tiers: dict[str, int] = {}
        self._hit_path = 0
        self._scheduled = False

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        pending = self._requests.get((route, method, status))
        if pending is None:
            pending = self._requests[(route, method, status)] = _Pending()
        pending.count += 1
        pending.seconds += seconds
        # The first bound at or above the duration, as Histogram.observe files it.
        pending.buckets[bisect_left(REQUEST_BUCKETS, seconds)] += 1
        if not self._scheduled:
            self._schedule()

    def tier(self, label: str) -> None:
        self._tiers[label] = self._tiers.get(label, 0) + 1
        if not self._scheduled:
            self._schedule()

    def hit_path(self, route: str, method: str, status: int, seconds: float) -> None:
        """:meth:`request`, answered by the hit path alone."""
        self._hit_path += 1
        self.request(route, method, status, seconds)

    def _schedule(self) -> None:
        self._scheduled = True
        try:
            asyncio.get_running_loop().call_later(FLUSH_SECONDS, self.flush)
        except RuntimeError:  # counted outside an event loop: nothing to batch with
            self.flush()

    def flush(self) -> None:
        """Add everything counted since the last flush to the Prometheus metrics."""
        self._scheduled = False
        requests, self._requests = self._requests, {}
        tiers, self._tiers = self._tiers, {}
        hit_path, self._hit_path = self._hit_path, 0
        if hit_path and self._hit_path_metric is not None:
            self._hit_path_metric.inc(hit_path)
        for (route, method, status), pending in requests.items():
            self._requests_metric.labels(route, method, str(status)).inc(pending.count)
            histogram = self._seconds_metric.labels(route)
            # Histogram has no "observe many": its sum and (non-cumulative) bucket values
            # are what observe() adds to; tests/ops/test_metrics.py checks they agree.
            histogram._sum.inc(pending.seconds)
            for bucket, count in zip(histogram._buckets, pending.buckets, strict=True):
                if count:
                    bucket.inc(count)
        for label, count in tiers.items():
            self._tiers_metric.labels(label).inc(count)


class Metrics:
    """Every metric the proxy exports, and the hooks the services call to feed them."""

    def __init__(
        self,
        *,
        multiprocess_path: Path | None = None,
        shared_tier: str = "disk",
        store_mode: bool = False,
    ) -> None:
        self.multiprocess_path = multiprocess_path
        # The shared tier is named by what it is (disk, redis) in labels and logs.
        self.shared_tier = shared_tier
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "cutproxy_http_requests",
            "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "cutproxy_http_request_duration_seconds",
            "Time from a request's arrival to the end of its response, by route template.",
            ["route"],
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.requests_in_flight = Gauge(
            "cutproxy_http_requests_in_flight",
            "Requests being answered now (memory hits answer without waiting: not counted).",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.cache_results = Counter(
            "cutproxy_cache_results",
            "Variant lookups by where the answer came from: memory, disk (or redis: the "
            "shared tier), miss (rendered upstream) or coalesced (waited for another "
            "request's miss).",
            ["tier"],
            registry=r,
        )
        self.coalesced_waiters = Gauge(
            "cutproxy_coalesced_waiters",
            "Requests waiting now for a miss that another request started.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.misses_in_flight = Gauge(
            "cutproxy_misses_in_flight",
            "Misses being rendered at the upstream now.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.upstream_calls = Counter(
            "cutproxy_upstream_calls",
            "Calls to the upstream API by endpoint (token, process) and outcome (HTTP status, "
            "timeout, unreachable); every retry attempt counts.",
            ["endpoint", "outcome"],
            registry=r,
        )
        self.upstream_seconds = Histogram(
            "cutproxy_upstream_call_duration_seconds",
            "Duration of one upstream call attempt, by endpoint.",
            ["endpoint"],
            buckets=UPSTREAM_BUCKETS,
            registry=r,
        )
        self.tokens_minted = Counter(
            "cutproxy_tokens_minted",
            "Upstream tokens minted (credits are charged per token), by purpose: variants "
            "(rendering) or upload (sending an original).",
            ["purpose"],
            registry=r,
        )
        self.variants_minted = Counter(
            "cutproxy_variants_minted",
            "Output variants ordered in minted tokens.",
            registry=r,
        )
        self.credits_spent = Counter(
            "cutproxy_estimated_credits_spent",
            "Credits the minted tokens cost by the upstream's published price rules (an "
            "estimate: the upstream's own bill is authoritative).",
            registry=r,
        )
        self.ambiguous_mints = Counter(
            "cutproxy_ambiguous_mints",
            "Mints that failed after the upstream may have charged for them (the connection "
            "dropped after the request went out, a timeout, a 5xx): never retried, their "
            "credits counted as possibly spent; by purpose (variants, upload).",
            ["purpose"],
            registry=r,
        )
        self.credits_possibly_spent = Counter(
            "cutproxy_estimated_credits_possibly_spent",
            "Credits the ambiguous mints would have cost if the upstream charged them.",
            registry=r,
        )
        self.short_lived_outputs = Counter(
            "cutproxy_short_lived_outputs",
            "Output URLs whose own expiry left less than twice PROXY_TTL_MARGIN: cached for "
            "half their remaining life instead.",
            registry=r,
        )
        self.reuploads = Counter(
            "cutproxy_reuploads",
            "Originals uploaded again for an image the proxy already knew (the upstream had "
            "forgotten the earlier upload, or an operator replaced the image).",
            registry=r,
        )
        self.shared_store_unavailable = Counter(
            "cutproxy_shared_store_unavailable",
            "Operations on the shared store (Redis) that failed because it was unreachable, "
            "by operation; while it is down, misses answer 503 and memory hits still work.",
            ["operation"],
            registry=r,
        )
        self.hit_path_errors = Counter(
            "cutproxy_hit_path_errors",
            "Requests the hit path failed on (a bug: each is logged, at most once a minute "
            "with a count) and passed to the full stack, which answered them.",
            registry=r,
        )
        self.hit_path_answers = Counter(
            "cutproxy_hit_path_answers",
            "Requests the hit path answered by itself, in front of the full stack (memory "
            "hits: redirect mode's 302s, store mode's 200s and 304s); also counted in "
            "cutproxy_http_requests_total.",
            registry=r,
        )
        # --- guards: what misses cost and what was not spent --------------------------------
        self.credits_saved = Counter(
            "cutproxy_credits_saved",
            "Estimated credits not spent: by coalescing (requests that waited for another's "
            "mint) or batching (variants of one image minted in one token).",
            ["by"],
            registry=r,
        )
        self.credits_budget_remaining = Gauge(
            "cutproxy_credits_budget_remaining",
            "Estimated credits left in the budget window (hour, day), as last seen by any "
            "worker; only limited windows are reported.",
            ["window"],
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.misses_refused = Counter(
            "cutproxy_misses_refused",
            "Misses not minted because the client's miss rate (client_rate) or the credit "
            "budget (budget) was spent, by answer: the nearest cached size (fallback) or 429.",
            ["reason", "answer"],
            registry=r,
        )
        for by in ("coalescing", "batching"):
            self.credits_saved.labels(by)
        for tier in ("memory", shared_tier, "miss", "coalesced"):
            self.cache_results.labels(tier)
        self.tally = Tally(
            self.requests, self.request_seconds, self.cache_results, self.hit_path_answers
        )
        self.store_mode = store_mode
        if store_mode:
            self._store_metrics(r)
        for purpose in ("variants", "upload"):
            self.tokens_minted.labels(purpose)
            self.ambiguous_mints.labels(purpose)

    def _store_metrics(self, r: CollectorRegistry) -> None:
        """Store mode's metrics (PROXY_MODE=store only: redirect mode exports none of them)."""
        self.masters_minted = Counter(
            "cutproxy_masters_minted",
            "Store mode: masters paid for (one token each: a request's, a warm-up's, or an "
            "upload's that carried its master).",
            registry=r,
        )
        self.variants_derived = Counter(
            "cutproxy_variants_derived",
            "Store mode: variants derived from a master (none of them minted).",
            registry=r,
        )
        self.derive_seconds = Histogram(
            "cutproxy_derive_seconds",
            "Store mode: CPU-bound time of one derivation in a worker thread (waiting for the "
            "limiter not included).",
            buckets=DERIVE_BUCKETS,
            registry=r,
        )
        self.variant_bytes_kept = Gauge(
            "cutproxy_variant_bytes_kept",
            "Store mode: derived variants' bytes kept, by tier: memory (per worker; the "
            "fullest worker's) and disk (the host's, shared by its workers).",
            ["tier"],
            registry=r,
            multiprocess_mode="livemax",
        )
        for tier in ("memory", "disk", "derived", "coalesced"):
            self.cache_results.labels(tier)

    def name_shared_tier(self, shared: object) -> None:
        """Label the shared tier by its kind: ``DiskTier`` → disk, ``RedisTier`` → redis."""
        name = type(shared).__name__.removesuffix("Tier").lower()
        self.shared_tier = name or "shared"
        self.cache_results.labels(self.shared_tier)

    # -- hooks the services call -----------------------------------------------------------
    def tier(self, tier: str) -> str:
        """The label for a service tier name (``shared`` becomes the shared tier's kind)."""
        return self.shared_tier if tier == "shared" else tier

    def resolved(self, tier: str) -> None:
        self.tally.tier(self.tier(tier))

    def waiting(self, delta: int) -> None:
        self.coalesced_waiters.inc(delta)

    def rendering(self, delta: int) -> None:
        self.misses_in_flight.inc(delta)

    def upstream_call(self, endpoint: str, outcome: str, seconds: float) -> None:
        self.upstream_calls.labels(endpoint, outcome).inc()
        self.upstream_seconds.labels(endpoint).observe(seconds)

    def minted(
        self, output_variants: Sequence[Mapping[str, Any]], unique_filename: str | None
    ) -> None:
        """A token was minted: without a ``unique_filename`` it is for an upload."""
        self.tokens_minted.labels("variants" if unique_filename else "upload").inc()
        self.variants_minted.inc(len(output_variants))
        self.credits_spent.inc(estimate_credits(output_variants))

    def ambiguous_mint(
        self, output_variants: Sequence[Mapping[str, Any]], unique_filename: str | None
    ) -> None:
        """A mint failed after the upstream may have charged for it."""
        self.ambiguous_mints.labels("variants" if unique_filename else "upload").inc()
        self.credits_possibly_spent.inc(estimate_credits(output_variants))

    def short_lived_output(self) -> None:
        self.short_lived_outputs.inc()

    def reuploaded(self) -> None:
        self.reuploads.inc()

    def credits_saved_by(self, by: str, credits: float) -> None:
        self.credits_saved.labels(by).inc(credits)

    def budget_remaining(self, window: str, credits: float) -> None:
        self.credits_budget_remaining.labels(window).set(credits)

    def miss_refused(self, reason: str, answer: str) -> None:
        self.misses_refused.labels(reason, answer).inc()

    # -- store mode's hooks (the master service, the deriver, the store service) ---------
    def master_found(self, source: str) -> None:
        """Counted per request by :meth:`resolved`; nothing more to count."""

    def master_adopted(self) -> None:
        """Counted as minted by :meth:`master_minted` (the upload's token paid for it)."""

    def master_minted(self) -> None:
        self.masters_minted.inc()

    def variant_found(self, tier: str) -> None:
        """Counted per request by :meth:`resolved`; nothing more to count."""

    def variant_derived(self, seconds: float) -> None:
        self.variants_derived.inc()
        self.derive_seconds.observe(seconds)

    def bytes_kept(self, tier: str, nbytes: int) -> None:
        self.variant_bytes_kept.labels(tier).set(nbytes)

    def hit_path_failed(self) -> None:
        self.hit_path_errors.inc()

    def shared_store_failed(self, operation: str) -> None:
        self.shared_store_unavailable.labels(operation).inc()

    def request_done(self, route: str, method: str, status: int, seconds: float) -> None:
        # Some servers (h11) pass any token as a method: label only the ones HTTP defines.
        self.tally.request(route, method if method in _METHODS else "other", status, seconds)

    def hit_path_answered(self, route: str, method: str, status: int, seconds: float) -> None:
        """:meth:`request_done` for a request the hit path answered by itself."""
        self.tally.hit_path(route, method, status, seconds)

    # -- exposition ------------------------------------------------------------------------
    def exposition(self) -> bytes:
        """The text format, this process's tally included (call it on the event loop)."""
        self.tally.flush()
        return self._collect()

    def _collect(self) -> bytes:
        """This process's registry, or every worker's files added up."""
        if self.multiprocess_path is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        _WorkerFiles(registry, path=str(self.multiprocess_path))
        return generate_latest(registry)

    def process_exited(self) -> None:
        """Forget this worker's live gauges (in-flight counts) once it stops."""
        self.tally.flush()
        if self.multiprocess_path is not None:
            multiprocess.mark_process_dead(os.getpid(), str(self.multiprocess_path))

    async def endpoint(self, request: Request) -> Response:
        """``GET /metrics`` (off the event loop: in multiprocess mode it reads files)."""
        self.tally.flush()  # here, on the loop: the tally is only touched from its thread
        return Response(
            await anyio.to_thread.run_sync(self._collect),
            media_type=CONTENT_TYPE_LATEST,
            headers={"Cache-Control": "no-store"},
        )
