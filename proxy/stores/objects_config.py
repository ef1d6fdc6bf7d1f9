"""Where the object store is and how to reach it: PROXY_STORE_* parsed and checked at start-up.

    ObjectStoreConfig        bucket, prefix, endpoint, region, keys, addressing style, timeout
    ObjectStoreConfigError   a PROXY_STORE_* value is malformed: the message names the variable
                             (a SettingsError: the CLI reports it like any other setting)

The client built from it is :class:`proxy.stores.objects.ObjectStore`. Keys are masked in
``repr``, so a configuration can be logged.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

from proxy.settings import Settings, SettingsError

if TYPE_CHECKING:
    from obstore.store import ClientConfig, RetryConfig

AddressingStyle = Literal["path", "virtual"]

DEFAULT_REGION = "us-east-1"
DEFAULT_TIMEOUT = 10.0  # seconds for one call, retries included
CONNECT_TIMEOUT = 2.0  # an unreachable store is known well before the call's deadline
MAX_RETRIES = 2  # connection errors and 5xx, with object_store's jittered backoff

# S3's bucket naming rules (the common subset every provider accepts).
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class ObjectStoreConfigError(SettingsError):
    """A PROXY_STORE_* value is malformed or inconsistent; the message names the variable."""


@dataclass(frozen=True)
class ObjectStoreConfig:
    """Where the objects live and how to reach them. Keys are masked in ``repr``."""

    bucket: str
    prefix: str = ""
    endpoint: str | None = None  # unset: AWS, from the region
    region: str = DEFAULT_REGION
    access_key: str | None = None  # unset: the client's usual sources (env, instance role)
    secret_key: str | None = None
    addressing_style: AddressingStyle | None = None  # unset: path with an endpoint, else virtual
    timeout: float = DEFAULT_TIMEOUT

    def __post_init__(self) -> None:
        if not _BUCKET.match(self.bucket) or ".." in self.bucket:
            raise ObjectStoreConfigError(
                f"PROXY_STORE_URL: bucket {self.bucket!r} is not a valid S3 bucket name "
                "(3-63 characters: lower-case letters, digits, '.' and '-')"
            )
        if self.prefix and not valid_key(self.prefix):
            raise ObjectStoreConfigError(
                f"PROXY_STORE_URL: prefix {self.prefix!r} must be '/'-separated names "
                "without empty, '.' or '..' parts"
            )
        if self.endpoint is not None:
            parts = urlsplit(self.endpoint)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ObjectStoreConfigError(
                    "PROXY_STORE_ENDPOINT must be an http(s) URL such as http://127.0.0.1:8333"
                )
            if parts.path not in ("", "/") or parts.query or parts.fragment or "@" in parts.netloc:
                raise ObjectStoreConfigError(
                    "PROXY_STORE_ENDPOINT must be scheme://host[:port], without a path or "
                    "credentials (those go in PROXY_STORE_ACCESS_KEY and PROXY_STORE_SECRET_KEY)"
                )
        if not self.region.strip():
            raise ObjectStoreConfigError("PROXY_STORE_REGION must not be blank")
        if (self.access_key is None) != (self.secret_key is None):
            raise ObjectStoreConfigError(
                "PROXY_STORE_ACCESS_KEY and PROXY_STORE_SECRET_KEY are set together or not at all"
            )
        if self.access_key is not None and not (self.access_key.strip() and self.secret_key):
            raise ObjectStoreConfigError(
                "PROXY_STORE_ACCESS_KEY and PROXY_STORE_SECRET_KEY must not be blank"
            )
        if self.addressing_style not in (None, "path", "virtual"):
            raise ObjectStoreConfigError("PROXY_STORE_ADDRESSING must be path or virtual")
        if not self.timeout > 0:
            raise ObjectStoreConfigError("PROXY_STORE_TIMEOUT must be greater than 0")

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        endpoint: str | None = None,
        region: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        addressing_style: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> ObjectStoreConfig:
        """Parse ``s3://bucket[/prefix]`` and the other PROXY_STORE_* values."""
        parts = urlsplit(url.strip())
        if parts.scheme != "s3" or not parts.netloc:
            raise ObjectStoreConfigError(
                "PROXY_STORE_URL must look like s3://bucket or s3://bucket/prefix"
            )
        if parts.query or parts.fragment or "@" in parts.netloc or ":" in parts.netloc:
            raise ObjectStoreConfigError(
                "PROXY_STORE_URL takes only a bucket and a prefix: s3://bucket/prefix "
                "(the endpoint and keys have their own PROXY_STORE_* variables)"
            )
        if addressing_style not in (None, "path", "virtual"):
            raise ObjectStoreConfigError("PROXY_STORE_ADDRESSING must be path or virtual")
        return cls(
            bucket=parts.netloc,
            prefix=parts.path.strip("/"),
            endpoint=endpoint.rstrip("/") if endpoint else None,
            region=region or DEFAULT_REGION,
            access_key=access_key or None,
            secret_key=secret_key or None,
            addressing_style=addressing_style,  # type: ignore[arg-type]  # checked above
            timeout=timeout,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> ObjectStoreConfig | None:
        """The store PROXY_STORE_* name, or None when PROXY_STORE_URL is unset."""
        if settings.store_url is None:
            return None
        return cls.from_url(
            settings.store_url,
            endpoint=settings.store_endpoint,
            region=settings.store_region,
            access_key=settings.store_access_key,
            secret_key=settings.store_secret_key,
            addressing_style=settings.store_addressing,
            timeout=settings.store_timeout,
        )

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    @property
    def style(self) -> AddressingStyle:
        if self.addressing_style is not None:
            return self.addressing_style
        return "path" if self.endpoint else "virtual"

    def __repr__(self) -> str:
        masked = "***" if self.access_key else None
        return (
            f"ObjectStoreConfig(url={self.url!r}, endpoint={self.endpoint!r}, "
            f"region={self.region!r}, access_key={masked!r}, secret_key={masked!r}, "
            f"addressing_style={self.style!r}, timeout={self.timeout!r})"
        )

    __str__ = __repr__

    def client_kwargs(self, *, prefix: bool = True) -> dict[str, object]:
        """``S3Store`` keyword arguments for this configuration (the bucket goes first)."""
        kwargs: dict[str, object] = {
            "region": self.region,
            "virtual_hosted_style_request": self.style == "virtual",
        }
        if prefix and self.prefix:
            kwargs["prefix"] = self.prefix
        if self.endpoint:
            endpoint = self.endpoint
            if self.style == "virtual":  # object_store wants the bucket's own host then
                parts = urlsplit(endpoint)
                endpoint = f"{parts.scheme}://{self.bucket}.{parts.netloc}"
            kwargs["endpoint"] = endpoint
        if self.access_key and self.secret_key:
            kwargs["access_key_id"] = self.access_key
            kwargs["secret_access_key"] = self.secret_key
        client: ClientConfig = {
            "allow_http": bool(self.endpoint and self.endpoint.startswith("http://")),
            "timeout": datetime.timedelta(seconds=self.timeout),
            "connect_timeout": datetime.timedelta(seconds=min(CONNECT_TIMEOUT, self.timeout)),
        }
        retry: RetryConfig = {
            "max_retries": MAX_RETRIES,
            "retry_timeout": datetime.timedelta(seconds=self.timeout),
        }
        kwargs["client_options"] = client
        kwargs["retry_config"] = retry
        return kwargs


def valid_key(key: str) -> bool:
    """Whether ``key`` is ``/``-separated names, none of them empty, ``.`` or ``..``."""
    parts = key.split("/")
    return all(part and part not in (".", "..") for part in parts)
