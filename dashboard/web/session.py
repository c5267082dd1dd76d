"""The page's sessions: signed, expiring, revocable cookie values made from a per-process key.

The page signs in once with ``?token=`` (see :mod:`dashboard.web.guard`) and then lives on a
cookie. Its value is not derived from the token: :class:`Sessions` makes a random key when it
is created (once per guarded resource, so once per process that serves the dashboard), and each
sign-in gets a value of its own::

    <expires, unix seconds>.<session id, 32 hex>.<HMAC-SHA256(key, expires and id), 64 hex>

so a value from another process, from before a restart, or edited by hand (a later expiry) is
refused, and an old one stops working when it expires (``max_age_s``, a day by default; the
cookie's ``Max-Age`` says the same to the browser). A sign-out revokes its session id: the
revoked ids are kept until their expiry, at most :data:`MAX_REVOKED` of them; were that many
still unexpired, the key is renewed instead, which ends every session (the safe side).

A session's end reaches requests already open on it too: the guard holds every long request
it let in by cookie (the event stream, a history body: whatever is still open once rendered)
in :class:`OpenRequests`, by session, at most :data:`MAX_OPEN_REQUESTS` of them, and drops
their connections when the session is revoked (a sign-out; every session at a key renewal)
or expires (one timer per session with open requests, at its expiry, cancelled when the last
of them finishes). A copied cookie cannot keep a stream going past the sign-out or
``Max-Age``.

Reactor thread only, but for :meth:`Sessions.check` (any thread).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import re
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any, cast

import attrs
from twisted.internet.base import DelayedCall
from twisted.internet.interfaces import IReactorTime

#: How long a session lasts when nothing else is said, seconds (a day).
DEFAULT_SESSION_MAX_AGE_S = 86400
#: The longest session accepted, seconds (400 days: what browsers cap ``Max-Age`` at).
LONGEST_SESSION_S = 400 * 86400
#: Most revoked sessions remembered (each until it would have expired).
MAX_REVOKED = 4096
#: Most long requests let in by cookie and open at once (each held until it finishes).
MAX_OPEN_REQUESTS = 1024
#: Every cookie of the dashboard is named ``rd_session_<12 hex>``.
COOKIE_PREFIX = b"rd_session_"

_VALUE = re.compile(rb"\A([0-9]{1,12})\.([0-9a-f]{32})\.([0-9a-f]{64})\Z")


def check_max_age(max_age_s: object) -> int:
    """``max_age_s`` as an int of seconds, or ``ValueError``/``TypeError`` naming the problem."""
    if isinstance(max_age_s, bool) or not isinstance(max_age_s, int):
        raise TypeError(f"session_max_age_s must be an int (seconds), got {max_age_s!r}")
    if not 1 <= max_age_s <= LONGEST_SESSION_S:
        raise ValueError(
            f"session_max_age_s must be from 1 to {LONGEST_SESSION_S} seconds, got {max_age_s}"
        )
    return max_age_s


@attrs.frozen
class Session:
    """One valid session: its id (32 hex) and when it expires (unix seconds)."""

    id: bytes
    expires: int


@attrs.define
class Sessions:
    """Issues, checks and revokes the page's session cookie values.

    ``max_age_s``: a session's lifetime, seconds; ``now``: the wall clock (unix seconds; the
    browser counts ``Max-Age`` on its own); ``on_end``: told the id of each session revoked,
    or ``None`` when the key is renewed (every session ends). ``revoked_total`` counts
    sign-outs, ``key_renewals`` the times the revocation list was full and every session was
    ended.

    Reactor thread, except :meth:`check`, :meth:`expired` and :meth:`cookie_name`, which any
    thread may call (the stuck server's, while the reactor thread cannot answer): the key and
    the revoked ids change under a lock and are read under it."""

    max_age_s: int = attrs.field(default=DEFAULT_SESSION_MAX_AGE_S, converter=check_max_age)
    now: Callable[[], float] = attrs.field(default=time.time, repr=False)
    max_revoked: int = MAX_REVOKED
    on_end: Callable[[bytes | None], object] | None = attrs.field(
        default=None, kw_only=True, repr=False
    )
    revoked_total: int = attrs.field(default=0, init=False)
    key_renewals: int = attrs.field(default=0, init=False)
    _key: bytes = attrs.field(factory=lambda: secrets.token_bytes(32), init=False, repr=False)
    _revoked: dict[bytes, int] = attrs.field(factory=dict, init=False, repr=False)
    _lock: threading.RLock = attrs.field(factory=threading.RLock, init=False, repr=False)

    @property
    def cookie_name(self) -> bytes:
        """The cookie's name, from the key: dashboards in other processes on this host (cookies
        ignore ports) keep cookies of their own, and a restart starts afresh."""
        with self._lock:
            key = self._key
        digest = hmac.new(key, b"reactor-dashboard cookie name", hashlib.sha256)
        return COOKIE_PREFIX + digest.hexdigest()[:12].encode()

    def issue(self) -> bytes:
        """A new session's cookie value, valid for ``max_age_s`` seconds from now."""
        expires = int(self.now()) + self.max_age_s
        session_id = secrets.token_hex(16).encode()
        return b"%d.%s.%s" % (expires, session_id, self._mac(expires, session_id))

    def check(self, value: bytes | None) -> Session | None:
        """The session ``value`` carries, or ``None`` when it is malformed, forged (another
        key: another process, or before a restart), expired or revoked. Any thread."""
        with self._lock:
            session = self._verify(value)
            if session is None or session.expires <= self.now() or session.id in self._revoked:
                return None
            return session

    def expired(self, value: bytes | None) -> bool:
        """Whether ``value`` is a genuine session of this key that has expired (so that the
        refusal can say so). Any thread."""
        with self._lock:
            session = self._verify(value)
        return session is not None and session.expires <= self.now()

    def revoke(self, value: bytes | None) -> bool:
        """End the session ``value`` carries; ``False`` when it was not a valid one."""
        with self._lock:
            session = self.check(value)
            if session is None:
                return False
            self.revoked_total += 1
            now = self.now()
            if len(self._revoked) >= self.max_revoked:
                self._revoked = {sid: end for sid, end in self._revoked.items() if end > now}
            full = len(self._revoked) >= self.max_revoked
            if not full:
                self._revoked[session.id] = session.expires
        if full:
            self.renew_key()
            return True
        if self.on_end is not None:
            self.on_end(session.id)
        return True

    def renew_key(self) -> None:
        """A new key (and so a new cookie name): every session issued so far ends."""
        with self._lock:
            self._key = secrets.token_bytes(32)
            self._revoked = {}
            self.key_renewals += 1
        if self.on_end is not None:
            self.on_end(None)

    @property
    def revoked_count(self) -> int:
        """How many revoked sessions are remembered now (at most ``max_revoked``)."""
        return len(self._revoked)

    def _verify(self, value: bytes | None) -> Session | None:
        match = _VALUE.match(value or b"")
        if match is None:
            return None
        expires, session_id, mac = int(match[1]), match[2], match[3]
        if not hmac.compare_digest(mac, self._mac(expires, session_id)):
            return None
        return Session(session_id, expires)

    def _mac(self, expires: int, session_id: bytes) -> bytes:
        message = b"reactor-dashboard session v2|%d|%s" % (expires, session_id)
        return hmac.new(self._key, message, hashlib.sha256).hexdigest().encode()


