"""Store mode's derived variants, kept in tiers: bytes in memory, then files on local disk.

    VariantTier            protocol: get / put / delete_prefix / close, async
    ├── MemoryBytes        LRU bounded by total bytes; no I/O, sync ``peek`` for the hit path
    ├── DiskBytes          files + a SQLite index under a directory, bounded by a size limit,
    │                      least recently used evicted; shared by one host's worker processes
    └── TieredVariants     memory in front of any number of lower tiers (disk; later the
                           object store); a lower hit is promoted into the tiers above it

A :class:`StoredVariant` is what the serving path needs to answer at once: the bytes, their
Content-Type and a strong ETag (a hash of the bytes, so every worker and every re-derivation
of the same variant agree on it), the pixel size and when it was made.

Keys are built by the caller (``/img/<id>/...#<profile>~<version>``); ``delete_prefix`` drops
every entry whose key starts with a string, which is how an image's variants go at once.
An evicted variant is not lost, only derived again from its master: no tier here is durable
storage, so a tier that fails to read or write is logged and skipped (a miss), never a 500.

:class:`DiskBytes`'s promises (docs/store-tiers.md has the measurements behind the design):

- a value file is written to ``tmp/`` and renamed into ``files/`` *before* its row is
  committed, so after a process crash (kill -9) a row never names a file that is not whole;
- a read checks the bytes against the row's size and ETag (a SHA-256), so a file that a power
  cut (or anything behind the store's back) damaged is a miss, never a response. That is why
  the file is not fsync'ed by default: the fsync made a put 3 to 22 times slower (p50 1 to
  7 ms against 0.3 ms, measured) to make durable what can be derived again (``fsync=True``
  restores it);
- the index is SQLite in WAL mode: readers never wait for a writer, and every process on the
  host sees the same entries; all file and SQLite work runs in worker threads.

Why over 400 lines: like every kind in ``proxy/stores``, the derived variants' tiers sit side
by side in one module, and :class:`DiskBytes` alone is some 380 of them, built around the one
promise above (the file whole before its row); split up, that promise would be read in parts.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import anyio.to_thread
from cachetools import LRUCache

log = logging.getLogger("cutproxy.variant_store")

Clock = Callable[[], float]

#: What one entry costs in memory besides its bytes: the object, its strings, the key and
#: the cache's bookkeeping (measured at ~400 bytes; rounded up).
ENTRY_OVERHEAD = 512
#: A disk read bumps an entry's last use at most this often (seconds): a read that would
#: only move it by less is not worth a write transaction. LRU order is exact to this grain.
TOUCH_AFTER = 60.0
#: Files and temp files younger than this are never swept as orphans: a live writer in
#: another process may be between its rename and its commit.
SWEEP_GRACE = 600.0
SQLITE_TIMEOUT = 10.0  # seconds a writer waits for another process's write transaction
_EVICT_BATCH = 64
_SCHEMA_VERSION = 1


def etag_of(data: bytes) -> str:
    """A strong ETag: the quoted first 128 bits of the bytes' SHA-256."""
    return f'"{hashlib.sha256(data).hexdigest()[:32]}"'


@dataclass(frozen=True, slots=True)
class StoredVariant:
    """One derived variant, ready to serve: 200 with these headers, 304 on its ETag."""

    data: bytes
    content_type: str
    etag: str
    width: int
    height: int
    created_at: float

    @classmethod
    def of(
        cls, data: bytes, content_type: str, width: int, height: int, created_at: float
    ) -> StoredVariant:
        """A variant whose ETag is computed from ``data``."""
        return cls(data, content_type, etag_of(data), width, height, created_at)

    @property
    def nbytes(self) -> int:
        return len(self.data)


@dataclass(frozen=True, slots=True)
class Usage:
    """How full a tier is: its entries and their bytes (the bytes the limit counts)."""

    entries: int
    nbytes: int


class VariantTier(Protocol):
    """One tier of kept variants. Absent is ``None``; a tier may drop entries at any time."""

    name: str

    async def get(self, key: str) -> StoredVariant | None: ...

    async def put(self, key: str, variant: StoredVariant) -> None: ...

    async def delete_prefix(self, prefix: str) -> int:
        """Drop every entry whose key starts with ``prefix``; how many there were."""
        ...

    async def close(self) -> None: ...


