"""Writers dying in the middle of writes: what is kept is whole, what is served is whole.

Real child processes (tests/store/worker.py) write large PNGs as fast as they can. Two ways
to die: SIGKILL right after a writer reports a write, so the kill lands somewhere inside the
next one (the file write, the fsync, the rename or the index transaction: wherever it lands,
the test passes); and a file-size limit that kills the writer inside the write syscall
itself, deterministically, with the file half written.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from pathlib import Path

from PIL import Image

from proxy.stores.derived import DiskBytes
from proxy.stores.masters import DiskMasterStore

ROUNDS = 4
WRITERS = 2  # two workers of one host, killed together
DIE_PAST = 1024 * 1024  # between the first (0.6 MB) and the second (1.4 MB) value


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


def die_inside_a_write(args: list[str], tmp_path: Path) -> None:
    """Run one writer with a file-size limit between the first and second value's size."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.store.worker", *args],
        env={**os.environ, "WORKER_DIE_PAST": str(DIE_PAST)},
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == -signal.SIGXFSZ, done.stderr.decode()
    assert done.stdout.split() == [b"1"]  # the first value went in, the second killed it
    assert any(p.stat().st_size == DIE_PAST for p in tmp_path.rglob("*") if p.is_file())


def kill_writers(args: list[str], writes_before_kill: int) -> None:
    """Start :data:`WRITERS` writers at once (``{writer}`` in ``args`` is its number); SIGKILL
    each as soon as it reports its ``writes_before_kill``-th write, so the kill lands inside
    the next one."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.store.worker", *(a.format(writer=i) for a in args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for i in range(WRITERS)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            for _ in range(writes_before_kill):
                line = proc.stdout.readline()
                assert line, proc.stderr.read().decode() if proc.stderr else "writer died"
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
    # Room for about twenty: the writers evict each other, and the last rounds' writes stay.
    limit = 32 * 1024 * 1024
    for round_ in range(ROUNDS):
        kill_writers(["put-loop", str(store), str(limit), str(tmp_path / "values")], 2 + round_)

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
        values = str(tmp_path / "values")
        kill_writers(["master-loop", str(root), values, f"r{round_}w{{writer}}"], 2 + round_)

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


def test_a_variant_cut_off_inside_its_write_is_never_served(tmp_path: Path) -> None:
    originals = noise_pngs(tmp_path / "values")
    store = tmp_path / "store"
    die_inside_a_write(["put-loop", str(store), "100000000", str(tmp_path / "values")], store)
    disk = DiskBytes(store, 100_000_000)
    disk.create()
    assert disk.check_sync() == []
    (key,) = disk.keys_sync()  # the first value only
    found = disk.get_sync(key)
    assert found is not None and found.data in originals
    disk.sweep_sync(grace=0)  # the half-written file goes
    assert all(p.stat().st_size != DIE_PAST for p in store.rglob("*") if p.is_file())
    disk.close_sync()


def test_a_master_cut_off_inside_its_write_is_not_there(tmp_path: Path) -> None:
    originals = noise_pngs(tmp_path / "values")
    root = tmp_path / "masters"
    die_inside_a_write(["master-loop", str(root), str(tmp_path / "values"), "w"], root)
    masters = DiskMasterStore(root)
    (only,) = masters.versions_sync("w-img0")  # the first write, whole
    assert masters.get_sync(only) in originals
    # The second write (w-img0 again, replacing it) died: the first is still what is there,
    # and the half file is a temp that is never taken for a master.
    assert [p.name for p in (root / "w-img0").iterdir() if not p.name.startswith(".")] == [
        only.filename
    ]
