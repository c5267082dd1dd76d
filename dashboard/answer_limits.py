"""What keeps the web face's costly answers in check, one set per Monitor: bulk answers
(``/api/v1/history``, ``/api/v1/series``, ``/api/v1/snapshot`` and ``/metrics``) bounded in
flight and counted, and fresh snapshots (``?fresh=1``) coalesced. The Monitor holds them and
reports their figures in its snapshot's ``web`` section; dashboard.web uses them. Nothing
here imports the web layer.

Everything here runs in the reactor thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

import attrs
from twisted.internet.base import DelayedCall
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

DEFAULT_MAX_IN_FLIGHT = 4
#: series answers written at once: more than history answers (a series answer is small, and
#: every page opening asks for one)
DEFAULT_MAX_SERIES_ANSWERS = 16
#: snapshot and ``/metrics`` answers written at once (one limit for both): each holds at
#: most one snapshot's worth of the transport's buffer
DEFAULT_MAX_SNAPSHOT_ANSWERS = 32
DEFAULT_SLOW_CLIENT_TIMEOUT_S = 30.0
DEFAULT_RETRY_AFTER_S = 5
DEFAULT_FRESH_MIN_INTERVAL_S = 0.25
#: callers held for the next fresh snapshot; past it a caller gets the newest one at once
DEFAULT_MAX_FRESH_WAITING = 256


class LiveAnswer(Protocol):
    """An answer being written (dashboard.web.bulk_body.BodyProducer)."""

    def abort(self) -> None:
        """Stop writing, leave the in-flight count and drop the connection."""


@attrs.define(eq=False)
class BulkAnswers:
    """The limits and the counters of one kind of large answer.

    At most ``max_in_flight`` are written at once (a caller beyond gets a 503 with
    ``Retry-After: retry_after_s``); a client that stops reading its answer for
    ``slow_client_timeout_s`` seconds is dropped. dashboard.web.bulk_body updates the counts
    and registers each answer it writes (:meth:`track`), so that :meth:`close` (the Monitor
    stopping) can end them all.
    """

    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    slow_client_timeout_s: float = DEFAULT_SLOW_CLIENT_TIMEOUT_S
    retry_after_s: int = DEFAULT_RETRY_AFTER_S
    #: answers being written now
    in_flight: int = attrs.field(default=0, init=False)
    #: answers written whole (a ``HEAD`` included)
    served_total: int = attrs.field(default=0, init=False)
    #: callers answered 503 because ``max_in_flight`` answers were being written
    refused_total: int = attrs.field(default=0, init=False)
    #: connections aborted after ``slow_client_timeout_s`` without reading
    dropped_slow_total: int = attrs.field(default=0, init=False)
    _live: set[LiveAnswer] = attrs.field(factory=set, init=False)

    def __attrs_post_init__(self) -> None:
        if self.max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {self.max_in_flight!r}")
        if not self.slow_client_timeout_s > 0:
            raise ValueError(
                f"slow_client_timeout_s must be > 0 seconds, got {self.slow_client_timeout_s!r}"
            )
        if self.retry_after_s < 0:
            raise ValueError(f"retry_after_s must be >= 0, got {self.retry_after_s!r}")

    def track(self, answer: LiveAnswer) -> None:
        """``answer`` is being written: count it in flight until :meth:`untrack`."""
        if answer not in self._live:
            self._live.add(answer)
            self.in_flight += 1

    def untrack(self, answer: LiveAnswer) -> None:
        """``answer`` ended (written, dropped or its client gone). Safe to call twice."""
        if answer in self._live:
            self._live.discard(answer)
            self.in_flight -= 1

    def close(self) -> None:
        """Abort every answer being written: its timer stops, its connection is dropped, and
        it leaves the in-flight count (the Monitor is stopping). Safe to call twice. An
        answer that fails to abort is forgotten all the same, the others are still aborted,
        and the first such error is raised at the end (the Monitor records it)."""
        error: Exception | None = None
        for answer in list(self._live):
            try:
                answer.abort()
            except Exception as exc:
                error = error or exc
            self.untrack(answer)
        if error is not None:
            raise error

    def as_json(self) -> dict[str, int]:
        return {
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "refused_total": self.refused_total,
            "dropped_slow_total": self.dropped_slow_total,
            "served_total": self.served_total,
        }


@attrs.define(eq=False)
class FreshSnapshots:
    """Fresh snapshots for the web, at most one per ``min_interval_s`` seconds.

    ``take()`` collects a snapshot now and returns its JSON bytes (the Monitor's
    ``snapshot()``, encoded); ``clock`` is the watched reactor. :meth:`get` takes one at once
    when the last was taken ``min_interval_s`` ago or more; a caller within that interval
    waits for the next one, taken once when the interval ends and given to every caller
    waiting (so an answer is never older than the request). At most ``max_waiting`` callers
    wait; the next ones get the newest fresh snapshot at once. While the Monitor is not
    running (:meth:`close`), no caller waits and no timer runs.

    ``seconds_total``: wall seconds spent taking them, on the reactor thread.
    """

    take: Callable[[], bytes]
    clock: Any
    min_interval_s: float = DEFAULT_FRESH_MIN_INTERVAL_S
    max_waiting: int = DEFAULT_MAX_FRESH_WAITING
    taken_total: int = attrs.field(default=0, init=False)
    served_total: int = attrs.field(default=0, init=False)
    seconds_total: float = attrs.field(default=0.0, init=False)
    _open: bool = attrs.field(default=False, init=False)
    _newest: bytes | None = attrs.field(default=None, init=False)
    _taken_at: float = attrs.field(default=float("-inf"), init=False)
    _waiting: list[Deferred[bytes]] = attrs.field(factory=list, init=False)
    _timer: DelayedCall | None = attrs.field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        if not self.min_interval_s >= 0:
            raise ValueError(f"min_interval_s must be >= 0 seconds, got {self.min_interval_s!r}")
        if self.max_waiting < 0:
            raise ValueError(f"max_waiting must be >= 0, got {self.max_waiting!r}")

    @property
    def waiting(self) -> int:
        """Callers waiting for the next fresh snapshot."""
        return len(self._waiting)

    def get(self) -> bytes | Deferred[bytes]:
        """A fresh snapshot's JSON: now, or a Deferred that fires with the next one."""
        now = self.clock.seconds()
        due = self._taken_at + self.min_interval_s
        if self._timer is None and now >= due:
            self.served_total += 1
            return self._take_now()
        if not self._open or len(self._waiting) >= self.max_waiting:
            self.served_total += 1
            return self._newest if self._newest is not None else self._take_now()
        waiter: Deferred[bytes] = Deferred(self._forget)
        self._waiting.append(waiter)
        if self._timer is None:
            self._timer = self.clock.callLater(max(0.0, due - now), self._due)
        return waiter

    def open(self) -> None:
        """Let callers wait for the next snapshot (the Monitor started)."""
        self._open = True

    def close(self) -> None:
        """Stop the timer and answer every waiting caller now (the Monitor is stopping: call
        this before the probes are uninstalled). Safe to call twice."""
        self._open = False
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
        if self._waiting:
            self._answer_waiting()

    def as_json(self) -> dict[str, Any]:
        return {
            "taken_total": self.taken_total,
            "served_total": self.served_total,
            "min_interval_s": self.min_interval_s,
            "seconds_total": round(self.seconds_total, 6),
            "waiting": len(self._waiting),
        }

    def _take_now(self) -> bytes:
        """Take one now. A ``take()`` that raises still starts the interval: a failing
        snapshot is tried at most once per ``min_interval_s`` too (callers in between wait
        for the next try), and the error goes to the caller(s). It is counted before it is
        taken, so the snapshot reports itself (as ``served_total`` does its own answer)."""
        self.taken_total += 1
        started = time.perf_counter()
        try:
            body = self.take()
        finally:
            self.seconds_total += time.perf_counter() - started
            self._taken_at = self.clock.seconds()
        self._newest = body
        return body

    def _due(self) -> None:
        self._timer = None
        self._answer_waiting()

    def _answer_waiting(self) -> None:
        waiting, self._waiting = self._waiting, []
        if not waiting:
            return
        try:
            body = self._take_now()
        except Exception:
            # Each caller gets the error, as a caller that took it at once does (the route
            # answers JSON 500 "internal_error"); none waits forever.
            failure = Failure()
            for waiter in waiting:
                if not waiter.called:
                    waiter.errback(failure)
            return
        for waiter in waiting:
            # One answered caller's callbacks may cancel another waiter (its client went
            # away): skip it, and answer the rest.
            if not waiter.called:
                self.served_total += 1
                waiter.callback(body)

    def _forget(self, waiter: Deferred[bytes]) -> None:
        # Cancelled (Klein cancels a route's Deferred when its client goes away).
        if waiter in self._waiting:
            self._waiting.remove(waiter)
        if not self._waiting and self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
