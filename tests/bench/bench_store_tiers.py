"""Store mode's disk tier for derived variants: which implementation, by measurement.

Candidates, each on its own fresh directory, full (every put evicts), 30 KB values:

- ``files+index``: proxy.variant_store.DiskBytes, files written to tmp/ then renamed, a SQLite
  index (WAL) bumping last use at most once a minute per entry; every read checks SHA-256;
- ``files+index, fsync``: the same with an fsync before the rename (what it costs);
- ``files+index, touch every read``: last use written on every read, as exact LRU needs;
- ``diskcache LRU``: ``eviction_policy="least-recently-used"`` (a write transaction on every
  read), the value and its metadata pickled; 30 KB is under ``disk_min_file_size`` (32 KB),
  so it lives inside SQLite;
- ``diskcache LRU, files``: the same with ``disk_min_file_size=0`` (one file per value);
- ``diskcache LRS``: ``least-recently-stored``: reads write nothing, but it is not LRU.

Per candidate: put and get latency in one process (p50/p95, the calls a worker thread would
make), and two processes at once on one directory doing 80% gets / 20% puts (gets p50/p95,
throughput of both together): what several uvicorn workers sharing the disk do. Rounds
alternate the candidates so a busy machine slows them alike.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

VALUE = 30 * 1024
ENTRIES = 200  # the limit holds this many values: puts past it evict
PUTS = 150
GETS = 600
MIXED_OPS = 600  # per process
ROUNDS = 3

CANDIDATES = (
    "files+index",
    "files+index, fsync",
    "files+index, touch every read",
    "diskcache LRU",
    "diskcache LRU, files",
    "diskcache LRS",
)


class Candidate:
    """A sync get/put over one directory, as the tier's worker thread would call it."""

    def __init__(self, name: str, directory: Path) -> None:
        self.name = name
        limit = ENTRIES * VALUE
        if name.startswith("files+index"):
            from proxy.stores.derived import DiskBytes

            store = DiskBytes(
                directory,
                limit,
                fsync=name.endswith(", fsync"),
                touch_after=0.0 if "touch every read" in name else 60.0,
            )
            store.create()
            self._disk: Any = store
            self.close = store.close_sync
        else:
            import diskcache

            cache = diskcache.Cache(
                str(directory),
                size_limit=limit,
                eviction_policy="least-recently-stored" if "LRS" in name else "least-recently-used",
                **({"disk_min_file_size": 0} if "files" in name else {}),
            )
            self._disk = cache
            self.close = cache.close

    def put(self, key: str, data: bytes) -> None:
        from proxy.stores.derived import DiskBytes, StoredVariant

        if isinstance(self._disk, DiskBytes):
            self._disk.put_sync(key, StoredVariant.of(data, "image/webp", 640, 640, time.time()))
        else:
            meta = ("image/webp", f'"{hash(data)}"', 640, 640, time.time())
            self._disk.set(key, (data, meta))

    def get(self, key: str) -> bytes | None:
        from proxy.stores.derived import DiskBytes

        if isinstance(self._disk, DiskBytes):
            found = self._disk.get_sync(key)
            return None if found is None else found.data
        got = self._disk.get(key)
        return None if got is None else got[0]


@dataclass
class Result:
    put: list[float] = field(default_factory=list)
    get: list[float] = field(default_factory=list)
    mixed_get: list[float] = field(default_factory=list)
    mixed_ops: int = 0
    mixed_seconds: float = 0.0
    kept: list[int] = field(default_factory=list)


def _ms(samples: list[float], q: int) -> float:
    return statistics.quantiles(samples, n=100)[q - 1] * 1000


def _values(count: int) -> list[bytes]:
    return [os.urandom(VALUE) for _ in range(count)]


def _fill(candidate: Candidate, count: int) -> list[str]:
    keys = [f"/img/p{i % 50}/640x640.webp#k{i}" for i in range(count)]
    for key, data in zip(keys, _values(count), strict=True):
        candidate.put(key, data)
    return keys


