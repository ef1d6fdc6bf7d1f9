"""Store mode's masters, fetched: the upstream's cut-out downloaded at once and checked.

    fetch_master()   download the upstream's output (it dies in 2 h), bounded in size and time
    check_master()   it decodes as a master (a PNG with alpha) of the size asked for

What passes is kept by a :class:`proxy.stores.masters.MasterStore`. Errors are the proxy's
upstream family (proxy/errors.py):

    UpstreamError              502  the download failed, was cut short or is too large
    ├── MasterError            502  what arrived is no usable master (proxy.variants.derive)
    └── UpstreamTimeoutError   504  the download did not finish in time

Their messages never quote the output URL: its query (and even its path) can carry a
signature.
"""

from __future__ import annotations

import anyio
import anyio.to_thread
import httpx

from proxy.errors import UpstreamError, UpstreamTimeoutError
from proxy.variants.derive import MAX_MASTER_PIXELS, Master, MasterError, decode_master

#: Allowed difference, per side, between a master's size and the size asked for: the
#: upstream rounds when it scales to a pixel budget.
SIZE_SLACK = 1
_DOWNLOAD_CHUNK = 64 * 1024


def check_master(
    data: bytes,
    *,
    expected_size: tuple[int, int] | None,
    max_pixels: int = MAX_MASTER_PIXELS,
) -> Master:
    """Decode ``data`` as a master (a PNG with alpha, not over ``max_pixels``) whose size is
    ``expected_size`` give or take :data:`SIZE_SLACK` pixels per side. CPU-bound: call it in
    a worker thread."""
    what = "the upstream's cut-out"
    master = decode_master(data, max_pixels=max_pixels, what=what)
    if expected_size is not None:
        want_w, want_h = expected_size
        if abs(master.width - want_w) > SIZE_SLACK or abs(master.height - want_h) > SIZE_SLACK:
            raise MasterError(
                f"{what} is {master.width}x{master.height}, expected {want_w}x{want_h}"
            )
    return master


async def fetch_master(
    client: httpx.AsyncClient,
    url: str,
    *,
    expected_size: tuple[int, int] | None,
    max_bytes: int,
    timeout: float,
) -> bytes:
    """Download the upstream's output at ``url`` and return it once it is a usable master.

    The body is streamed and refused past ``max_bytes`` (decoded bytes: a compressed body
    cannot smuggle more). ``timeout`` bounds the whole download, not each read. The checks
    of :func:`check_master` then run in a worker thread. The caller has already checked
    that ``url``'s host is one the upstream may send us to.
    """
    try:
        with anyio.fail_after(timeout):
            data = await _download(client, url, max_bytes=max_bytes, timeout=timeout)
    except TimeoutError:
        raise UpstreamTimeoutError(
            f"downloading the upstream's cut-out took over {timeout:g}s", code="master_timeout"
        ) from None
    await anyio.to_thread.run_sync(_check, data, expected_size)
    return data


def _check(data: bytes, expected_size: tuple[int, int] | None) -> None:
    check_master(data, expected_size=expected_size)


async def _download(
    client: httpx.AsyncClient, url: str, *, max_bytes: int, timeout: float
) -> bytes:
    # Every httpx error is translated here without its text: it can quote the URL.
    try:
        async with client.stream("GET", url, timeout=timeout) as response:
            status = response.status_code
            if not response.is_success:
                gone = " (expired?)" if status in (403, 404, 410) else ""
                raise UpstreamError(
                    f"downloading the upstream's cut-out failed with {status}{gone}",
                    code="master_download_failed",
                    upstream_status=status,
                )
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                raise _too_large(max_bytes)
            body = bytearray()
            async for chunk in response.aiter_bytes(_DOWNLOAD_CHUNK):
                body += chunk
                if len(body) > max_bytes:
                    raise _too_large(max_bytes)
            return bytes(body)
    except httpx.TimeoutException:
        raise TimeoutError from None  # the same answer as the overall deadline
    except httpx.RemoteProtocolError:
        raise UpstreamError(
            "the upstream's cut-out download was cut short (connection closed early)",
            code="master_download_failed",
        ) from None
    except httpx.HTTPError as exc:
        raise UpstreamError(
            f"downloading the upstream's cut-out failed ({type(exc).__name__})",
            code="master_download_failed",
        ) from None


def _too_large(max_bytes: int) -> UpstreamError:
    return UpstreamError(
        f"the upstream's cut-out is over the {max_bytes:,} byte limit", code="master_too_large"
    )
