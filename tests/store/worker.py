"""A child process for the store tests: another worker on the same disk, or a writer to kill.

    python -m tests.store.worker put <dir> <max_bytes> <key> <file>   put the file's bytes
    python -m tests.store.worker get <dir> <max_bytes> <key>          print the ETag or "miss"
    python -m tests.store.worker put-loop <dir> <max_bytes> <values>  put values until killed
    python -m tests.store.worker master-loop <root> <values>          put masters until killed

The loops print the number of values written so far after each one, so the parent can kill
them (SIGKILL) in the middle of the next write.
"""

from __future__ import annotations

import sys
import time
from itertools import count
from pathlib import Path

from proxy.masters import DiskMasterStore, MasterKey
from proxy.variant_store import DiskBytes, StoredVariant


def _values(folder: str) -> list[bytes]:
    return [p.read_bytes() for p in sorted(Path(folder).iterdir())]


def main(command: str, *args: str) -> None:
    if command == "master-loop":
        root, folder = args
        masters = DiskMasterStore(Path(root))
        values = _values(folder)
        for i in count():
            # A few images, rewritten over and over: a kill can land on a replacement too.
            key = MasterKey(f"img{i % 5}", f"v{i % 3}", "medium")
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
        values = _values(args[2])
        tag = f"w{id(store)}-{time.monotonic_ns()}"
        for i in count():
            data = values[i % len(values)]
            key = f"/img/{tag}/{i % 40}#v1"  # replacements, new keys and evictions alike
            store.put_sync(key, StoredVariant.of(data, "image/png", 1, 1, time.time()))
            print(i + 1, flush=True)
    else:
        raise SystemExit(f"unknown command {command!r}")
    store.close_sync()


if __name__ == "__main__":
    main(*sys.argv[1:])
