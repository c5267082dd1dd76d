"""The Monitor: installs the probes, samples them into a bounded history ring, fans
samples out to subscribers, and undoes everything on ``stop()``."""

from __future__ import annotations

import json
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, cast

import attrs
from twisted.internet.base import DelayedCall
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort
from twisted.web.resource import IResource

from dashboard.answer_limits import (
    DEFAULT_FRESH_MIN_INTERVAL_S,
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_MAX_SERIES_ANSWERS,
    DEFAULT_MAX_SNAPSHOT_ANSWERS,
    DEFAULT_SLOW_CLIENT_TIMEOUT_S,
    BulkAnswers,
    FreshSnapshots,
)
from dashboard.probes.base import JSONDict, Probe, ProbeErrors
from dashboard.probes.connections import ConnectionsProbe
from dashboard.probes.deferreds import DeferredsProbe
from dashboard.probes.loop import LoopProbe
from dashboard.probes.pools import PoolsProbe, TrackablePool
from dashboard.probes.process import ProcessProbe
from dashboard.probes.profiler import Profiler
from dashboard.probes.stack_owner import path_list
from dashboard.probes.timeouts import TimeoutsProbe
from dashboard.redact import Redactor, param_names
from dashboard.web.binding import loopback_endpoint
from dashboard.web.host_check import host_names
from dashboard.web.sse import EventHub
from dashboard.web.stuck_server import StuckServer

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from dashboard.recorder.writer import RecordingWriter
    from dashboard.web.prometheus import SnapshotCollector

DEFAULT_ENDPOINT = "tcp:8089:interface=127.0.0.1"

#: Only one monitor may patch the process-wide Twisted classes at a time.
_active: list[Monitor] = []

Subscriber = Callable[["Sample"], None]


class Sample:
    """One snapshot as taken: its JSON encoding, made once for every reader, and the dict.

    Only the newest sample keeps the dict: once a newer one exists, ``release()`` drops it and
    ``data`` decodes the bytes on demand. Bytes are not tracked by the garbage collector, so a
    full history ring (900 samples of a busy service: hundreds of thousands of containers as
    dicts) does not lengthen every full collection of the host program.
    """

    __slots__ = ("_data", "encoded", "seq", "time")

    def __init__(self, *, seq: int, time: float, data: JSONDict, encoded: bytes) -> None:
        self.seq = seq
        self.time = time
        self.encoded = encoded
        self._data: JSONDict | None = data

    @property
    def data(self) -> JSONDict:
        data = self._data
        if data is None:  # an older sample: decoded each time, never kept
            decoded: JSONDict = json.loads(self.encoded)
            return decoded
        return data

    def release(self) -> None:
        """Keep only the bytes (the monitor calls this once a newer sample exists)."""
        self._data = None

    def __repr__(self) -> str:
        return f"Sample(seq={self.seq}, time={self.time}, {len(self.encoded)} bytes)"


def _serving_deferreds(events: EventHub | None, connections: ConnectionsProbe | None) -> list[Any]:
    """The Deferreds Twisted and Klein hold while the dashboard serves: each request's
    ``notifyFinish`` ones, for its open event streams and for every request in flight on its
    own port (a page, an API answer, ``?fresh=1``): the dashboard's own, not the program's.
    Called by the Deferred probe at collect time; reactor thread."""
    requests: list[Any] = []
    if events is not None:
        requests.extend(stream.request for stream in list(events.streams))
    if connections is not None:
        requests.extend(connections.own_requests())
    seen: set[int] = set()
    found: list[Any] = []
    for request in requests:
        for d in getattr(request, "notifications", ()):
            if id(d) not in seen:
                seen.add(id(d))
                found.append(d)
    return found


def _no_thread_calls(*_args: Any, **_kwargs: Any) -> None:
    """``callFromThread`` of a reactor that has none (a Clock): nothing can run from a thread."""


class MonitorAlreadyRunning(RuntimeError):
    """Raised by ``start()`` when another Monitor in this process is already started."""