def _single(name: str, result: Result) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-tiers-") as tmp:
        candidate = Candidate(name, Path(tmp))
        keys = _fill(candidate, ENTRIES)
        for i, data in enumerate(_values(PUTS)):
            started = time.perf_counter()
            candidate.put(f"/img/new/{i}#k", data)
            result.put.append(time.perf_counter() - started)
        # What is still there after the evicting puts (diskcache counts an inline value by
        # the SQLite file's size, which never shrinks, so it may keep far fewer).
        live = [key for key in keys if candidate.get(key) is not None]
        new = sum(candidate.get(f"/img/new/{i}#k") is not None for i in range(PUTS))
        result.kept.append(len(live) + new)
        for _ in range(GETS):
            key = random.choice(live)
            started = time.perf_counter()
            found = candidate.get(key)
            result.get.append(time.perf_counter() - started)
            assert found is not None, (name, key)
        candidate.close()


def _mixed(name: str, result: Result) -> None:
    """Two processes on one directory, started together."""
    with tempfile.TemporaryDirectory(prefix="bench-tiers-") as tmp:
        directory = Path(tmp) / "store"
        candidate = Candidate(name, directory)
        _fill(candidate, ENTRIES)
        candidate.close()
        go = Path(tmp) / "go"
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.bench.bench_store_tiers",
                    name,
                    str(directory),
                    str(go),
                ],
                stdout=subprocess.PIPE,
            )
            for _ in range(2)
        ]
        time.sleep(1.0)  # both imported and waiting
        started = time.perf_counter()
        go.touch()
        outputs = [json.loads(p.communicate()[0]) for p in procs]
        result.mixed_seconds += time.perf_counter() - started
        for output in outputs:
            result.mixed_get += output["gets"]
            result.mixed_ops += output["ops"]


def _worker(name: str, directory: str, go: str) -> None:
    candidate = Candidate(name, Path(directory))
    keys = [f"/img/p{i % 50}/640x640.webp#k{i}" for i in range(ENTRIES)]
    values = _values(16)
    rng = random.Random(os.getpid())
    while not os.path.exists(go):
        time.sleep(0.005)
    gets: list[float] = []
    for i in range(MIXED_OPS):
        key = rng.choice(keys)
        if rng.random() < 0.2:
            candidate.put(key, values[i % len(values)])
        else:
            started = time.perf_counter()
            candidate.get(key)
            gets.append(time.perf_counter() - started)
    candidate.close()
    print(json.dumps({"gets": gets, "ops": MIXED_OPS}))


def run() -> list[tuple[str, str, str]]:
    results = {name: Result() for name in CANDIDATES}
    for round_ in range(ROUNDS):
        order = CANDIDATES if round_ % 2 == 0 else tuple(reversed(CANDIDATES))
        for name in order:
            _single(name, results[name])
            _mixed(name, results[name])
    load = os.getloadavg()[0]
    rows = [
        (
            f"disk tier, {VALUE // 1024} KB values, {ENTRIES} held, 2 CPUs, load {load:.1f}",
            "p50/p95 ms per call in one process; 2 processes 80/20 get/put",
            "",
        )
    ]
    target = "files+index: get <= diskcache LRU (proxy.variant_store uses it)"
    describe: Callable[[Result], str] = lambda r: (  # noqa: E731
        f"put {_ms(r.put, 50):.2f}/{_ms(r.put, 95):.2f}, get {_ms(r.get, 50):.2f}/"
        f"{_ms(r.get, 95):.2f}; 2 procs: get {_ms(r.mixed_get, 50):.2f}/"
        f"{_ms(r.mixed_get, 95):.2f}, {r.mixed_ops / r.mixed_seconds:,.0f} ops/s; "
        f"kept {min(r.kept)}-{max(r.kept)} of {ENTRIES} that fit"
    )
    for name in CANDIDATES:
        rows.append((name, describe(results[name]), target if name == "files+index" else ""))
    return rows


if __name__ == "__main__":
    if len(sys.argv) == 4:
        _worker(*sys.argv[1:])
    else:
        for row in run():
            print(" | ".join(row))
