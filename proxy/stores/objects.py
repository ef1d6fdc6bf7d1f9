"""An S3-compatible object store, where store mode keeps image masters and derived variants.

    ObjectStore              put / get / head / delete / delete_prefix / list / list_info /
                             folders / ensure_bucket over an ObjectStoreConfig
                             (proxy.stores.objects_config)
    Breaker                  shared by the tiers built on a store: after a failure, reads that
                             can do without the store skip it for a few seconds

    ServiceUnavailableError (proxy.errors)
    └── ObjectStoreUnavailableError  503  the store is down, slow or failing (Retry-After)
        └── ObjectStoreDeniedError   503  the store refused the credentials or the operation
    ObjectStoreConfigError (ValueError)   a PROXY_STORE_* value is malformed: raised at start-up
                                          (proxy.stores.objects_config)

The client is ``obstore`` (Rust's ``object_store`` behind native asyncio awaitables; the work
runs on its own threads, so the event loop never waits on a hash or a copy): docs/objectstore.md
has the measurements against ``aiobotocore``. Every call has a deadline; whatever the client
raises is translated here, and neither the keys nor the client's own message (which can quote
the server's reply) ever reaches a public message or a log line. The client keeps no state
that a store outage could spoil, so calls succeed again as soon as the store answers.

Objects are written whole, in one PUT (never multipart), so a reader sees the old object, the
new one or none, never a part. Keys are the proxy's own, relative to the configured prefix,
and ``/``-separated; a prefix in ``list``/``delete_prefix`` is a whole folder (``"a"`` covers
``a/x`` but not ``ab/x``).

Why over 400 lines: it is the one module that talks to the object store; its errors,
deadlines, retries and breaker are read together.
"""

from __future__ import annotations

import asyncio
import builtins
import datetime
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

import httpx
import obstore
import obstore.exceptions
from obstore.store import S3Store

from proxy.errors import ServiceUnavailableError
from proxy.stores.objects_config import (
    CONNECT_TIMEOUT,
    DEFAULT_REGION,
    ObjectStoreConfig,
    valid_key,
)

log = logging.getLogger("cutproxy.objectstore")

RETRY_AFTER = 5.0  # what a 503 tells clients while the store is down
PAGE = 1000  # keys per listing page and per DeleteObjects request (S3's limit)
_SIGNED_URL_LIFETIME = datetime.timedelta(minutes=1)  # used at once, by us only

T = TypeVar("T")

# obstore raises the builtin FileNotFoundError for a missing object; its own class exists too.
_NOT_FOUND: tuple[type[Exception], ...] = (FileNotFoundError, obstore.exceptions.NotFoundError)
_EXISTS: tuple[type[Exception], ...] = (
    obstore.exceptions.AlreadyExistsError,
    obstore.exceptions.PreconditionError,
)
# What the caller handles: the store answered, just not with an object.
_ANSWERS: tuple[type[Exception], ...] = (*_NOT_FOUND, *_EXISTS, StopAsyncIteration)
_DENIED: tuple[type[Exception], ...] = (
    obstore.exceptions.PermissionDeniedError,
    obstore.exceptions.UnauthenticatedError,
)


class ObjectStoreUnavailableError(ServiceUnavailableError):
    """The object store did not answer in time, refused the connection or failed (5xx)."""

    code = "object_store_unavailable"

    def __init__(self, message: str, *, retry_after: float = RETRY_AFTER, detail: str = "") -> None:
        super().__init__(message, retry_after=retry_after)
        self.detail = detail  # for operators' logs: scrubbed of the keys, never public


class ObjectStoreDeniedError(ObjectStoreUnavailableError):
    """The object store refused the credentials, or they may not do what was asked."""

    code = "object_store_denied"


@dataclass(frozen=True)
class ObjectInfo:
    """What ``head`` knows about an object."""

    key: str
    size: int
    etag: str | None
    last_modified: datetime.datetime