# --- memory ------------------------------------------------------------------------------


def _footprint(variant: StoredVariant) -> int:
    return len(variant.data) + ENTRY_OVERHEAD


class MemoryBytes:
    """Variants in this process's memory, least recently used evicted past ``max_bytes``.

    The limit counts each entry's bytes plus :data:`ENTRY_OVERHEAD`, not entries: one 2 MB
    png takes the room of sixty 30 KB thumbnails. A variant larger than the whole limit is
    not kept. For the event loop only (no locks, no I/O): ``peek`` is the hit path.
    """

    name = "memory"

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self._lru: LRUCache[str, StoredVariant] = LRUCache(maxsize=max_bytes, getsizeof=_footprint)

    def peek(self, key: str) -> StoredVariant | None:
        """The variant if it is in memory (and now the most recently used), else None."""
        try:
            return self._lru[key]
        except KeyError:
            return None

    def keep(self, key: str, variant: StoredVariant) -> None:
        if _footprint(variant) > self._lru.maxsize:
            self._lru.pop(key, None)  # never leave an older copy behind a refused one
            return
        self._lru[key] = variant

    def drop_prefix(self, prefix: str) -> int:
        doomed = [key for key in self._lru if key.startswith(prefix)]
        for key in doomed:
            del self._lru[key]
        return len(doomed)

    async def get(self, key: str) -> StoredVariant | None:
        return self.peek(key)

    async def put(self, key: str, variant: StoredVariant) -> None:
        self.keep(key, variant)

    async def delete_prefix(self, prefix: str) -> int:
        return self.drop_prefix(prefix)

    async def close(self) -> None:
        self._lru.clear()

    def usage(self) -> Usage:
        return Usage(len(self._lru), int(self._lru.currsize))

    @property
    def max_bytes(self) -> int:
        return int(self._lru.maxsize)

    def __len__(self) -> int:
        return len(self._lru)

    def __contains__(self, key: object) -> bool:
        return key in self._lru


# --- disk --------------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS variants (
    key TEXT PRIMARY KEY,
    file TEXT NOT NULL,
    size INTEGER NOT NULL,
    content_type TEXT NOT NULL,
    etag TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    created_at REAL NOT NULL,
    used REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS variants_used ON variants (used);
CREATE TABLE IF NOT EXISTS totals (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    entries INTEGER NOT NULL,
    size INTEGER NOT NULL
);
INSERT OR IGNORE INTO totals VALUES (0, 0, 0);
CREATE TRIGGER IF NOT EXISTS variants_added AFTER INSERT ON variants BEGIN
    UPDATE totals SET entries = entries + 1, size = size + NEW.size;
END;
CREATE TRIGGER IF NOT EXISTS variants_removed AFTER DELETE ON variants BEGIN
    UPDATE totals SET entries = entries - 1, size = size - OLD.size;
