"""One decision per variant request: what ``/img/<id>/<size>/<file>`` asks for.

:meth:`Decider.decide` reads a request's path, query string and ``Accept`` header and
answers with one of:

- :class:`Serve`: a canonical, allowed variant, and whether the client wants JSON about it
  rather than the redirect to its output;
- :class:`Redirect`: a 308 to the canonical spelling of the same request (``FFF`` →
  ``ffffff``, ``@2x`` → pixels) or to the size ladder's rung, with the query signed anew
  for the new path when signing is on (first key, same ``exp``);
- or it raises: :class:`~proxy.errors.ForbiddenError` (403) for a missing, wrong or
  expired signature, :class:`~proxy.errors.BadRequestError` (400) for a URL the grammar
  or the ladder refuses.

The signature is checked first, so an unsigned URL learns nothing more. Everything after it
is a pure function of the path, kept in one bounded memo: the hit path, the variant route,
warm-up, ``srcset`` and the demo page all ask this one object (:meth:`Decider.variant` is
the admin side's door: no signature, redirects followed).

A request passes in imgproxy's order::

    signature → URL grammar → size ladder → cache (hits: never limited)
      → on a miss: client's miss rate → credit budget → coalesce / batch → mint

Signed non-canonical URLs: the signature is checked against the path as requested, and the
308 carries a fresh one for its target. So a page may sign whatever it puts in ``srcset``;
signing canonical ladder sizes saves the extra hop.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final, Generic, TypeVar
from urllib.parse import parse_qsl, quote, urlencode

from proxy.errors import BadRequestError, ProxyError
from proxy.settings import Settings
from proxy.url import grammar, ladder, presets
from proxy.url.signing import EXPIRY_PARAM, SIGNATURE_PARAM, Signer
from proxy.url.variant import Variant

ROUTE: Final = "/img/{image_id}/{size}/{filename}"
"""The variant route's template: the app's route, the hit path's and the access log's label."""
PRESET_ROUTE: Final = "/img/{image_id}/{filename}"
"""A named preset's route (``/img/<image_id>/<preset>.<ext>``): two segments, never a size."""
PREFIX: Final = "/img/"

# The memo starts again past either bound (deciding again is cheap).
MEMO_ENTRIES = 4096
MEMO_BYTES = 1 << 20  # of paths
# Longer paths are never variant URLs (an id is at most 128 characters): never kept.
MAX_KEPT_PATH = 256
MAX_KEPT_ACCEPT = 256  # bytes: longer Accept values are read each time, never kept

About = TypeVar("About")


@dataclass(frozen=True, slots=True)
class Serve(Generic[About]):
    """Serve ``variant``: the redirect to its output, or (``json``) JSON about it."""

    variant: Variant
    json: bool
    about: About  # what the decider's ``describe`` made of the variant, once per path


_QUERY_SAFE = "!$&'()*+,/:;=?@%"  # with letters, digits and "_.-~": kept as they are


@dataclass(frozen=True, slots=True)
class Redirect:
    """A 308 to ``path``, the canonical spelling or the ladder's rung; see :meth:`query`."""

    path: str
    given_query: bytes = b""
    signer: Signer | None = field(default=None, repr=False)

    def query(self) -> str:
        """The request's query, for ``path``: signed anew when signing is on."""
        # The bytes as given, percent-encoding only what a URL cannot carry raw (bytes that
        # are not UTF-8 among them: some servers pass them on).
        query = quote(self.given_query, safe=_QUERY_SAFE)
        if self.signer is None:
            return query
        pairs = [
            (name, value)
            for name, value in parse_qsl(query, keep_blank_values=True)
            if name not in (SIGNATURE_PARAM, EXPIRY_PARAM)
        ]
        raw_exp = _params(self.given_query).get(EXPIRY_PARAM)
        exp = int(raw_exp) if raw_exp else None  # the signature check accepted it: digits
        pairs.append((SIGNATURE_PARAM, self.signer.sign_path(self.path, exp)))
        if exp is not None:
            pairs.append((EXPIRY_PARAM, str(exp)))
        return urlencode(pairs)


