"""A child process for the store tests: another worker on the same disk, or a writer to kill.

    python -m tests.store.worker put <dir> <max_bytes> <key> <file>   put the file's bytes
    python -m tests.store.worker get <dir> <max_bytes> <key>          print the ETag or "miss"
    python -m tests.store.worker put-loop <dir> <max_bytes> <values>  put values until killed
    python -m tests.store.worker master-loop <root> <values> <tag>    put masters until killed

The loops print the number of values written so far after each one, so the parent can kill
them (SIGKILL) in the middle of the next write. With ``WORKER_DIE_PAST=<bytes>`` in the
environment a loop dies *inside* the first write that takes a file past that size: the
kernel writes up to the limit, then kills the process with SIGXFSZ (Python ignores that
signal by default; the worker restores its default action, so no cleanup runs).
"""

from __future__ import annotations

import os
import resource
import signal
import sys
import time
from itertools import count
from pathlib import Path

from proxy.stores.derived import DiskBytes, StoredVariant
from proxy.stores.masters import DiskMasterStore, MasterKey


def _values(folder: str) -> list[bytes]:
    return [p.read_bytes() for p in sorted(Path(folder).iterdir())]


def main(command: str, *args: str) -> None:
    if limit := os.environ.get("WORKER_DIE_PAST"):
        signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
        resource.setrlimit(resource.RLIMIT_FSIZE, (int(limit), int(limit)))
    if command == "master-loop":
        root, folder, tag = args
        masters = DiskMasterStore(Path(root))
        values = _values(folder)
        for i in count():
            # This writer's own images, each written twice: a kill can land on a replacement.
            key = MasterKey(f"{tag}-img{i // 2}", "v1", "medium")
            masters.put_sync(key, values[i % len(values)])
            print(i + 1, flush=True)
        return
    store = DiskBytes(Path(args[0]), int(args[1]))
    store.create()
    if command == "put":
        key, file = args[2:]
        data = Path(file).read_bytes()
        store.put_sync(key, StoredVariant.of(data, "image/png", 1, 1, time.time()))
    elif command == "get":
        found = store.get_sync(args[2])
        print("miss" if found is None else found.etag, flush=True)
    elif command == "put-loop":
        variants = [StoredVariant.of(d, "image/png", 1, 1, time.time()) for d in _values(args[2])]
        tag = f"w{os.getpid()}-{time.monotonic_ns()}"
        for i in count():
            key = f"/img/{tag}/{i % 40}#v1"  # replacements, new keys and evictions alike
            store.put_sync(key, variants[i % len(variants)])
            print(i + 1, flush=True)
    else:
        raise SystemExit(f"unknown command {command!r}")
    store.close_sync()


if __name__ == "__main__":
    main(*sys.argv[1:])
