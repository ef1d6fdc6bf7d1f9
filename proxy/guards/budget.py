"""Cost guards: what a mint costs, how much may be spent, and what was spent and saved.

- :func:`estimate_credits` and :func:`batching_saving` (from :mod:`proxy.upstream.contract`,
  re-exported) price a mint's ``output_variants`` by the upstream's rules, and what one
  token for several variants saves;
- :class:`CreditBudget` caps estimated credits per UTC hour and day, over a
  :class:`proxy.stores.counters.BudgetStore` (on disk for one host's worker processes, or
  in Redis for several hosts);
- :class:`CostLedger` counts credits spent and saved, for operators (and store mode's
  masters minted and variants derived).

Who causes the misses (the client's address and miss rate) is :mod:`proxy.guards.clients`.
Time is always a parameter (``now``, unix seconds).
"""

from __future__ import annotations

from proxy.stores.counters import BudgetStore, CounterStore, Window
from proxy.upstream.contract import batching_saving, estimate_credits

__all__ = [
    "CostLedger",
    "CreditBudget",
    "batching_saving",
    "estimate_credits",
]

# --- the credit budget ----------------------------------------------------------------------

HOUR = 3600.0
DAY = 86400.0


class CreditBudget:
    """Caps the estimated credits misses may spend per UTC clock hour and per UTC day.

    Windows are fixed (``12:00-13:00 UTC``, a UTC calendar day) so every worker and every
    host agrees on them from the clock alone. ``None`` limits are unlimited and not counted.
    """

    def __init__(
        self,
        store: BudgetStore,
        *,
        per_hour: float | None = None,
        per_day: float | None = None,
        namespace: str = "budget",
    ) -> None:
        for name, limit in (("per_hour", per_hour), ("per_day", per_day)):
            if limit is not None and not limit > 0:
                raise ValueError(f"{name} must be greater than 0 or None")
        self._store = store
        self._limits = {"hour": (HOUR, per_hour), "day": (DAY, per_day)}
        self._namespace = namespace

    @property
    def limited(self) -> bool:
        """False when both limits are None: every spend is allowed without a store call."""
        return any(limit is not None for _, limit in self._limits.values())

    async def try_spend(self, amount: float, now: float) -> bool:
        """Count ``amount`` against every limited window at ``now``; False if it won't fit."""
        if amount < 0:
            raise ValueError("amount must not be negative")
        windows = [window for _, window, _ in self._windows(now)]
        if not windows:
            return True
        return await self._store.spend(windows, amount)

    async def refund(self, amount: float, spent_at: float) -> None:
        """Give back ``amount`` spent at ``spent_at`` (e.g. the upstream refused with a 400)."""
        windows = [window for _, window, _ in self._windows(spent_at)]
        if windows and amount > 0:
            await self._store.refund(windows, amount)

    async def remaining(self, now: float) -> dict[str, dict[str, float]]:
        """Per limited window (``hour``, ``day``): limit, spent, remaining and resets_in."""
        out: dict[str, dict[str, float]] = {}
        for name, window, resets_in in self._windows(now):
            spent = await self._store.spent(window.key)
            out[name] = {
                "limit": window.limit,
                "spent": spent,
                "remaining": max(window.limit - spent, 0.0),
                "resets_in": resets_in,
            }
        return out

    async def retry_after(self, amount: float, now: float) -> float | None:
        """Seconds until every window too full for ``amount`` has reset; None if it fits."""
        waits = [
            resets_in
            for _, window, resets_in in self._windows(now)
            if await self._store.spent(window.key) + amount > window.limit
        ]
        return max(waits) if waits else None

    def _windows(self, now: float) -> list[tuple[str, Window, float]]:
        out = []
        for name, (period, limit) in self._limits.items():
            if limit is None:
                continue
            index = int(now // period)
            resets_in = (index + 1) * period - now
            key = f"{self._namespace}:{name}:{index}"
            # Keys are per window, so expiry is only clean-up: keep one spare period.
            out.append((name, Window(key, limit, 2 * period), resets_in))
        return out


# --- the ledger -----------------------------------------------------------------------------

LEDGER_FIELDS = (
    "spent",
    "saved_by_coalescing",
    "saved_by_batching",
    "possibly_spent",
    "ambiguous_mints",
)
#: Store mode's totals (two counts, then credits): masters paid for (an upload's token that
#: carried its master counts), variants derived, and what minting each derived variant in
#: redirect mode would have cost.
STORE_FIELDS = ("masters_minted", "variants_derived", "saved_by_store_mode")


class CostLedger:
    """Running totals of estimated credits: spent, saved by coalescing, saved by batching,
    and what ambiguous mints may have cost.

    "Saved by coalescing" is a mint that waiting requests did not make; "saved by batching"
    is :func:`batching_saving` of a multi-variant mint. An *ambiguous* mint failed after the
    upstream may have charged it (a dropped connection, a timeout, a 5xx): it is counted in
    ``ambiguous_mints`` and its price in ``possibly_spent``, not in ``spent``. Totals live in
    a :class:`CounterStore`, so every worker process adds to and reports the same numbers.
    """

    def __init__(self, store: CounterStore, namespace: str = "ledger") -> None:
        self._store = store
        self._keys = {name: f"{namespace}:{name}" for name in LEDGER_FIELDS}
        self._store_keys = {name: f"{namespace}:{name}" for name in STORE_FIELDS}

    async def record(
        self,
        *,
        spent: float = 0.0,
        saved_by_coalescing: float = 0.0,
        saved_by_batching: float = 0.0,
        possibly_spent: float = 0.0,
        ambiguous_mints: int = 0,
    ) -> None:
        """Add to the totals (credits and a count, never negative)."""
        amounts = {
            "spent": spent,
            "saved_by_coalescing": saved_by_coalescing,
            "saved_by_batching": saved_by_batching,
            "possibly_spent": possibly_spent,
            "ambiguous_mints": float(ambiguous_mints),
        }
        if any(value < 0 for value in amounts.values()):
            raise ValueError("ledger amounts must not be negative")
        nonzero = {self._keys[name]: value for name, value in amounts.items() if value}
        if nonzero:
            await self._store.add(nonzero)

    async def snapshot(self) -> dict[str, float]:
        """``{"spent": ..., "saved_by_coalescing": ..., "saved_by_batching": ...,
        "possibly_spent": ..., "ambiguous_mints": ...}`` (the count a whole number)."""
        values = await self._store.read(list(self._keys.values()))
        totals = {name: values[key] for name, key in self._keys.items()}
        totals["ambiguous_mints"] = round(totals["ambiguous_mints"])
        return totals

    async def record_store(
        self,
        *,
        masters_minted: int = 0,
        variants_derived: int = 0,
        saved_by_store_mode: float = 0.0,
    ) -> None:
        """Add to store mode's totals (counts and credits, never negative)."""
        amounts = {
            "masters_minted": float(masters_minted),
            "variants_derived": float(variants_derived),
            "saved_by_store_mode": saved_by_store_mode,
        }
        if any(value < 0 for value in amounts.values()):
            raise ValueError("ledger amounts must not be negative")
        nonzero = {self._store_keys[name]: value for name, value in amounts.items() if value}
        if nonzero:
            await self._store.add(nonzero)

    async def store_snapshot(self) -> dict[str, float]:
        """``{"masters_minted": n, "variants_derived": n, "saved_by_store_mode": credits}``."""
        values = await self._store.read(list(self._store_keys.values()))
        totals = {name: values[key] for name, key in self._store_keys.items()}
        for name in ("masters_minted", "variants_derived"):
            totals[name] = round(totals[name])
        return totals