END;
"""
_COLUMNS = "file, size, content_type, etag, width, height, created_at, used"


def prefix_end(prefix: str) -> str | None:
    """The least string above every string starting with ``prefix`` (None: there is none).

    SQLite compares TEXT as UTF-8 bytes, which orders like code points, so ``prefix <= key
    < prefix_end(prefix)`` is exactly "key starts with prefix", and it uses the key's index.
    """
    chars = list(prefix)
    while chars:
        last = ord(chars.pop())
        if last < 0x10FFFF:
            nxt = last + 1
            if 0xD800 <= nxt <= 0xDFFF:  # surrogates cannot be encoded: skip past them
                nxt = 0xE000
            return "".join(chars) + chr(nxt)
    return None


class DiskBytes:
    """Variants as files under ``directory``, indexed by SQLite, LRU-evicted past ``max_bytes``.

    Layout: ``index.sqlite3`` (WAL), ``files/<ab>/<random>`` (one file per value, never
    rewritten in place) and ``tmp/`` (writes in progress). ``max_bytes`` counts the values'
    bytes (the index and the file system's block rounding are on top). Every process that
    opens the same directory shares the entries, the total and the eviction.

    ``clock`` is the wall clock recorded as last use; it must agree across processes.
    """

    name = "disk"

    def __init__(
        self,
        directory: Path,
        max_bytes: int,
        *,
        clock: Clock = time.time,
        touch_after: float = TOUCH_AFTER,
        fsync: bool = False,
    ) -> None:
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self._clock = clock
        self._touch_after = touch_after
        self._fsync = fsync
        self._files = self.directory / "files"
        self._tmp = self.directory / "tmp"
        self._index = self.directory / "index.sqlite3"
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    async def open(cls, directory: Path, max_bytes: int, **options: object) -> DiskBytes:
        """A store on ``directory``, created if needed (in a worker thread)."""
        store = cls(directory, max_bytes, **options)  # type: ignore[arg-type]
        await anyio.to_thread.run_sync(store.create)
        return store

    def create(self) -> None:
        """Make the directories and the index (safe to race with other processes)."""
        self._files.mkdir(parents=True, exist_ok=True)
        self._tmp.mkdir(parents=True, exist_ok=True)
        db = self._db()
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, _SCHEMA_VERSION):
            raise RuntimeError(f"{self._index} has schema {version}, not {_SCHEMA_VERSION}")
        # One transaction, every statement idempotent: processes starting together agree.
        db.executescript(
            f"BEGIN IMMEDIATE;{_SCHEMA}PRAGMA user_version = {_SCHEMA_VERSION};COMMIT;"
        )

    # --- the async face: everything runs in a worker thread ------------------------------

    async def get(self, key: str) -> StoredVariant | None:
        return await anyio.to_thread.run_sync(self.get_sync, key)

    async def put(self, key: str, variant: StoredVariant) -> None:
        await anyio.to_thread.run_sync(self.put_sync, key, variant)

    async def delete_prefix(self, prefix: str) -> int:
        return await anyio.to_thread.run_sync(self.delete_prefix_sync, prefix)

    async def keys(self, prefix: str = "") -> list[str]:
        return await anyio.to_thread.run_sync(self.keys_sync, prefix)

    async def usage(self) -> Usage:
        return await anyio.to_thread.run_sync(self.usage_sync)

    async def sweep(self, grace: float = SWEEP_GRACE) -> int:
        return await anyio.to_thread.run_sync(self.sweep_sync, grace)

    async def check(self) -> list[str]:
        return await anyio.to_thread.run_sync(self.check_sync)

    async def close(self) -> None:
        await anyio.to_thread.run_sync(self.close_sync)

    # --- the work -----------------------------------------------------------------------

    def get_sync(self, key: str) -> StoredVariant | None:
        db = self._db()
        # Twice: another process may replace the value (and remove the file the row named)
        # between this process's two steps; its new row names a file that is there.
        for _ in range(2):
            row = db.execute(f"SELECT {_COLUMNS} FROM variants WHERE key = ?", (key,)).fetchone()
            if row is None:
                return None
            file, size, content_type, etag, width, height, created_at, used = row
            try:
                data = self._path(file).read_bytes()
                break
            except FileNotFoundError:
                continue  # evicted (the row is gone now too) or replaced
        else:
            return None
        if len(data) != size or etag_of(data) != etag:
            log.warning("disk variant %s is damaged: dropped", file)
            self._forget(db, key, file)
            return None
        now = self._clock()
        if now - used >= self._touch_after:
            with self._write(db):
                db.execute("UPDATE variants SET used = ? WHERE key = ?", (now, key))
        return StoredVariant(data, content_type, etag, width, height, created_at)

    def put_sync(self, key: str, variant: StoredVariant) -> None:
        size = len(variant.data)
        if size > self.max_bytes:
            self.delete_prefix_sync(key, exact=True)  # never leave an older copy behind
            return
        file = uuid.uuid4().hex
        self._write_file(file, variant.data)
        # The file is whole (and durable) under its final name: only now may a row name it.
        db = self._db()
        doomed: list[str] = []
        try:
            with self._write(db):
                old = db.execute("SELECT file FROM variants WHERE key = ?", (key,)).fetchone()
                if old is not None:
                    db.execute("DELETE FROM variants WHERE key = ?", (key,))
                    doomed.append(old[0])
                db.execute(
                    f"INSERT INTO variants (key, {_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        key,
                        file,
                        size,
                        variant.content_type,
                        variant.etag,
                        variant.width,
                        variant.height,
                        variant.created_at,
                        self._clock(),
                    ),
                )
                doomed += self._evict(db, keep=key)
        except BaseException:
            self._unlink(file)
            raise
        for name in doomed:
            self._unlink(name)

    def delete_prefix_sync(self, prefix: str, *, exact: bool = False) -> int:
        db = self._db()
        with self._write(db):
            if exact:
                rows = db.execute("SELECT key, file FROM variants WHERE key = ?", (prefix,))
            else:
                rows = db.execute(*self._range("SELECT key, file FROM variants", prefix))
            doomed = rows.fetchall()
            db.executemany("DELETE FROM variants WHERE key = ?", [(k,) for k, _ in doomed])
        for _, file in doomed:
            self._unlink(file)
        return len(doomed)

    def keys_sync(self, prefix: str = "") -> list[str]:
        rows = self._db().execute(*self._range("SELECT key FROM variants", prefix, " ORDER BY key"))
        return [key for (key,) in rows]

    def usage_sync(self) -> Usage:
        entries, size = self._db().execute("SELECT entries, size FROM totals").fetchone()
        return Usage(int(entries), int(size))

    def sweep_sync(self, grace: float = SWEEP_GRACE) -> int:
        """Remove what crashes leave behind: temp files, and files no row names (older than
        ``grace`` seconds, so a write in flight in another process is never touched)."""
        cutoff = time.time() - grace
        removed = sum(self._unlink_if_old(path, cutoff) for path in _listdir(self._tmp))
        named = {file for (file,) in self._db().execute("SELECT file FROM variants")}
        for folder in _listdir(self._files):
            for path in _listdir(folder):
                if path.name not in named:
                    removed += self._unlink_if_old(path, cutoff)
        return removed

    def check_sync(self) -> list[str]:
        """Keys whose file is missing or does not match its size and ETag (should be none)."""
        bad = []
        for key, file, size, etag in self._db().execute(
            "SELECT key, file, size, etag FROM variants ORDER BY key"
        ):
            try:
                data = self._path(file).read_bytes()
            except FileNotFoundError:
                bad.append(key)
                continue
            if len(data) != size or etag_of(data) != etag:
                bad.append(key)
        return bad

    def close_sync(self) -> None:
        with self._lock:
            self._closed = True
            connections, self._connections = self._connections, []
        for db in connections:
            db.close()

    # --- helpers ------------------------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        """This thread's connection (sqlite3 connections are not for sharing across threads)."""
        if self._closed:
            raise RuntimeError("the disk variant store is closed")
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            with self._lock:
                if self._closed:
                    raise RuntimeError("the disk variant store is closed")
                db = sqlite3.connect(
                    self._index,
                    timeout=SQLITE_TIMEOUT,
                    isolation_level=None,  # autocommit; writes open BEGIN IMMEDIATE themselves
                    check_same_thread=False,  # only so close() may close it from elsewhere
                )
                self._connections.append(db)
            _retry_locked(lambda: db.execute("PRAGMA journal_mode = WAL"))  # readers never wait
            db.execute("PRAGMA synchronous = NORMAL")  # WAL stays consistent; fsync at checkpoint
            self._local.db = db
        return db

    @contextmanager
    def _write(self, db: sqlite3.Connection) -> Iterator[None]:
        """One write transaction, taking the lock up front (no deadlock-prone upgrades)."""
        db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _evict(self, db: sqlite3.Connection, *, keep: str) -> list[str]:
        """Inside a write transaction: drop least recently used rows until under the limit."""
        doomed: list[str] = []
        while True:
            (total,) = db.execute("SELECT size FROM totals").fetchone()
            if total <= self.max_bytes:
                return doomed
            over = total - self.max_bytes
            rows = db.execute(
                "SELECT key, file, size FROM variants WHERE key != ? ORDER BY used LIMIT ?",
                (keep, _EVICT_BATCH),
            ).fetchall()
            if not rows:
                return doomed
            for key, file, size in rows:
                db.execute("DELETE FROM variants WHERE key = ?", (key,))
                doomed.append(file)
                over -= size
                if over <= 0:
                    break

    def _range(self, select: str, prefix: str, tail: str = "") -> tuple[str, tuple[str, ...]]:
        end = prefix_end(prefix)
        if not prefix:
            return select + tail, ()
        if end is None:
            return select + " WHERE key >= ?" + tail, (prefix,)
        return select + " WHERE key >= ? AND key < ?" + tail, (prefix, end)

    def _forget(self, db: sqlite3.Connection, key: str, file: str) -> None:
        with self._write(db):
            db.execute("DELETE FROM variants WHERE key = ? AND file = ?", (key, file))
        self._unlink(file)

    def _path(self, file: str) -> Path:
        return self._files / file[:2] / file

    def _write_file(self, file: str, data: bytes) -> None:
        temp = self._tmp / f"{file}.tmp"
        target = self._path(file)
        try:
            with temp.open("xb") as out:
                out.write(data)
                if self._fsync:
                    out.flush()
                    os.fsync(out.fileno())
            try:
                os.replace(temp, target)
            except FileNotFoundError:
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(temp, target)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise

    def _unlink(self, file: str) -> None:
        self._path(file).unlink(missing_ok=True)

    @staticmethod
    def _unlink_if_old(path: Path, cutoff: float) -> int:
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
                return 1
        except FileNotFoundError:
            pass
        return 0


def _retry_locked(statement: Callable[[], object], attempts: int = 50) -> None:
    """Switching to WAL needs a moment alone with the file; processes starting at once take
    turns (SQLite can report busy here without waiting on its busy timeout)."""
    for attempt in range(attempts):
        try:
            statement()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.02 * (attempt + 1))