@attrs.define(eq=False)
class Monitor:
    """Watches one reactor.

    ``interval`` seconds between samples; ``history`` samples kept (the window that
    ``lag_ms`` percentiles and the charts cover); ``block_threshold_ms`` how long the
    reactor must be stuck before the watchdog records a block with its stack.

    Access (see :mod:`dashboard.web.guard`): ``token`` is then required by the page, the API
    and the stream; ``metrics_token`` is also accepted on ``/metrics``; ``allowed_hosts`` adds
    names to the ``Host`` allow-list (loopback and the address a request arrived on); the
    page's sign-in cookie lasts ``session_max_age_s`` seconds (a day by default).

    Web answers (see :mod:`dashboard.answer_limits`): ``?fresh=1`` snapshots are taken at
    most once per ``fresh_min_interval_s`` (callers in between wait for the next one);
    at most ``max_history_answers`` history answers are written at once (16 series answers,
    32 snapshot and ``/metrics`` answers), and a client that stops reading one for
    ``slow_client_timeout_s`` seconds is dropped. ``stop()`` aborts every answer still being
    written.

    Recording (see :mod:`dashboard.recorder`): with ``record`` (a file path) every sample is
    also written to that SQLite file by a thread of its own, kept ``record_hours`` hours and
    at most about ``record_max_mb`` MB; ``start()`` raises
    ``dashboard.recorder.RecordingError`` for a file it cannot record into (and undoes
    everything on any failure); a file damaged inside stops the recording with one warning
    (the writer thread reads it). ``stop()`` writes what is queued and joins the thread, 5 s
    at most. ``reactor-dashboard replay`` serves the file.

    A probe whose failures reach ``errors.disable_after`` is switched off (uninstalled, its
    section null) at the next snapshot, and stays off.

    All methods are called from the reactor thread.
    """

    reactor: Any
    interval: float = attrs.field(default=1.0, kw_only=True)
    history: int = attrs.field(default=900, kw_only=True)
    block_threshold_ms: float = attrs.field(default=100.0, kw_only=True)
    top_sites: int = attrs.field(default=50, kw_only=True)
    top_connections: int = attrs.field(default=100, kw_only=True)
    oldest_deferreds: int = attrs.field(default=20, kw_only=True)
    max_sse_clients: int = attrs.field(default=100, kw_only=True)
    fresh_min_interval_s: float = attrs.field(default=DEFAULT_FRESH_MIN_INTERVAL_S, kw_only=True)
    max_history_answers: int = attrs.field(default=DEFAULT_MAX_IN_FLIGHT, kw_only=True)
    slow_client_timeout_s: float = attrs.field(default=DEFAULT_SLOW_CLIENT_TIMEOUT_S, kw_only=True)
    token: str | None = attrs.field(default=None, kw_only=True, repr=False)
    metrics_token: str | None = attrs.field(default=None, kw_only=True, repr=False)
    session_max_age_s: int = attrs.field(default=86400, kw_only=True)
    allowed_hosts: tuple[str, ...] = attrs.field(default=(), kw_only=True, converter=host_names)
    #: path prefixes (with a ``/``) or module names counted as library code when a block is
    #: named by the program's own line (``loop.blocks[].where``); ``user_paths`` claims code
    #: back (your own package installed in site-packages). See dashboard.probes.stack_owner.
    library_paths: tuple[str, ...] = attrs.field(default=(), kw_only=True, converter=path_list)
    user_paths: tuple[str, ...] = attrs.field(default=(), kw_only=True, converter=path_list)
    #: query parameter names whose values are hidden, added to the defaults (token,
    #: password, secret, key, signature, session, code...; see dashboard.redact)
    redact_params: tuple[str, ...] = attrs.field(default=(), kw_only=True, converter=param_names)
    #: busy time by handler (``loop.handlers``): each call the reactor makes is timed; the
    #: top ``top_handlers`` over the last ``handlers_window_s`` seconds are listed. None: on
    #: where the accelerator is built on CPython 3.11 and 3.12 (a Klein hello request 0.3-0.4%
    #: slower), off on 3.13 (1.3-1.6%) and the pure-Python path (a reactor iteration 1.33x);
    #: True / False: on / off anywhere (dashboard.probes.loop.HANDLERS_BY_DEFAULT)
    handlers: bool | None = attrs.field(default=None, kw_only=True)
    top_handlers: int = attrs.field(default=20, kw_only=True)
    handlers_window_s: float = attrs.field(default=10.0, kw_only=True)
    #: a file to record every sample into (see dashboard/recorder/), kept ``record_hours``
    #: hours and at most about ``record_max_mb`` megabytes
    record: str | None = attrs.field(default=None, kw_only=True)
    record_hours: float = attrs.field(default=24.0, kw_only=True)
    record_max_mb: float = attrs.field(default=512.0, kw_only=True)

    errors: ProbeErrors = attrs.field(factory=ProbeErrors, init=False)
    #: hides credentials in every URL shown (``redact_params`` included)
    redactor: Redactor = attrs.field(init=False)
    deferreds: DeferredsProbe = attrs.field(init=False)
    connections: ConnectionsProbe = attrs.field(init=False)
    pools: PoolsProbe = attrs.field(init=False)
    loop: LoopProbe = attrs.field(init=False)
    timeouts: TimeoutsProbe = attrs.field(init=False)
    process: ProcessProbe = attrs.field(init=False)
    #: profiles of the reactor thread on demand (``GET /api/v1/profile``), one at a time
    profiler: Profiler = attrs.field(init=False)
    #: the event-stream fan-out shared by every mount of this monitor's resource
    events: EventHub = attrs.field(init=False)
    #: ``?fresh=1`` snapshots for the web, coalesced (``web.fresh`` in the snapshot)
    fresh: FreshSnapshots = attrs.field(init=False)
    #: the limits and counters of ``/api/v1/history`` answers (``web.history``)
    history_answers: BulkAnswers = attrs.field(init=False)
    #: ... of ``/api/v1/series`` answers (``web.series``)
    series_answers: BulkAnswers = attrs.field(init=False)
    #: ... of ``/api/v1/snapshot`` (``?fresh=1`` too) and ``/metrics`` answers (``web.snapshot``)
    snapshot_answers: BulkAnswers = attrs.field(init=False)
    #: answers ``/api/v1/snapshot`` and ``/metrics`` on the ports of ``listen()`` while the
    #: loop is stuck past the block threshold (``web.stuck``; see dashboard.web.stuck_server)
    stuck: StuckServer = attrs.field(init=False)

    _samples: deque[Sample] = attrs.field(init=False)
    _subscribers: list[Subscriber] = attrs.field(init=False, factory=list)
    _seq: int = attrs.field(init=False, default=0)
    _timer: DelayedCall | None = attrs.field(init=False, default=None)
    _running: bool = attrs.field(init=False, default=False)
    _started_at: float = attrs.field(init=False, default=0.0)
    _switched_off: set[str] = attrs.field(init=False, factory=set)
    _recorder: RecordingWriter | None = attrs.field(init=False, default=None)
    _unsubscribe_recorder: Callable[[], None] | None = attrs.field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        if not self.interval > 0:
            raise ValueError(f"interval must be > 0 seconds, got {self.interval!r}")
        if self.history < 1:
            raise ValueError(f"history must be >= 1 sample, got {self.history!r}")
        if not self.block_threshold_ms > 0:
            raise ValueError(f"block_threshold_ms must be > 0, got {self.block_threshold_ms!r}")
        from dashboard.web.guard import check_token
        from dashboard.web.host_check import HostAllowList
        from dashboard.web.session import check_max_age

        check_token(self.token, "token")
        check_token(self.metrics_token, "metrics_token")
        check_max_age(self.session_max_age_s)
        if not self.record_hours > 0:
            raise ValueError(f"record_hours must be > 0, got {self.record_hours!r}")
        if not self.record_max_mb > 0:
            raise ValueError(f"record_max_mb must be > 0, got {self.record_max_mb!r}")
        HostAllowList(self.allowed_hosts)
        clock = self.reactor.seconds
        window_s = self.history * self.interval
        self._samples = deque(maxlen=self.history)
        self.deferreds = DeferredsProbe(
            self.reactor,
            self.errors,
            clock,
            top_sites=self.top_sites,
            oldest=self.oldest_deferreds,
        )
        self.redactor = Redactor(self.redact_params)
        self.connections = ConnectionsProbe(
            self.reactor, self.errors, clock, top_n=self.top_connections, redactor=self.redactor
        )
        self.pools = PoolsProbe(self.reactor, self.errors, clock)
        self.loop = LoopProbe(
            self.reactor,
            self.errors,
            clock,
            block_threshold_ms=self.block_threshold_ms,
            window_s=window_s,
            library_paths=self.library_paths,
            user_paths=self.user_paths,
            handlers=self.handlers,
            top_handlers=self.top_handlers,
            handlers_window_s=self.handlers_window_s,
        )
        self.timeouts = TimeoutsProbe(
            self.reactor, self.errors, clock, loop=self.loop, deferreds=self.deferreds
        )
        self.process = ProcessProbe(self.errors)
        self.profiler = Profiler(
            self.reactor, self.loop, lambda exc: self.errors.record("profile", exc)
        )
        if self.max_sse_clients < 1:
            raise ValueError(f"max_sse_clients must be >= 1, got {self.max_sse_clients!r}")
        self.events = EventHub(self, max_clients=self.max_sse_clients)
        self.fresh = FreshSnapshots(
            self._encoded_snapshot, self.reactor, min_interval_s=self.fresh_min_interval_s
        )
        self.history_answers = BulkAnswers(
            max_in_flight=self.max_history_answers,
            slow_client_timeout_s=self.slow_client_timeout_s,
        )
        self.series_answers = BulkAnswers(
            max_in_flight=DEFAULT_MAX_SERIES_ANSWERS,
            slow_client_timeout_s=self.slow_client_timeout_s,
        )
        self.snapshot_answers = BulkAnswers(
            max_in_flight=DEFAULT_MAX_SNAPSHOT_ANSWERS,
            slow_client_timeout_s=self.slow_client_timeout_s,
        )
        self.stuck = StuckServer(
            busy_since=self.loop.busy_since,
            stuck_now=self.loop.stuck_now,
            newest=self._newest_encoded,
            families=self._metric_families,
            # a Clock in unit tests has none; a real reactor always does
            call_from_thread=getattr(self.reactor, "callFromThread", _no_thread_calls),
            on_error=lambda exc: self.errors.record("web", exc),
        )
        stuck = weakref.ref(self.stuck)  # weakly, as below: the probe must not hold the monitor

        def loop_stuck(tick: float) -> None:
            server = stuck()
            if server is not None:
                server.loop_stuck(tick)

        self.loop.on_stuck = loop_stuck
        # weakly: a probe's hooks may outlive its stop() on the stack, the monitor must not
        events = weakref.ref(self.events)
        connections = weakref.ref(self.connections)
        self.deferreds.serving = lambda: _serving_deferreds(events(), connections())

    @property
    def probes(self) -> tuple[Probe, ...]:
        return (
            self.loop,
            self.deferreds,
            self.connections,
            self.pools,
            self.timeouts,
            self.process,
        )

    @property
    def running(self) -> bool:
        return self._running

    # lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Install every probe and start sampling. Calling it again while running does nothing."""
        if self._running:
            return
        if _active:
            raise MonitorAlreadyRunning(
                "another Monitor is already started in this process; stop() it first"
            )
        recorder = self._open_recorder()  # a file it cannot use raises before any patch
        _active.append(self)
        self._running = True
        self._started_at = time.time()
        installed: list[Probe] = []
        try:
            for probe in self.probes:
                if probe.name in self._switched_off:
                    continue
                probe.install()
                installed.append(probe)
            if recorder is not None:  # its thread reads the file's size, off this thread
                recorder.start()
                self._recorder = recorder
                self._unsubscribe_recorder = self.subscribe(recorder.offer)
        except BaseException:  # undo everything: never half-started
            if self._unsubscribe_recorder is not None:
                self._unsubscribe_recorder()
                self._unsubscribe_recorder = None
            self._recorder = None
            for probe in reversed(installed):
                probe.uninstall()
            self._running = False
            _active.remove(self)
            if recorder is not None:
                recorder.close()
            raise
        self.fresh.open()
        self.stuck.open()
        self._timer = self.reactor.callLater(self.interval, self._tick)

    def stop(self) -> None:
        """Undo every patch, stop every timer and thread. Safe to call twice."""
        if not self._running:
            return
        self._running = False
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        closes = (
            self.stuck.close,
            self.fresh.close,
            self.events.close,
            self.history_answers.close,
            self.series_answers.close,
            self.snapshot_answers.close,
            self.profiler.stop,
        )
        for close in closes:  # before the probes go
            try:
                close()
            except Exception as exc:
                self.errors.record("web", exc)
        for probe in reversed(self.probes):
            try:
                probe.uninstall()
            except Exception as exc:  # keep undoing the others
                self.errors.record(probe.name, exc)
        self._close_recorder()
        if self in _active:
            _active.remove(self)

    def _open_recorder(self) -> RecordingWriter | None:
        """The recorder of ``record`` (its file opened and checked), not started; None
        when not recording. Raises ``dashboard.recorder.RecordingError`` for a file it
        cannot record into (not a recording, a newer format, a folder that does not exist)."""
        if self.record is None:
            return None
        from dashboard.recorder.store import RecordingStore
        from dashboard.recorder.writer import RecordingWriter

        store = RecordingStore(self.record, create=True)
        return RecordingWriter(
            store,
            max_age_s=self.record_hours * 3600.0,
            max_bytes=int(self.record_max_mb * 1024 * 1024),
        )

    def _close_recorder(self) -> None:
        """Write what the recorder holds and join its thread (at stop())."""
        if self._unsubscribe_recorder is not None:
            self._unsubscribe_recorder()
            self._unsubscribe_recorder = None
        recorder, self._recorder = self._recorder, None
        if recorder is not None:
            try:
                recorder.close()
            except Exception as exc:
                self.errors.record("recorder", exc)

    @property
    def recorder(self) -> RecordingWriter | None:
        """The running recorder (``record=``), or None."""
        return self._recorder

    def __enter__(self) -> Monitor:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # sampling ----------------------------------------------------------------------------

    def _tick(self) -> None:
        self._timer = None
        try:
            self.sample()
        finally:
            if self._running:
                self._timer = self.reactor.callLater(self.interval, self._tick)

    def snapshot(self) -> JSONDict:
        """Collect every probe now (not stored in the history). Reactor thread only.

        It moves no baseline the sampler measures: figures over an interval (busy share, CPU
        percent, the latest lag) cover the time since the newest stored sample, and the next
        stored sample is what it would have been without this call."""
        return self._collect(close_interval=False)

    def _encoded_snapshot(self) -> bytes:
        """``snapshot()`` as JSON bytes, for the web's coalesced ``?fresh=1``."""
        return json.dumps(self.snapshot(), separators=(",", ":")).encode()

    def _collect(self, *, close_interval: bool) -> JSONDict:
        """Every probe's section: ``collect()`` (closing the interval: the sampler's read) or,
        for a probe that has one, ``peek()`` (closing nothing)."""
        self._switch_off_failing()
        data: JSONDict = {
            "seq": self._seq,
            "time": time.time(),
            "reactor": type(self.reactor).__name__,
            "interval_s": self.interval,
        }
        for probe in self.probes:
            if probe.name in self._switched_off:
                data[probe.name] = None
                continue
            try:
                read = probe.collect if close_interval else getattr(probe, "peek", probe.collect)
                data[probe.name] = read()
            except Exception as exc:
                self.errors.record(probe.name, exc)
                data[probe.name] = None
        try:
            data["sse"] = self.events.stats()
        except Exception as exc:
            self.errors.record("web", exc)
            data["sse"] = None
        data["web"] = {
            "fresh": self.fresh.as_json(),
            "history": self.history_answers.as_json(),
            "series": self.series_answers.as_json(),
            "snapshot": self.snapshot_answers.as_json(),
            "stuck": self.stuck.as_json(),
        }
        if self._recorder is not None:
            data["recorder"] = self._recorder.as_json()
        data["errors"] = self.errors.as_json()
        return data

    def _switch_off_failing(self) -> None:
        """Uninstall every probe whose failures reached ``errors.disable_after``: its hooks
        are gone (it can fail no more and costs nothing) and its section is null from now on.
        ``errors.as_json()["disabled"]`` names it. Reactor thread."""
        for probe in self.probes:
            if probe.name in self._switched_off or self.errors.enabled(probe.name):
                continue
            self._switched_off.add(probe.name)
            try:
                probe.uninstall()
            except Exception as exc:
                self.errors.record(probe.name, exc)

    def sample(self) -> Sample:
        """Take the next snapshot into the history ring and hand it to every subscriber."""
        self._seq += 1
        data = self._collect(close_interval=True)
        encoded = json.dumps(data, separators=(",", ":"), allow_nan=False).encode()
        sample = Sample(seq=self._seq, time=data["time"], data=data, encoded=encoded)
        if self._samples:
            self._samples[-1].release()
        self._samples.append(sample)
        for subscriber in list(self._subscribers):
            try:
                subscriber(sample)
            except Exception as exc:
                self.errors.record("subscribers", exc)
        return sample

    def _newest_encoded(self) -> bytes | None:
        """The newest sample's JSON bytes (``None`` before the first). Any thread: the stuck
        server reads it while the reactor thread cannot answer."""
        try:
            return self._samples[-1].encoded
        except IndexError:
            return None

    def _metric_families(self, data: JSONDict) -> list[Metric]:
        """The metric families of the snapshot ``data``. Any thread (the stuck server's)."""
        from dashboard.web.prometheus import SnapshotCollector

        return list(SnapshotCollector(self).families(data))

    def latest(self) -> Sample:
        """The newest sample, taking one first if none exists yet."""
        return self._samples[-1] if self._samples else self.sample()

    def samples(
        self, since_seq: int | None = None, seconds: float | None = None
    ) -> Iterator[Sample]:
        """Samples in the history ring, oldest first: those after ``since_seq``, or those of
        the last ``seconds``."""
        horizon = time.time() - seconds if seconds is not None else None
        for sample in list(self._samples):
            if since_seq is not None and sample.seq <= since_seq:
                continue
            if horizon is not None and sample.time < horizon:
                continue
            yield sample

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Call ``subscriber(sample)`` for every new sample; returns the unsubscribe function."""
        self._subscribers.append(subscriber)

        def unsubscribe() -> None:
            if subscriber in self._subscribers:
                self._subscribers.remove(subscriber)

        return unsubscribe

    @property
    def history_seconds(self) -> int:
        """How many seconds the history ring covers (at least 1)."""
        return max(1, round(self.history * self.interval))

    # web ---------------------------------------------------------------------------------

    def resource(self) -> IResource:
        """The dashboard as a twisted.web resource, to mount under any prefix."""
        from dashboard.web.app import DashboardApp
        from dashboard.web.guard import GuardedResource

        app: Any = DashboardApp(self, events=self.events).app.resource()
        guarded = GuardedResource(
            cast(IResource, app),
            token=self.token,
            metrics_token=self.metrics_token,
            session_max_age_s=self.session_max_age_s,
            allowed_hosts=self.allowed_hosts,
            reactor=self.reactor,
        )
        return cast(IResource, guarded)

    def listen(
        self, endpoint: str | int = DEFAULT_ENDPOINT, *, allow_remote: bool = False
    ) -> Deferred[IListeningPort]:
        """Serve the dashboard alone on ``endpoint`` (a port number or a Twisted endpoint
        string). A TCP endpoint without ``interface=`` binds 127.0.0.1; a non-loopback
        interface needs ``allow_remote=True``, and is warned about (log and stderr) when no
        ``token`` is set."""
        from twisted.internet.endpoints import serverFromString

        from dashboard.web.guard import GuardedResource, warn_if_exposed
        from dashboard.web.quiet_site import QuietSite

        description = loopback_endpoint(endpoint, allow_remote=allow_remote)
        warn_if_exposed(description, token_set=self.token is not None)
        guard = self.resource()
        site = QuietSite(guard)
        self.connections.mark_own(site)  # its port and connections: the dashboard's own
        port: Deferred[IListeningPort] = serverFromString(self.reactor, description).listen(site)

        def serve_while_stuck(listening: IListeningPort) -> IListeningPort:
            if isinstance(guard, GuardedResource):
                self.stuck.add_port(listening, guard)  # False for TLS: not served while stuck
            return listening

        port.addCallback(serve_while_stuck)
        return port

    def answer_while_stuck(self, port: IListeningPort, resource: IResource, prefix: str) -> None:
        """Answer ``/api/v1/snapshot`` and ``/metrics`` on ``port`` too while the loop is stuck
        (as on the ports of ``listen()``): a listening port of your own Site, where
        ``resource`` (what ``resource()`` returned) is mounted at ``prefix`` (``"/dashboard"``).
        Every other request arriving on it while stuck waits for the loop, as before (it is
        handed back to your Site). ``ValueError`` for a port that cannot be served so (TLS,
        not a twisted.web Site). Reactor thread."""
        from dashboard.web.guard import GuardedResource

        if not isinstance(resource, GuardedResource):
            raise ValueError("resource must be what this monitor's resource() returned")
        segments = tuple(part.encode() for part in prefix.strip("/").split("/") if part)
        if not self.stuck.add_port(port, resource, segments):
            raise ValueError(f"{port!r} is not a plain (non-TLS) twisted.web Site's port")

    def prometheus_collector(self) -> SnapshotCollector:
        """A prometheus_client collector of this monitor's figures, computed at scrape time
        from the newest sample; add it to your own registry."""
        from dashboard.web.prometheus import SnapshotCollector

        return SnapshotCollector(self)

    # pools -------------------------------------------------------------------------------

    def track_pool(self, pool: TrackablePool, name: str) -> None:
        """Show a pool of your own (see :class:`dashboard.probes.pools.TrackablePool`)."""
        self.pools.track(pool, name)

    def untrack_pool(self, name: str) -> None:
        self.pools.untrack(name)