Decision = Serve[About] | Redirect


@dataclass(frozen=True, slots=True)
class _Allowed(Generic[About]):
    """A canonical variant URL: its two possible answers, made once."""

    plain: Serve[About]
    json: Serve[About]


@dataclass(frozen=True, slots=True)
class _Refused:
    """A URL the grammar or the ladder refuses: raised anew each time (never one shared
    exception object, whose traceback would grow with every raise)."""

    kind: type[ProxyError]
    message: str
    code: str

    def error(self) -> ProxyError:
        return self.kind(self.message, code=self.code)


# What the pure part makes of a path: None when it is not the route's shape at all.
_Held = _Allowed[About] | Redirect | _Refused | None


class Decider(Generic[About]):
    """The size limits, the signer and the ladder with its policy, and the memo of what
    paths mean under them. ``describe`` derives what answers about a variant need (its
    headers, say) once per path; the memo keeps it with the variant."""

    def __init__(
        self,
        limits: grammar.Limits,
        describe: Callable[[Variant], About],
        *,
        signer: Signer | None = None,
        size_ladder: ladder.Ladder | None = None,
        policy: str = "off",
        named: Mapping[str, presets.Preset] = presets.NONE,
    ) -> None:
        self.limits = limits
        self.presets = named
        self.signer = signer
        self.ladder = size_ladder
        self.policy = policy
        self._describe = describe
        self._memo: dict[str, _Held[About]] = {}
        self._memo_bytes = 0

    @classmethod
    def from_settings(
        cls, settings: Settings, describe: Callable[[Variant], About]
    ) -> Decider[About]:
        return cls(
            grammar.Limits(
                settings.max_width,
                settings.max_height,
                settings.max_pixels,
                store=settings.store_mode,
                default_fit=settings.default_fit,
            ),
            describe,
            signer=Signer.from_settings(settings),
            size_ladder=ladder.Ladder.from_settings(settings),
            policy=settings.ladder_policy,
            named=presets.from_settings(settings),
        )

    def decide(
        self,
        path: str,
        query: bytes = b"",
        accept: bytes | None = None,
        now: float = 0.0,
        *,
        signed: str | None = None,
        verify: bool = True,
    ) -> Serve[About] | Redirect | None:
        """What to answer a request of ``path`` (the route's path, percent-decoded).

        None: ``path`` is not of a variant route's shape (``/img/`` and three non-empty
        segments, or two for a preset).
        ``signed``: the path the signature covers, when not ``path`` (behind a root path);
        ``verify=False``: the admin side, which signs nothing. Raises :class:`ProxyError`.
        """
        if verify and self.signer is not None:
            self.signer.verify(path if signed is None else signed, _params(query), now)
        try:
            held = self._memo[path]
        except KeyError:  # a kept path costs one lookup (and try costs nothing, 3.11)
            held = self._hold(path)
        if type(held) is _Allowed:
            return held.json if accept is not None and _wants_json(accept) else held.plain
        if type(held) is Redirect:
            if query or self.signer is not None:
                return Redirect(held.path, query, self.signer)
            return held
        if held is None:
            return None
        assert type(held) is _Refused
        raise held.error()

    def variant(self, image_id: str, size: str, filename: str) -> Variant:
        """The variant a visitor's URL of these parts would be served, redirects followed
        (the canonical spelling, the ladder's rung); 400 as :meth:`decide` would."""
        path = f"{PREFIX}{image_id}/{size}/{filename}"
        for _ in range(3):  # to the spelling, then to the rung, at most
            decision = self.decide(path, verify=False)
            if isinstance(decision, Serve):
                return decision.variant
            if decision is None:  # a part with a slash, or empty: the grammar says which
                grammar.parse(image_id, size, filename, self.limits)
                raise BadRequestError(f"not a variant URL: {path[:80]!r}", code="bad_url")
            path = decision.path
        raise AssertionError(f"{path!r} redirects in a loop")  # a canonical rung is served

    def preset(self, image_id: str, filename: str) -> Variant:
        """The variant a visitor's ``/img/<image_id>/<preset>.<ext>`` is served, the
        canonical spelling followed; 404 or 400 as :meth:`decide` would."""
        parsed = grammar.parse_preset(image_id, filename, self.presets, self.limits)
        variant = parsed if isinstance(parsed, Variant) else parsed.variant
        assert variant is not None  # the grammar's Canonical carries what it means
        return variant

    def _hold(self, path: str) -> _Held[About]:
        held = self._parse(path)
        if len(path) > MAX_KEPT_PATH:
            return held
        if len(self._memo) >= MEMO_ENTRIES or self._memo_bytes + len(path) > MEMO_BYTES:
            self._memo.clear()
            self._memo_bytes = 0
        self._memo[path] = held
        self._memo_bytes += len(path)
        return held

    def _parse(self, path: str) -> _Held[About]:
        """The pure part: the grammar, then the ladder."""
        if not path.startswith(PREFIX):
            return None
        parts = path[len(PREFIX) :].split("/")
        if len(parts) not in (2, 3) or not all(parts):  # the routes' [^/]+ segments
            return None
        try:
            if len(parts) == 2:  # a named preset: the operator chose its size, no ladder
                held = grammar.parse_preset(parts[0], parts[1], self.presets, self.limits)
            else:
                image_id, size, filename = parts
                held = self._on_ladder(grammar.parse(image_id, size, filename, self.limits))
        except ProxyError as exc:
            return _Refused(type(exc), exc.message, exc.code)
        if isinstance(held, grammar.Canonical):
            return Redirect(held.path)
        about = self._describe(held)
        return _Allowed(Serve(held, False, about), Serve(held, True, about))

    def _on_ladder(self, parsed: Variant | grammar.Canonical) -> Variant | grammar.Canonical:
        """Hold a parsed request to the ladder: the variant, or where to redirect it.

        A non-canonical spelling is judged by what it means, so ``320x240@2x`` off the
        ladder redirects straight to its rung, in one hop.
        """
        if self.ladder is None or self.policy == "off":
            return parsed
        variant = parsed if isinstance(parsed, Variant) else parsed.variant
        assert variant is not None  # the grammar's Canonical carries what it means
        held = ladder.apply(self.ladder, self.policy, variant)
        return held if isinstance(held, grammar.Canonical) else parsed