def _listdir(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except FileNotFoundError:
        return []


# --- tiers -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hit:
    """A variant found, and the name of the tier that had it (for metrics)."""

    variant: StoredVariant
    tier: str


class TieredVariants:
    """``memory`` in front of ``lower`` tiers, searched in order; itself a :class:`VariantTier`.

    A hit in a lower tier is copied into every tier above it (a disk hit lands in memory; an
    object-store hit lands on disk and in memory). ``put`` writes through to every tier. A
    lower tier that fails a read or a write is logged and counted in ``failures`` and treated
    as a miss: what it held can be derived again. Deleting is never quiet: a failure raises,
    so an image's variants do not outlive it unnoticed.
    """

    name = "tiers"

    def __init__(self, memory: MemoryBytes, *lower: VariantTier) -> None:
        self.memory = memory
        self.lower = lower
        self.failures = 0

    def peek(self, key: str) -> StoredVariant | None:
        """The hit path: memory only, no I/O, no await."""
        return self.memory.peek(key)

    async def find(self, key: str) -> Hit | None:
        variant = self.memory.peek(key)
        if variant is not None:
            return Hit(variant, self.memory.name)
        for depth, tier in enumerate(self.lower):
            try:
                variant = await tier.get(key)
            except Exception as exc:
                self._failed(tier, "get", exc)
                continue
            if variant is not None:
                self.memory.keep(key, variant)
                for above in self.lower[:depth]:
                    await self._put(above, key, variant)
                return Hit(variant, tier.name)
        return None

    async def get(self, key: str) -> StoredVariant | None:
        hit = await self.find(key)
        return None if hit is None else hit.variant

    async def put(self, key: str, variant: StoredVariant) -> None:
        self.memory.keep(key, variant)
        for tier in self.lower:
            await self._put(tier, key, variant)

    async def delete_prefix(self, prefix: str) -> int:
        """Drop the entries from every tier; the number removed, summed over the tiers."""
        removed = self.memory.drop_prefix(prefix)
        for tier in self.lower:
            removed += await tier.delete_prefix(prefix)
        return removed

    async def close(self) -> None:
        await self.memory.close()
        for tier in self.lower:
            await tier.close()

    async def _put(self, tier: VariantTier, key: str, variant: StoredVariant) -> None:
        try:
            await tier.put(key, variant)
        except Exception as exc:
            self._failed(tier, "put", exc)

    def _failed(self, tier: VariantTier, operation: str, exc: Exception) -> None:
        self.failures += 1
        # The key can name a client's image but no secret; the exception's type is enough.
        log.warning(
            "%s tier %s failed (%s): treated as a miss", tier.name, operation, type(exc).__name__
        )
