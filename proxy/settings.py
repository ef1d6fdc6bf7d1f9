"""The proxy's one settings object: frozen, built from the environment and CLI flags.

Every field is declared once with its environment variable and a line of help; the settings
table in docs/settings.md and the CLI's ``--help`` are generated from the same declarations,
so they cannot drift apart.

The ground floor: it imports only the loader (:mod:`proxy.envconfig`), the parsers of
structured values (:mod:`proxy.setting_values`) and the upstream contract's constants, never
a package that uses a setting. Why it is over 400 lines: over 70 settings are declared here,
a few lines each with their help, and checked together in :meth:`Settings.validate` (several
checks span settings); split by concern, the docs' table and ``--help`` would have to gather
them again, and a check spanning two files could be missed.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

# The generic loader is shared with the local engine's settings; SettingsError is re-exported
# here because every owner of a setting raises it.
from proxy.envconfig import SettingsError, check_finite, describe, load, setting
from proxy.setting_values import (
    FITS,
    LADDER_POLICIES,
    MAX_SIGNATURE_SIZE,
    MODES,
    PURGE_STYLES,
    ladder_classes,
    parse_networks,
    parse_rate,
    rate_or_none,
    signing_pairs,
)
from proxy.upstream.contract import (
    DEFAULT_OUTPUT_COMPRESSION,
    DEFAULT_QUALITY,
    MAX_RESOLUTION,
    MAX_UPLOAD_MB,
    QUALITIES,
    RETENTION_SECONDS,
)

DEFAULT_TOKEN_URL = "https://backgroundcut.co/api/v3/remove-bg/token/"
DEFAULT_PROCESS_URL = "https://api.backgroundcut.co/v3/remove-bg/"


@dataclass(frozen=True)
class Settings:
    # --- upstream -------------------------------------------------------------------------
    api_key: str | None = setting(
        None,
        "PROXY_API_KEY",
        "BackgroundCut API key. Unset: the embedded local engine is the upstream.",
        secret=True,
    )
    token_url: str = setting(DEFAULT_TOKEN_URL, "PROXY_TOKEN_URL", "Upstream token (mint) URL.")
    process_url: str = setting(DEFAULT_PROCESS_URL, "PROXY_PROCESS_URL", "Upstream processing URL.")
    token_timeout: float = setting(60.0, "PROXY_TOKEN_TIMEOUT", "Seconds allowed for a mint.")
    process_timeout: float = setting(
        300.0, "PROXY_PROCESS_TIMEOUT", "Seconds allowed for a processing call."
    )
    retry_attempts: int = setting(
        3, "PROXY_RETRY_ATTEMPTS", "Upstream attempts on 429/5xx/connection errors (1 = none)."
    )
    retry_backoff: float = setting(
        0.25, "PROXY_RETRY_BACKOFF", "First retry delay in seconds; doubles each attempt."
    )
    retry_deadline: float = setting(
        30.0,
        "PROXY_RETRY_DEADLINE",
        "Seconds after which no further retry is started for one upstream call.",
    )
    allowed_output_hosts: tuple[str, ...] = setting(
        (),
        "PROXY_ALLOWED_OUTPUT_HOSTS",
        "Comma-separated hosts output URLs may point to (default: the upstream's own hosts, "
        "or this proxy's public host for the embedded engine; `*.example.com` allowed).",
    )
    # --- variants -------------------------------------------------------------------------
    quality: str = setting(
        DEFAULT_QUALITY, "PROXY_QUALITY", "Cut-out quality: low, medium or high."
    )
    output_compression: int = setting(
        DEFAULT_OUTPUT_COMPRESSION,
        "PROXY_OUTPUT_COMPRESSION",
        "Encoder compression/quality 1..100.",
    )
    autocrop: bool = setting(False, "PROXY_AUTOCROP", "Crop tight to the subject (+0.5 credit).")
    max_width: int = setting(4000, "PROXY_MAX_WIDTH", "Largest width a URL may ask for.")
    max_height: int = setting(4000, "PROXY_MAX_HEIGHT", "Largest height a URL may ask for.")
    # --- store mode -----------------------------------------------------------------------
    mode: str = setting(
        "redirect",
        "PROXY_MODE",
        "redirect (answer 302 to the upstream's output of each variant, one mint per variant) "
        "or store (mint one master per image, keep it under PROXY_DATA_DIR, serve every "
        "variant's bytes derived from it: docs/store-mode.md).",
    )
    fit: str | None = setting(
        None,
        "PROXY_FIT",
        "How a URL without a fit suffix fills its box: contain (fit inside), pad (exactly "
        "WxH, centred on the background) or cover (exactly WxH, cropped). Unset: pad in "
        "store mode, contain in redirect mode (the only fit the upstream can make).",
    )
    master_max_pixels: int = setting(
        MAX_RESOLUTION,
        "PROXY_MASTER_MAX_PIXELS",
        "Store mode: the most pixels of a master (the upstream's cap, 12,000,000). A master "
        "costs the same ~1.1 credits anywhere from 1 MP to 12 MP, so pay once, keep the most.",
    )
    variant_memory_mb: int = setting(
        256,
        "PROXY_VARIANT_MEMORY_MB",
        "Store mode: MiB of derived variants kept in memory per worker (least recently used "
        "dropped).",
    )
    variant_disk_mb: int = setting(
        2048,
        "PROXY_VARIANT_DISK_MB",
        "Store mode: MiB of derived variants kept on local disk under PROXY_DATA_DIR, shared "
        "by a host's workers (least recently used dropped).",
    )
    master_cache_mb: int = setting(
        256,
        "PROXY_MASTER_CACHE_MB",
        "Store mode: MiB of decoded masters kept in memory per worker (4 bytes a pixel).",
    )
    derive_concurrency: int = setting(
        0,
        "PROXY_DERIVE_CONCURRENCY",
        "Store mode: derivations running at once per worker (0: one per CPU).",
    )
    avif_quality: int = setting(
        60,
        "PROXY_AVIF_QUALITY",
        "Store mode: AVIF encoder quality 1..100 (jpg and webp use PROXY_OUTPUT_COMPRESSION).",
    )
    presets_file: Path | None = setting(
        None,
        "PROXY_PRESETS_FILE",
        "A TOML file of named presets, served at /img/<id>/<preset>.<ext> (docs/marketplace.md); "
        "checked at start.",
    )
    client_derive_rate: str | None = setting(
        "300/minute",
        "PROXY_CLIENT_DERIVE_RATE",
        "Store mode: derivations (not hits) one client may cause in a moving window; `none` "
        "turns it off.",
    )
    # --- object store (store mode, several replicas) --------------------------------------
    store_url: str | None = setting(
        None,
        "PROXY_STORE_URL",
        "Store mode: s3://bucket/prefix of an S3-compatible object store where masters and "
        "variants are kept for every replica (local disk becomes its cache; the bucket is "
        "created when missing): docs/objectstore.md. Unset: local disk only.",
    )
    store_endpoint: str | None = setting(
        None,
        "PROXY_STORE_ENDPOINT",
        "The object store's endpoint, e.g. http://127.0.0.1:8333 (SeaweedFS, MinIO). "
        "Unset: AWS S3, from PROXY_STORE_REGION.",
    )
    store_region: str = setting("us-east-1", "PROXY_STORE_REGION", "The object store's region.")
    store_access_key: str | None = setting(
        None,
        "PROXY_STORE_ACCESS_KEY",
        "The object store's access key id (with PROXY_STORE_SECRET_KEY). Unset: the usual AWS "
        "sources (environment, instance role).",
        secret=True,
    )
    store_secret_key: str | None = setting(
        None,
        "PROXY_STORE_SECRET_KEY",
        "The object store's secret access key (with PROXY_STORE_ACCESS_KEY).",
        secret=True,
    )
    store_addressing: str | None = setting(
        None,
        "PROXY_STORE_ADDRESSING",
        "path (http://endpoint/bucket/key) or virtual (http://bucket.endpoint/key). Unset: "
        "path with PROXY_STORE_ENDPOINT, virtual on AWS.",
    )
    store_timeout: float = setting(
        10.0,
        "PROXY_STORE_TIMEOUT",
        "Seconds one object store call may take, retries included (connecting: 2 s at most).",
    )
    store_public_url: str | None = setting(
        None,
        "PROXY_STORE_PUBLIC_URL",
        "Where PROXY_STORE_URL's prefix is readable by anyone (the bucket's public URL, or a "
        "CDN in front of it). Set: a variant already in the object store is answered 302 to "
        "its durable, content-addressed object there instead of with its bytes. Unset: bytes.",
    )
    # --- cache ----------------------------------------------------------------------------
    data_dir: Path = setting(
        Path("data"), "PROXY_DATA_DIR", "Where the disk cache, registry and originals live."
    )
    memory_cache_size: int = setting(
        10_000, "PROXY_MEMORY_CACHE_SIZE", "Entries in the in-process cache tier."
    )
    disk_cache_size_mb: int = setting(
        256, "PROXY_DISK_CACHE_SIZE_MB", "Size limit of the disk cache tier in MiB."
    )
    output_ttl: float = setting(
        float(RETENTION_SECONDS),
        "PROXY_OUTPUT_TTL",
        "Seconds an upstream output URL lives (upstream retention: 2 h).",
    )
    ttl_margin: float = setting(
        300.0,
        "PROXY_TTL_MARGIN",
        "Seconds subtracted from every output URL's life before it is served or cached; "
        "a URL whose own expiry leaves less than twice this is kept for half its life.",
    )
    error_max_age: int = setting(
        60, "PROXY_ERROR_MAX_AGE", "Cache-Control max-age for 4xx answers (seconds)."
    )
    # --- coalescing -----------------------------------------------------------------------
    lease_ttl: float = setting(
        15.0,
        "PROXY_LEASE_TTL",
        "Seconds a lease (a variant's mint, an image's lock) lives unless its holder renews "
        "it (it does, every third of this, while it works): how soon a holder that crashed "
        "on another host is replaced. On its own host, a crashed holder is replaced at once.",
    )
    coalesce_wait: float = setting(
        60.0,
        "PROXY_COALESCE_WAIT",
        "Seconds a request waits for another worker's mint before answering 503.",
    )
    # --- guards ---------------------------------------------------------------------------
    signing_key: tuple[str, ...] = setting(
        (),
        "PROXY_SIGNING_KEY",
        "Comma-separated hex HMAC keys. Set: only signed URLs are served (first key signs, "
        "any verifies).",
        secret=True,
    )
    signing_salt: tuple[str, ...] = setting(
        (), "PROXY_SIGNING_SALT", "Comma-separated hex salts, one per signing key.", secret=True
    )
    signature_size: int = setting(
        32, "PROXY_SIGNATURE_SIZE", "Bytes of the HMAC-SHA256 kept in a signature (1..32)."
    )
    ladder_widths: str = setting(
        "160,320,480,640,768,1024,1280,1536,1920,2560",
        "PROXY_LADDER_WIDTHS",
        "Comma-separated widths of the size ladder, each offered in every ladder ratio "
        "(`none`: presets only).",
    )
    ladder_ratios: str = setting(
        "1:1,4:5,3:4,2:3,4:3,3:2,16:9",
        "PROXY_LADDER_RATIOS",
        "Comma-separated W:H aspect ratios every ladder width is offered in.",
    )
    ladder_presets: str = setting(
        "none",
        "PROXY_LADDER_PRESETS",
        "Comma-separated extra WxH sizes offered as they are, e.g. 1200x630.",
    )
    ladder_policy: str = setting(
        "off",
        "PROXY_LADDER_POLICY",
        "off, snap (redirect to the next ladder size up) or strict (400 off the ladder).",
    )
    max_pixels: int = setting(
        MAX_RESOLUTION,
        "PROXY_MAX_PIXELS",
        "Largest width*height a URL may ask for (upstream cap 12,000,000; under 1,000,000 "
        "a mint is billed at the low rate).",
    )
    budget_credits_per_hour: float | None = setting(
        None,
        "PROXY_BUDGET_CREDITS_PER_HOUR",
        "Estimated credits every token may spend per UTC clock hour (misses, warm-ups, "
        "uploads, re-uploads). Unset: unlimited.",
    )
    budget_credits_per_day: float | None = setting(
        None,
        "PROXY_BUDGET_CREDITS_PER_DAY",
        "Estimated credits every token may spend per UTC day (misses, warm-ups, uploads, "
        "re-uploads). Unset: unlimited.",
    )
    client_miss_rate: str | None = setting(
        None,
        "PROXY_CLIENT_MISS_RATE",
        "Cache misses one client may cause in a moving window, e.g. `60/minute`. "
        "Unset: no per-client limit.",
    )
    trusted_proxies: tuple[str, ...] = setting(
        (),
        "PROXY_TRUSTED_PROXIES",
        "Comma-separated CIDRs of reverse proxies whose X-Forwarded-For/Forwarded is "
        "believed when finding a client's address.",
    )
    batch_window_ms: int = setting(
        30,
        "PROXY_BATCH_WINDOW_MS",
        "Most milliseconds a miss waits for more misses of the same image, to mint them in "
        "one token (each extra variant costs 0.25 credit); it waits only while another miss "
        "of the image is on its way or minting, so a lone miss never does. 0: no batching.",
    )
    batch_max_variants: int = setting(
        10,
        "PROXY_BATCH_MAX_VARIANTS",
        "Most variants minted in one batched token; a full batch is minted at once.",
    )
    fallback_max_age: int = setting(
        60,
        "PROXY_FALLBACK_MAX_AGE",
        "Browser max-age (seconds, private: never in shared caches) of the nearest cached size "
        "served in place of a miss refused by a budget or rate.",
    )
    # --- redis (several replicas) ---------------------------------------------------------
    redis_url: str | None = setting(
        None,
        "PROXY_REDIS_URL",
        "redis://host:6379/0 (or rediss://, unix://): cache, registry, leases and budgets are "
        "shared through it by every replica. Unset: one host's disk under PROXY_DATA_DIR.",
        secret=True,
    )
    redis_timeout: float = setting(
        0.5,
        "PROXY_REDIS_TIMEOUT",
        "Seconds a Redis connect or command may take before the proxy treats Redis as down.",
    )
    redis_max_connections: int = setting(
        64, "PROXY_REDIS_MAX_CONNECTIONS", "Redis connections per worker process (a pool)."
    )
    redis_prefix: str = setting(
        "cutproxy:", "PROXY_REDIS_PREFIX", "Prefix of every Redis key and channel the proxy uses."
    )
    # --- images ---------------------------------------------------------------------------
    blob_dir: Path | None = setting(
        None,
        "PROXY_BLOB_DIR",
        "Where uploaded originals are kept, by SHA-256 (default: <PROXY_DATA_DIR>/originals; "
        "a volume shared by every replica when there are several).",
    )
    max_upload_mb: float = setting(
        float(MAX_UPLOAD_MB),
        "PROXY_MAX_UPLOAD_MB",
        "Largest upload in MiB (413 above it; upstream cap: 12).",
    )
    max_input_pixels: int = setting(
        50_000_000,
        "PROXY_MAX_INPUT_PIXELS",
        "Largest decoded upload (width*height); more is refused as a decompression bomb (400).",
    )
    reupload_after: float = setting(
        float(RETENTION_SECONDS - 600),
        "PROXY_REUPLOAD_AFTER",
        "Seconds after which an upload is assumed gone upstream (retention: 2 h) and the kept "
        "original is uploaded again before the next render, without waiting for a 404.",
    )
    image_view_ttl: float = setting(
        2.0,
        "PROXY_IMAGE_VIEW_TTL",
        "Seconds a worker trusts its in-memory view of an image's version; a replaced or "
        "deleted image stops being served by every worker within this time.",
    )
    # --- serving --------------------------------------------------------------------------
    public_url: str = setting(
        "http://127.0.0.1:8080",
        "PROXY_PUBLIC_URL",
        "Base URL clients reach this proxy at (used for the embedded engine's output URLs).",
    )
    admin_token: str | None = setting(
        None,
        "PROXY_ADMIN_TOKEN",
        "Bearer token for the admin API. Unset: the admin API is off.",
        secret=True,
    )
    demo: bool = setting(False, "PROXY_DEMO", "Register a generated demo image as `demo`.")
    log_level: str = setting("info", "PROXY_LOG_LEVEL", "debug, info, warning or error.")
    max_header_bytes: int = setting(
        32768,
        "PROXY_MAX_HEADER_BYTES",
        "Largest request head (request line and headers) `cutproxy serve` reads, in bytes; "
        "a larger one is answered 431 and its connection closed (1024..1048576).",
    )
    # --- operations -----------------------------------------------------------------------
    ready_timeout: float = setting(
        2.0,
        "PROXY_READY_TIMEOUT",
        "Seconds /health/ready waits for the store and the upstream before answering 503.",
    )
    ready_cache: float = setting(
        5.0,
        "PROXY_READY_CACHE",
        "Seconds a /health/ready answer is reused, so probes do not each call the upstream.",
    )
    ready_requires_upstream: bool = setting(
        True,
        "PROXY_READY_REQUIRES_UPSTREAM",
        "Whether an unreachable upstream makes /health/ready answer 503 (false: it is only "
        "reported, so a fleet keeps serving cached hits through an upstream outage).",
    )
    ready_upstream_failures: int = setting(
        5,
        "PROXY_READY_UPSTREAM_FAILURES",
        "Upstream calls failing in a row (5xx, timeouts, no connection; each retry counts) "
        "after which /health/ready reports the upstream down even though its probe answers. "
        "0: only the probe counts.",
    )
    ready_failure_window: float = setting(
        60.0,
        "PROXY_READY_FAILURE_WINDOW",
        "Seconds such a run of failures counts for: a successful upstream call, or this long "
        "without a new failure, ends it (so an instance taken out of rotation comes back to "
        "try again).",
    )
    shutdown_timeout: float = setting(
        60.0,
        "PROXY_SHUTDOWN_TIMEOUT",
        "Seconds in-flight requests (misses included) get to finish after SIGTERM.",
    )
    # --- cdn ------------------------------------------------------------------------------
    browser_max_age: int | None = setting(
        None,
        "PROXY_BROWSER_MAX_AGE",
        "Cap on the browser lifetime (max-age) of a variant answer; shared caches get "
        "s-maxage. Unset: the output URL's remaining life. Behind a cache that sends no Age "
        "header (nginx), keep it at most PROXY_TTL_MARGIN.",
    )
    cdn_max_age: int | None = setting(
        None,
        "PROXY_CDN_MAX_AGE",
        "Cap on the shared-cache lifetime (s-maxage, CDN-Cache-Control, Surrogate-Control) "
        "of a variant answer. Unset: the output URL's remaining life.",
    )
    cdn_purge_url: str | None = setting(
        None,
        "PROXY_CDN_PURGE_URL",
        "Where to purge an image's answers by surrogate key when it is replaced or deleted, "
        "e.g. http://127.0.0.1:6081/ (Varnish, deploy/varnish/default.vcl). Unset: no purge.",
    )
    cdn_purge_style: str = setting(
        "varnish",
        "PROXY_CDN_PURGE_STYLE",
        "varnish (BAN with a Surrogate-Key header), fastly (POST with Surrogate-Key and "
        'Fastly-Key) or cloudflare (POST {"tags": [...]} with a Bearer token).',
    )
    cdn_purge_token: str | None = setting(
        None,
        "PROXY_CDN_PURGE_TOKEN",
        "API token for the fastly and cloudflare purge styles.",
        secret=True,
    )
    cdn_purge_timeout: float = setting(
        5.0, "PROXY_CDN_PURGE_TIMEOUT", "Seconds one CDN purge call may take."
    )

    # ----------------------------------------------------------------------------------------
    @property
    def embedded_engine(self) -> bool:
        """With no API key the local engine, mounted under /_engine, is the upstream."""
        return not self.api_key

    @property
    def store_mode(self) -> bool:
        """PROXY_MODE=store: variants are derived from one master per image and served."""
        return self.mode == "store"

    @property
    def default_fit(self) -> str:
        """The fit of a URL without a suffix: PROXY_FIT, else pad (store) or contain."""
        if self.fit is not None:
            return self.fit
        return "pad" if self.store_mode else "contain"

    @property
    def derive_rate(self) -> str | None:
        """PROXY_CLIENT_DERIVE_RATE, None when turned off (``none``)."""
        return rate_or_none(self.client_derive_rate)

    @property
    def originals_dir(self) -> Path:
        """The blob store of uploaded originals."""
        return self.blob_dir or self.data_dir / "originals"

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def output_hosts(self) -> tuple[str, ...]:
        if self.allowed_output_hosts:
            return self.allowed_output_hosts
        if self.embedded_engine:
            return (_host(self.public_url),)
        return tuple(dict.fromkeys((_host(self.token_url), _host(self.process_url))))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build from ``PROXY_*`` variables; ``overrides`` (CLI flags, tests) win over them."""
        settings = cls(**load(cls, environ, overrides))
        settings.validate()
        return settings

    def replace(self, **changes: Any) -> Settings:
        new = dataclasses.replace(self, **changes)
        new.validate()
        return new

    def validate(self) -> None:
        def bad(name: str, why: str) -> SettingsError:
            return SettingsError(f"{_env(name)}: {why}")

        check_finite(self, _env)
        for name in ("token_url", "process_url", "public_url"):
            parts = urlsplit(getattr(self, name))
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise bad(name, "must be an absolute http(s) URL")
        for name in (
            "token_timeout",
            "process_timeout",
            "output_ttl",
            "lease_ttl",
            "coalesce_wait",
            "retry_deadline",
        ):
            if getattr(self, name) <= 0:
                raise bad(name, "must be greater than 0")
        for name in ("ttl_margin", "retry_backoff", "error_max_age"):
            if getattr(self, name) < 0:
                raise bad(name, "must not be negative")
        if self.ttl_margin >= self.output_ttl:
            raise bad("ttl_margin", "must be smaller than PROXY_OUTPUT_TTL")
        if self.retry_attempts < 1:
            raise bad("retry_attempts", "must be at least 1")
        if self.quality not in QUALITIES:
            raise bad("quality", "must be low, medium or high")
        if not 1 <= self.output_compression <= 100:
            raise bad("output_compression", "must be between 1 and 100")
        for name in ("max_width", "max_height", "memory_cache_size", "disk_cache_size_mb"):
            if getattr(self, name) < 1:
                raise bad(name, "must be at least 1")
        if self.log_level.lower() not in ("debug", "info", "warning", "error"):
            raise bad("log_level", "must be debug, info, warning or error")
        if not 1024 <= self.max_header_bytes <= 1 << 20:
            raise bad("max_header_bytes", "must be between 1024 and 1048576")
        for name in ("ready_timeout", "shutdown_timeout"):
            if getattr(self, name) <= 0:
                raise bad(name, "must be greater than 0")
        if self.ready_cache < 0:
            raise bad("ready_cache", "must not be negative")
        if self.ready_upstream_failures < 0:
            raise bad("ready_upstream_failures", "must not be negative (0 turns it off)")
        if self.ready_failure_window <= 0:
            raise bad("ready_failure_window", "must be greater than 0")
        self._validate_cdn(bad)
        if self.api_key is not None and not self.api_key.strip():
            raise bad("api_key", "must not be blank")
        if self.admin_token is not None and len(self.admin_token) < 16:
            raise bad("admin_token", "must be at least 16 characters")
        self._validate_guards(bad)
        self._validate_store(bad)
        if not 0 < self.max_upload_mb <= 1024:
            raise bad("max_upload_mb", "must be greater than 0 and at most 1024")
        if self.max_input_pixels < 1:
            raise bad("max_input_pixels", "must be at least 1")
        for name in ("reupload_after", "image_view_ttl"):
            if getattr(self, name) <= 0:
                raise bad(name, "must be greater than 0")
        if self.redis_url is not None and urlsplit(self.redis_url).scheme not in _REDIS_SCHEMES:
            raise bad("redis_url", "must start with redis://, rediss:// or unix://")
        if self.redis_timeout <= 0:
            raise bad("redis_timeout", "must be greater than 0")
        if self.redis_max_connections < 1:
            raise bad("redis_max_connections", "must be at least 1")

    def _validate_guards(self, bad: typing.Callable[[str, str], SettingsError]) -> None:
        if not 1 <= self.signature_size <= MAX_SIGNATURE_SIZE:
            raise bad("signature_size", f"must be between 1 and {MAX_SIGNATURE_SIZE}")
        if self.signing_key or self.signing_salt:
            signing_pairs(self.signing_key, self.signing_salt, self.signature_size)
        if self.ladder_policy not in LADDER_POLICIES:
            policies = LADDER_POLICIES
            raise bad("ladder_policy", f"must be {', '.join(policies[:-1])} or {policies[-1]}")
        if not 1 <= self.max_pixels <= MAX_RESOLUTION:
            raise bad("max_pixels", f"must be between 1 and {MAX_RESOLUTION}")
        ladder = ladder_classes(
            self.ladder_widths,
            self.ladder_ratios,
            self.ladder_presets,
            max_width=self.max_width,
            max_height=self.max_height,
            max_pixels=self.max_pixels,
        )
        if ladder is None and self.ladder_policy != "off":
            raise bad(
                "ladder_policy",
                "needs a ladder: set PROXY_LADDER_WIDTHS and _RATIOS, or PROXY_LADDER_PRESETS",
            )
        for name in ("budget_credits_per_hour", "budget_credits_per_day"):
            limit = getattr(self, name)
            if limit is not None and not limit > 0:
                raise bad(name, "must be greater than 0 (leave it unset for no limit)")
        if self.client_miss_rate is not None:
            parse_rate(self.client_miss_rate)
        parse_networks(self.trusted_proxies)
        if self.batch_window_ms < 0:
            raise bad("batch_window_ms", "must not be negative")
        if self.batch_max_variants < 1:
            raise bad("batch_max_variants", "must be at least 1")
        if self.fallback_max_age < 0:
            raise bad("fallback_max_age", "must not be negative")

    def _validate_store(self, bad: typing.Callable[[str, str], SettingsError]) -> None:
        if self.mode not in MODES:
            raise bad("mode", f"must be {' or '.join(MODES)}")
        if self.fit is not None:
            if self.fit not in FITS:
                raise bad("fit", f"must be {', '.join(FITS[:-1])} or {FITS[-1]}")
            if self.fit != "contain" and not self.store_mode:
                raise bad(
                    "fit",
                    f"{self.fit} needs PROXY_MODE=store (the upstream can only fit inside a "
                    "box: contain)",
                )
        if not 1 <= self.master_max_pixels <= MAX_RESOLUTION:
            raise bad("master_max_pixels", f"must be between 1 and {MAX_RESOLUTION}")
        for name in ("variant_memory_mb", "variant_disk_mb", "master_cache_mb"):
            if getattr(self, name) < 0:
                raise bad(name, "must not be negative (0 keeps nothing)")
        if self.derive_concurrency < 0:
            raise bad("derive_concurrency", "must not be negative (0: one per CPU)")
        if not 1 <= self.avif_quality <= 100:
            raise bad("avif_quality", "must be between 1 and 100")
        if self.derive_rate is not None:
            parse_rate(self.derive_rate, "PROXY_CLIENT_DERIVE_RATE")
        self._validate_object_store(bad)

    def _validate_object_store(self, bad: typing.Callable[[str, str], SettingsError]) -> None:
        # What needs no parsing; the values themselves are checked where they are parsed,
        # proxy.stores.objects_config.ObjectStoreConfig.from_settings, when the CLI starts.
        if self.store_url is None:
            for name in (
                "store_endpoint",
                "store_access_key",
                "store_secret_key",
                "store_public_url",
            ):
                if getattr(self, name) is not None:
                    raise bad(name, "needs PROXY_STORE_URL (s3://bucket/prefix)")
            return
        if not self.store_mode:
            raise bad(
                "store_url",
                "needs PROXY_MODE=store (redirect mode keeps no masters or variants to store)",
            )
        if self.store_timeout <= 0:
            raise bad("store_timeout", "must be greater than 0")
        if self.store_public_url is not None:
            parts = urlsplit(self.store_public_url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise bad("store_public_url", "must be an absolute http(s) URL")
            if parts.query or parts.fragment or "@" in parts.netloc:
                raise bad("store_public_url", "must be a base URL without query or credentials")

    def _validate_cdn(self, bad: typing.Callable[[str, str], SettingsError]) -> None:
        for name in ("browser_max_age", "cdn_max_age"):
            limit = getattr(self, name)
            if limit is not None and limit < 0:
                raise bad(name, "must not be negative (leave it unset for no cap)")
        if self.cdn_purge_style not in PURGE_STYLES:
            raise bad("cdn_purge_style", f"must be one of {', '.join(PURGE_STYLES)}")
        if self.cdn_purge_url is not None:
            parts = urlsplit(self.cdn_purge_url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise bad("cdn_purge_url", "must be an absolute http(s) URL")
            if self.cdn_purge_style != "varnish" and not self.cdn_purge_token:
                style = self.cdn_purge_style
                raise bad("cdn_purge_token", f"is needed by PROXY_CDN_PURGE_STYLE={style}")
        if self.cdn_purge_timeout <= 0:
            raise bad("cdn_purge_timeout", "must be greater than 0")

    def describe(self) -> dict[str, Any]:
        """Settings as shown to operators: secrets are masked."""
        return describe(self)


def settings_table() -> list[tuple[str, str, str]]:
    """(variable, default, help) for every setting: docs/settings.md and ``--help``."""
    rows = []
    for f in dataclasses.fields(Settings):
        default = f.default
        if isinstance(default, tuple):
            shown = ",".join(default) or "(empty)"
        elif default is None:
            shown = "(unset)"
        else:
            shown = str(default)
        rows.append((f.metadata["env"], shown, f.metadata["help"]))
    return rows


def _env(name: str) -> str:
    for f in dataclasses.fields(Settings):
        if f.name == name:
            return str(f.metadata["env"])
    return name


def _host(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()


_REDIS_SCHEMES = ("redis", "rediss", "unix")