def plain(variant: Variant) -> None:
    """A ``describe`` for callers that want the variant alone (tools, ``srcset``)."""
    return None


def _params(query: bytes) -> dict[str, str]:
    """The query's parameters as Starlette's ``QueryParams`` reads them (the last one wins)."""
    return dict(parse_qsl(query.decode("latin-1"), keep_blank_values=True))


def wants_json(accept: str | None) -> bool:
    """True when ``application/json`` is acceptable and no image type is preferred to it."""
    if not accept:
        return False
    json_q: float | None = None
    image_q = 0.0
    for media_range in accept.split(","):
        kind, q = media_range_of(media_range)
        if kind == "application/json":
            json_q = max(json_q or 0.0, q)
        elif kind.startswith("image/"):
            image_q = max(image_q, q)
    return json_q is not None and json_q > 0 and json_q >= image_q


def _wants_json(accept: bytes) -> bool:
    if len(accept) > MAX_KEPT_ACCEPT:  # an odd one: read it, keep nothing
        return wants_json(accept.decode("latin-1"))
    return _kept_wants_json(accept)


@functools.lru_cache(maxsize=256)  # browsers and apps send a handful: at most 64 KiB kept
def _kept_wants_json(accept: bytes) -> bool:
    return wants_json(accept.decode("latin-1"))


def media_range_of(media_range: str) -> tuple[str, float]:
    """One ``Accept`` entry's media type (lower case) and its q (1 when unsaid, 0 when bad)."""
    kind, *params = (part.strip() for part in media_range.split(";"))
    q = 1.0
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                q = float(value)
            except ValueError:
                q = 0.0
    return kind.lower(), q
