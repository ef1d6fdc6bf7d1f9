"""kill -9 in the middle of writes: what is kept is whole, what is served is whole.

Real child processes (tests/store/worker.py) write large PNGs as fast as they can; the test
SIGKILLs them right after they report a write, so the kill lands inside the next one (in the
file write, the fsync, the rename or the index transaction).
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from pathlib import Path

from PIL import Image

from proxy.masters import DiskMasterStore
from proxy.variant_store import DiskBytes

ROUNDS = 3
WRITERS = 2  # two workers of one host, killed together


def noise_pngs(folder: Path) -> set[bytes]:
    """Incompressible RGBA PNGs of 0.6 to 2.2 MB: slow enough to write that kills land mid-way."""
    folder.mkdir()
    made = set()
    for i, size in enumerate(((400, 400), (600, 600), (800, 700))):
        image = Image.frombytes("RGBA", size, os.urandom(size[0] * size[1] * 4))
        out = io.BytesIO()
        image.save(out, "PNG", compress_level=1)
        (folder / f"{i}.png").write_bytes(out.getvalue())
        made.add(out.getvalue())
    return made


def decodes(data: bytes) -> bool:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
    return True


def kill_writers(args: list[str], writes_before_kill: int) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.store.worker", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(WRITERS)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            for _ in range(writes_before_kill):
                line = proc.stdout.readline()
                assert line, proc.stderr.read().decode() if proc.stderr else "writer died"
        for proc in procs:
            os.kill(proc.pid, signal.SIGKILL)  # no cleanup of any kind runs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
    assert all(proc.returncode == -signal.SIGKILL for proc in procs)


def test_variants_survive_sigkill_mid_write(tmp_path: Path) -> None:
    originals = noise_pngs(tmp_path / "values")
    store = tmp_path / "store"
    limit = 16 * 1024 * 1024  # room for about ten: the writers evict each other too
    for round_ in range(ROUNDS):
        kill_writers(["put-loop", str(store), str(limit), str(tmp_path / "values")], 3 + round_)

    disk = DiskBytes(store, limit)
    disk.create()
    # Every row names a whole file (checked byte for byte against its size and SHA-256).
    assert disk.check_sync() == []
    keys = disk.keys_sync()
    assert keys
    total = 0
    for key in keys:
        found = disk.get_sync(key)
        assert found is not None, key
        assert found.data in originals, key  # exactly one of the values written, not a part
        assert decodes(found.data)
        total += len(found.data)
    usage = disk.usage_sync()
    assert (usage.entries, usage.nbytes) == (len(keys), total)
    assert usage.nbytes <= limit
    # What the kills left (temp files, files whose row never committed) is swept, and no
    # file that a row names is touched.
    disk.sweep_sync(grace=0)
    assert list((store / "tmp").iterdir()) == []
    on_disk = {p.name for p in (store / "files").rglob("*") if p.is_file()}
    named = {f for (f,) in disk._db().execute("SELECT file FROM variants")}
    assert on_disk == named
    assert disk.check_sync() == []
    disk.close_sync()


def test_masters_survive_sigkill_mid_write(tmp_path: Path) -> None:
    originals = noise_pngs(tmp_path / "values")
    root = tmp_path / "masters"
    for round_ in range(ROUNDS):
        kill_writers(["master-loop", str(root), str(tmp_path / "values")], 3 + round_)

    masters = DiskMasterStore(root)
    images = masters.images_sync()
    assert images
    for image_id in images:
        for key in masters.versions_sync(image_id):
            data = masters.get_sync(key)
            assert data is not None and data in originals, key
            assert decodes(data)
        # Whatever a kill left is a dot-file (a temp), never a master's name.
        for path in (root / image_id).iterdir():
            assert path.name.startswith(".") or path.name.endswith(".png")