@attrs.define
class _Held:
    """The open requests of one session, and the timer at its expiry."""

    expires: int
    requests: set[Any] = attrs.field(factory=set)
    timer: DelayedCall | None = None


def drop_connection(request: Any) -> None:
    """Drop ``request``'s connection at once (``abortConnection``: a client that does not read
    cannot hold it open). Its ``notifyFinish`` then errbacks, so whatever serves it (the
    event stream, a history body) lets go of it as if the client had left."""
    transport = getattr(request, "transport", None)
    if transport is None:
        return
    abort = getattr(transport, "abortConnection", None)
    (abort or transport.loseConnection)()


@attrs.define
class OpenRequests:
    """The long requests let in by a session's cookie that are still open, by session id, so
    that a session's end ends them too. At most ``max_open`` are held (:meth:`has_room` says
    whether one more may be let in).

    ``reactor``: where the expiry timers run (the global reactor when ``None``); ``now``:
    the wall clock sessions expire by (unix seconds, as :class:`Sessions`). ``ended_total``
    counts requests dropped because their session was revoked, ``expired_total`` because it
    expired. Reactor thread only."""

    reactor: IReactorTime | None = None
    now: Callable[[], float] = attrs.field(default=time.time, repr=False)
    max_open: int = MAX_OPEN_REQUESTS
    ended_total: int = attrs.field(default=0, init=False)
    expired_total: int = attrs.field(default=0, init=False)
    _held: dict[bytes, _Held] = attrs.field(factory=dict, init=False, repr=False)
    _count: int = attrs.field(default=0, init=False)

    @property
    def count(self) -> int:
        """How many requests are held now."""
        return self._count

    @property
    def timers(self) -> int:
        """How many expiry timers are pending (one per session with open requests)."""
        return sum(1 for held in self._held.values() if held.timer is not None)

    def has_room(self) -> bool:
        """Whether one more request may be held (finished ones missed are let go first)."""
        if self._count >= self.max_open:
            for session_id, held in list(self._held.items()):
                for request in [r for r in held.requests if _is_over(r)]:
                    self._release(session_id, request)
        return self._count < self.max_open

    def hold(self, session: Session, request: Any) -> None:
        """Hold ``request`` (still open, let in by ``session``'s cookie) until it finishes."""
        if _is_over(request):
            return
        held = self._held.get(session.id)
        if held is None:
            held = self._held[session.id] = _Held(session.expires)
            self._arm(session.id, held)
        held.requests.add(request)
        self._count += 1

        def finished(_: object) -> None:  # a Failure too (the client left): handled here
            self._release(session.id, request)

        request.notifyFinish().addBoth(finished)

    def end(self, session_id: bytes | None) -> int:
        """Drop the connections of the requests of session ``session_id`` (of every session
        when ``None``); how many were dropped. ``Sessions.on_end``."""
        ids = list(self._held) if session_id is None else [session_id]
        dropped = 0
        for each in ids:
            dropped += self._drop(each)
        self.ended_total += dropped
        return dropped

    def _drop(self, session_id: bytes) -> int:
        held = self._held.pop(session_id, None)
        if held is None:
            return 0
        if held.timer is not None and held.timer.active():
            held.timer.cancel()
        held.timer = None
        self._count -= len(held.requests)
        for request in held.requests:
            with contextlib.suppress(Exception):  # a transport already gone: nothing to end
                drop_connection(request)
        return len(held.requests)

    def _release(self, session_id: bytes, request: Any) -> None:
        held = self._held.get(session_id)
        if held is None or request not in held.requests:
            return
        held.requests.discard(request)
        self._count -= 1
        if not held.requests:
            del self._held[session_id]
            if held.timer is not None and held.timer.active():
                held.timer.cancel()
            held.timer = None

    def _arm(self, session_id: bytes, held: _Held) -> None:
        delay = max(0.0, held.expires - self.now())
        reactor: Any = self._reactor()  # IReactorTime, typed loosely: zope's methods confuse mypy
        held.timer = reactor.callLater(delay, self._expire, session_id)

    def _expire(self, session_id: bytes) -> None:
        held = self._held.get(session_id)
        if held is None:
            return
        held.timer = None
        if self.now() < held.expires:  # the reactor's clock ran ahead of the wall clock
            self._arm(session_id, held)
            return
        self.expired_total += self._drop(session_id)

    def _reactor(self) -> IReactorTime:
        if self.reactor is None:
            from twisted.internet import reactor

            self.reactor = cast(IReactorTime, reactor)
        return self.reactor


def _is_over(request: Any) -> bool:
    """Whether ``request`` has finished or lost its connection (nothing left to end)."""
    return bool(getattr(request, "finished", False) or getattr(request, "_disconnected", False))
