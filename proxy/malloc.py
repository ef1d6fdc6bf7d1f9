"""Give large freed blocks back to the system: glibc's mmap threshold, set once per process.

Freed in a worker thread, glibc keeps a decode's or a render's memory in that thread's
arena: 187 MB after one 7000x7000 decode, 560 MB after three at once. Both the proxy's
server processes (upload checks, :mod:`proxy.images.decoding`) and the local engine's (renders)
call :func:`return_large_blocks` once at start. A ground-floor helper: it imports nothing
from the proxy, so the engine can use it too.
"""

from __future__ import annotations

import ctypes
import ctypes.util

MMAP_THRESHOLD = 1 << 20  # allocations this large get their own mapping, unmapped on free
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number (glibc's malloc.h)


def return_large_blocks(threshold: int = MMAP_THRESHOLD) -> bool:
    """Have glibc map each allocation of ``threshold`` bytes or more on its own and unmap it
    when freed. True when applied; False off glibc (nothing to do there).

    By default glibc raises that threshold (up to 32 MiB) each time a large block is freed,
    so the next image buffers come from an arena, which keeps them once freed. A fixed
    threshold turns that adjustment off.
    """
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        return False
    return bool(mallopt is not None and mallopt(_M_MMAP_THRESHOLD, threshold) == 1)