class ObjectStore:
    """One bucket (under a prefix) of an S3-compatible store, for one process."""

    def __init__(self, config: ObjectStoreConfig, *, page_size: int = PAGE) -> None:
        self.config = config
        self._page_size = page_size
        self._store = S3Store(config.bucket, **config.client_kwargs())  # type: ignore[arg-type]
        self._secrets = tuple(s for s in (config.access_key, config.secret_key) if s)
        self.reachable = True
        self.failures = 0  # calls that failed because of the store, since start
        self._closed = False

    def __repr__(self) -> str:
        return f"ObjectStore({self.config!r})"

    # --- objects -----------------------------------------------------------------------

    async def put(
        self,
        key: str,
        data: bytes,
        content_type: str,
        *,
        write_once: bool = False,
        cache_control: str | None = None,
    ) -> bool:
        """Store ``data`` whole under ``key``: True. With ``write_once``, an object already
        there is left as it is (``If-None-Match: *``) and the answer is False.
        ``cache_control`` is kept with the object and sent by the store with it (for objects
        readers fetch from the store directly)."""
        _check_key(key)
        attributes: dict[str, str] = {"Content-Type": content_type}
        if cache_control is not None:
            attributes["Cache-Control"] = cache_control
        try:
            await self._call(
                "put",
                lambda: obstore.put_async(
                    self._store,
                    key,
                    data,
                    attributes=attributes,
                    mode="create" if write_once else "overwrite",
                    use_multipart=False,  # one PUT: the object appears whole or not at all
                ),
            )
        except _EXISTS:
            return False
        return True

    async def get(self, key: str, *, timeout: float | None = None) -> bytes | None:
        """The object's bytes, or None when there is no such object. ``timeout`` shortens
        the deadline for a caller that has something better to do than wait (derive)."""
        _check_key(key)

        async def fetch() -> bytes:
            result = await obstore.get_async(self._store, key)
            return bytes(await result.bytes_async())

        try:
            return await self._call("get", fetch, timeout=timeout)
        except _NOT_FOUND:
            return None

    async def head(self, key: str) -> ObjectInfo | None:
        """Size, ETag and time of the object, or None when there is no such object."""
        _check_key(key)
        try:
            meta = await self._call("head", lambda: obstore.head_async(self._store, key))
        except _NOT_FOUND:
            return None
        return ObjectInfo(key, meta["size"], meta["e_tag"], meta["last_modified"])

    async def delete(self, key: str) -> None:
        """Remove the object; removing one that is not there is not an error."""
        _check_key(key)
        try:
            await self._call("delete", lambda: obstore.delete_async(self._store, key))
        except _NOT_FOUND:
            pass

    async def list(self, prefix: str = "") -> AsyncIterator[str]:
        """Every key in the folder ``prefix`` (all keys when empty), a page at a time."""
        if prefix:
            _check_key(prefix)
        pages = obstore.list(
            self._store, prefix or None, chunk_size=self._page_size
        )  # lazy: no request yet
        while True:
            try:
                page = await self._call("list", lambda: anext(pages))
            except StopAsyncIteration:
                return
            for meta in page:
                yield meta["path"]

    async def list_info(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        """Like :meth:`list`, with each object's size, ETag and time (to judge its age)."""
        if prefix:
            _check_key(prefix)
        pages = obstore.list(self._store, prefix or None, chunk_size=self._page_size)
        while True:
            try:
                page = await self._call("list", lambda: anext(pages))
            except StopAsyncIteration:
                return
            for meta in page:
                yield ObjectInfo(meta["path"], meta["size"], meta["e_tag"], meta["last_modified"])

    async def folders(self, prefix: str) -> builtins.list[str]:
        """The names of the folders directly in the folder ``prefix`` (one delimited
        listing: an image's thousand variants count once), sorted. A folder may be named
        with nothing left in it: SeaweedFS keeps listing emptied folders (AWS does not)."""
        _check_key(prefix)
        result = await self._call(
            "list", lambda: obstore.list_with_delimiter_async(self._store, prefix)
        )
        return sorted(path.rstrip("/").rpartition("/")[2] for path in result["common_prefixes"])

    async def delete_prefix(self, prefix: str) -> int:
        """Remove every object in the folder ``prefix``; the number removed."""
        _check_key(prefix)  # an empty prefix would empty the whole store: never by accident
        removed = 0
        batch: builtins.list[str] = []
        async for key in self.list(prefix):
            batch.append(key)
            if len(batch) == self._page_size:
                removed += await self._delete_many(batch)
                batch = []
        if batch:
            removed += await self._delete_many(batch)
        return removed

    async def _delete_many(self, keys: builtins.list[str]) -> int:
        # One DeleteObjects request (S3 takes up to 1000 keys).
        try:
            await self._call("delete", lambda: obstore.delete_async(self._store, keys))
        except _NOT_FOUND:
            pass
        return len(keys)

    # --- the bucket --------------------------------------------------------------------

    async def ensure_bucket(self) -> bool:
        """Create the bucket when it is missing and the credentials allow it: True if it was
        created now. A bucket already there (or created by another replica meanwhile) is
        fine; one that cannot be read or created raises, naming the settings to check."""
        # object_store has no bucket calls: presign HEAD and PUT of the bucket itself with
        # its signer (the same keys, region and addressing) and send them with httpx's bare
        # transport, which (unlike httpx.AsyncClient) logs no URL: a signed one names the key.
        signer = S3Store(self.config.bucket, **self.config.client_kwargs(prefix=False))  # type: ignore[arg-type]
        async with httpx.AsyncHTTPTransport() as transport:
            head = await self._bucket_request(transport, signer, "HEAD")
            if head.status_code == 200:
                return False
            if head.status_code != 404:
                raise self._bucket_refused(head, "read")
            created = await self._bucket_request(transport, signer, "PUT", self._location())
        if created.status_code == 200:
            log.info("object store: created bucket %s", self.config.bucket)
            return True
        if created.status_code == 409 and b"BucketAlreadyOwnedByYou" in created.content:
            return False
        raise self._bucket_refused(created, "create")

    def _location(self) -> bytes:
        """CreateBucket's body: AWS wants the region named unless it is us-east-1."""
        if self.config.region == DEFAULT_REGION:
            return b""
        return (
            '<CreateBucketConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            f"<LocationConstraint>{self.config.region}</LocationConstraint>"
            "</CreateBucketConfiguration>"
        ).encode()

    async def _bucket_request(
        self,
        transport: httpx.AsyncHTTPTransport,
        signer: S3Store,
        method: Literal["HEAD", "PUT"],
        body: bytes = b"",
    ) -> httpx.Response:
        url = await self._call(
            "sign", lambda: obstore.sign_async(signer, method, "", _SIGNED_URL_LIFETIME)
        )
        timeout = httpx.Timeout(self.config.timeout, connect=CONNECT_TIMEOUT)
        request = httpx.Request(
            method, url, content=body, extensions={"timeout": timeout.as_dict()}
        )

        async def send() -> httpx.Response:
            response = await transport.handle_async_request(request)
            await response.aread()
            if response.status_code >= 500:
                raise httpx.HTTPStatusError(
                    "server error", request=response.request, response=response
                )
            return response

        return await self._call("bucket", send)

    def _bucket_refused(self, response: httpx.Response, what: str) -> ObjectStoreDeniedError:
        status = response.status_code
        bucket = self.config.bucket
        if status == 403 and what == "create":
            message = (
                f"the object store bucket {bucket!r} does not exist and the credentials may not "
                "create it: create it, or grant them s3:CreateBucket"
            )
        elif status == 403:
            message = (
                f"the object store refused access to bucket {bucket!r}: check "
                "PROXY_STORE_ACCESS_KEY, PROXY_STORE_SECRET_KEY and their permissions"
            )
        elif status in (301, 307, 400):
            message = (
                f"the object store answered {status} for bucket {bucket!r}: check "
                "PROXY_STORE_REGION, PROXY_STORE_ENDPOINT and PROXY_STORE_ADDRESSING"
            )
        elif status == 409:
            message = f"the object store bucket name {bucket!r} is taken by another account"
        else:
            message = f"the object store could not {what} bucket {bucket!r} (HTTP {status})"
        log.error("%s", message)
        return ObjectStoreDeniedError(message, detail=self._scrub(response.text))

    # --- the boundary ------------------------------------------------------------------

    async def _call(
        self, operation: str, call: Callable[[], Awaitable[T]], *, timeout: float | None = None
    ) -> T:
        """Run one client call within the deadline (``timeout`` if shorter); translate what
        it raises.

        Absent objects, a failed write-once, the end of a listing and malformed keys pass
        through for the caller; everything else becomes an ObjectStoreUnavailableError
        raised ``from None``: the client's message can quote the server's reply, and that
        can quote the access key.
        """
        if self._closed:
            raise RuntimeError("the object store client is closed")
        try:
            async with asyncio.timeout(min(timeout or self.config.timeout, self.config.timeout)):
                result = await call()
        except ValueError:
            raise  # a malformed key: the caller's mistake, nothing was sent
        except _ANSWERS:
            self._succeeded()
            raise
        except _DENIED as exc:
            self._succeeded()  # it answered
            log.error(
                "object store refused %s (%s): check PROXY_STORE_ACCESS_KEY, "
                "PROXY_STORE_SECRET_KEY and their permissions",
                operation,
                type(exc).__name__,
            )
            raise ObjectStoreDeniedError(
                "the object store refused the proxy's credentials", detail=self._scrub(str(exc))
            ) from None
        except (TimeoutError, obstore.exceptions.BaseError, OSError, httpx.HTTPError) as exc:
            raise self._failed(operation, exc, timeout) from None
        self._succeeded()
        return result

    def _failed(
        self, operation: str, exc: BaseException, timeout: float | None = None
    ) -> ObjectStoreUnavailableError:
        self.failures += 1
        timed_out = isinstance(exc, TimeoutError | httpx.TimeoutException)
        deadline = min(timeout or self.config.timeout, self.config.timeout)
        reason = f"did not answer within {deadline:g} s" if timed_out else "failed"
        if self.reachable:
            self.reachable = False
            log.error(
                "object store unavailable on %s: %s (%s); misses that need it answer 503",
                operation,
                reason,
                type(exc).__name__,
            )
        return ObjectStoreUnavailableError(
            f"the object store {reason}; retry later", detail=self._scrub(str(exc))
        )

    def _succeeded(self) -> None:
        if not self.reachable:
            self.reachable = True
            log.warning("object store reachable again")

    def _scrub(self, text: str) -> str:
        """``text`` without the keys (an S3 error body can quote the access key), shortened."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text[:500]

    async def close(self) -> None:
        """Stop using the store: later calls raise. (object_store holds nothing that needs an
        orderly close; its connection pool goes with the client.)"""
        self._closed = True

    async def __aenter__(self) -> ObjectStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class Breaker:
    """Fail fast while the store is known to be down.

    The tiers built on one store share one breaker: after a call fails with
    :class:`ObjectStoreUnavailableError`, ``open`` is true for ``cooldown`` seconds, and a
    caller that can do without the store (a variant it can derive; a master a 503 will ask
    for again) skips it instead of waiting for the call's deadline again. The first call after
    the cooldown goes to the store: an answer closes the breaker, a failure opens it anew. So
    a stalled store costs one deadline per cooldown, not one per request, and nothing needs a
    restart when it is back.
    """

    def __init__(self, cooldown: float = RETRY_AFTER, clock: Callable[[], float] = time.monotonic):
        self.cooldown = cooldown
        self._clock = clock
        self._failed_at: float | None = None
        self.skipped = 0  # calls that did not try the store because the breaker was open

    @property
    def open(self) -> bool:
        return self._failed_at is not None and self._clock() - self._failed_at < self.cooldown

    def skip(self) -> bool:
        """Whether to skip the store now (counted)."""
        if self.open:
            self.skipped += 1
            return True
        return False

    def failed(self) -> None:
        self._failed_at = self._clock()

    def succeeded(self) -> None:
        self._failed_at = None

    async def call(self, call: Callable[[], Awaitable[T]], *, probe: bool = False) -> T:
        """One call to the store through the breaker: while it is open, fail at once
        (``probe``: a call that is how the store is found back, such as a background retry
        or a read that can do without it, goes through anyway)."""
        if not probe and self.skip():
            raise self.unavailable()
        try:
            result = await call()
        except ObjectStoreUnavailableError:
            self.failed()
            raise
        self.succeeded()
        return result

    def unavailable(self) -> ObjectStoreUnavailableError:
        """What a caller that cannot do without the store raises while the breaker is open."""
        remaining = 0.0 if self._failed_at is None else self._failed_at + self.cooldown
        retry_after = max(1.0, remaining - self._clock()) if remaining else RETRY_AFTER
        return ObjectStoreUnavailableError(
            "the object store is unavailable; retry later", retry_after=retry_after
        )


def _check_key(key: str) -> None:
    if not key or not valid_key(key):
        raise ValueError(
            f"object key {key!r} must be '/'-separated names without empty, '.' or '..' parts"
        )
