"""Server-sent events for ``GET /api/v1/events``: framing, one fan-out hub, bounded clients.

The stream: ``retry: <ms>`` first, then one frame per sample::

    event: snapshot
    id: <seq>
    data: <the sample's JSON, one line>

and a comment line (``: keep-alive``) when nothing else was written for ``heartbeat_s``.

An :class:`EventHub` subscribes to the Monitor only while at least one stream is open. It builds
each sample's frame once (from ``sample.encoded``, the JSON the Monitor made once per tick) and
hands the same bytes object to every stream. A stream whose transport pauses it (the client stops
reading) keeps live frames in a backlog; once that backlog holds more than
``max_backlog_bytes`` the connection is aborted and counted in ``dropped_slow_total``. While
paused nothing more is written to the transport, so its buffer stays near Twisted's
``bufferSize`` (64 KiB) plus one frame.

Everything here runs in the reactor thread.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.base import DelayedCall
from twisted.internet.defer import Deferred
from twisted.web.server import Request

from dashboard.web.json_api import BadRequest, json_unavailable, query_params

if TYPE_CHECKING:
    from dashboard.monitor import Monitor, Sample

DEFAULT_MAX_CLIENTS = 100
DEFAULT_MAX_BACKLOG_BYTES = 1 << 20
DEFAULT_HEARTBEAT_S = 15.0
DEFAULT_RETRY_MS = 2000
DEFAULT_RETRY_AFTER_S = 5
#: How often the hub's one timer looks for silent streams and for a stopped monitor, seconds
#: (more often when ``heartbeat_s`` is under twice this).
CHECK_EVERY_S = 1.0

HEARTBEAT = b": keep-alive\n\n"
EVENT_STREAM_HEADERS = {
    b"Content-Type": b"text/event-stream",
    b"Cache-Control": b"no-cache",
    b"X-Accel-Buffering": b"no",
}


def snapshot_frame(seq: int, encoded: bytes) -> bytes:
    """The ``event: snapshot`` frame of one sample. ``encoded`` is single-line JSON (the
    Monitor encodes with ``json.dumps``, which escapes every newline)."""
    return b"event: snapshot\nid: %d\ndata: %s\n\n" % (seq, encoded)


def last_event_id(request: Request) -> int | None:
    """The ``Last-Event-ID`` header as a sequence number; ``None`` when absent or empty.
    Anything but a decimal integer raises :class:`BadRequest` (answered 400)."""
    raw = request.getHeader(b"last-event-id")
    if raw is None or not raw.strip():
        return None
    text = raw.strip().decode("latin-1")
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        raise BadRequest(
            f"Last-Event-ID must be a snapshot seq (a decimal integer), got {text[:40]!r}",
            "Last-Event-ID",
        )
    return int(text)


class EventStream:
    """One open ``/events`` response. The transport pauses and resumes it (it is registered as
    the request's streaming producer: an ``IPushProducer`` by its methods); the hub offers it
    frames.

    ``replay``: samples still to send (the ones a reconnecting client missed), shared with the
    history ring; ``backlog``: live frames held while paused, shared with the other streams.
    """

    def __init__(self, hub: EventHub, request: Request, replay: list[Sample]) -> None:
        self.hub = hub
        self.request = request
        self.done: Deferred[bytes] = Deferred(self._cancelled)
        self.replay: deque[Sample] = deque(replay)
        self.backlog: deque[bytes] = deque()
        self.backlog_bytes = 0
        self.paused = False
        self.closed = False
        self.last_write_s = hub.now()

    # from the hub ------------------------------------------------------------------------

    def offer(self, frame: bytes, now: float) -> None:
        """A live frame: written now, or held in the backlog while paused (then maybe drop)."""
        if self.closed:
            return
        if self.paused or self.backlog or self.replay:
            self.backlog.append(frame)
            self.backlog_bytes += len(frame)
            if self.backlog_bytes > self.hub.max_backlog_bytes:
                self.hub.drop_slow(self)
            return
        self.request.write(frame)
        self.last_write_s = now

    def write_now(self, data: bytes, now: float) -> None:
        self.request.write(data)
        self.last_write_s = now

    def drain(self) -> None:
        """Write what waits (replay first, then the backlog) until done or paused again."""
        hub = self.hub
        while not self.paused and not self.closed:
            if self.replay:
                sample = self.replay.popleft()
                self.request.write(hub.frame_for(sample.seq, sample.encoded))
                hub.replayed_total += 1
            elif self.backlog:
                frame = self.backlog.popleft()
                self.backlog_bytes -= len(frame)
                self.request.write(frame)
            else:
                break
            self.last_write_s = hub.now()

    # IPushProducer: called by the HTTP channel when its transport's buffer fills / empties ---

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        if not self.closed:
            self.drain()

    def stopProducing(self) -> None:
        self.release()

    # endings -----------------------------------------------------------------------------

    def release(self) -> None:
        """Forget everything this stream holds and leave the hub. Safe to call twice."""
        if self.closed:
            return
        self.closed = True
        self.replay.clear()
        self.backlog.clear()
        self.backlog_bytes = 0
        if self.request.channel is not None and self.request.producer is self:
            self.request.unregisterProducer()
        self.hub.forget(self)

    def finish(self) -> None:
        """End the response cleanly (the monitor stopped): the client may reconnect."""
        self.release()
        if not self.done.called:
            self.done.callback(b"")

    def abort(self) -> None:
        """Drop the connection without flushing (a client that stopped reading). The request's
        ``notifyFinish`` then errbacks and Klein cancels ``done``."""
        self.release()
        transport: Any = self.request.transport
        if transport is not None:
            abort = getattr(transport, "abortConnection", None)
            (abort or transport.loseConnection)()

    def _cancelled(self, _: Deferred[bytes]) -> None:
        # Klein cancels the route's Deferred when the client disconnects.
        self.release()


class EventHub:
    """Fans every sample of one Monitor out to at most ``max_clients`` event streams.

    ``max_backlog_bytes``: live bytes held for a paused stream before it is dropped;
    ``heartbeat_s``: silence after which a comment line is sent; ``retry_ms``: the reconnect
    delay announced to clients; ``retry_after_s``: the ``Retry-After`` of a 503.

    One timer runs (every ``check_every_s``) only while streams are open: it sends the
    heartbeats and ends every stream once the monitor has stopped. Reactor thread only.
    """

    def __init__(
        self,
        monitor: Monitor,
        *,
        max_clients: int = DEFAULT_MAX_CLIENTS,
        max_backlog_bytes: int = DEFAULT_MAX_BACKLOG_BYTES,
        heartbeat_s: float = DEFAULT_HEARTBEAT_S,
        retry_ms: int = DEFAULT_RETRY_MS,
        retry_after_s: int = DEFAULT_RETRY_AFTER_S,
    ) -> None:
        if max_clients < 0:
            raise ValueError(f"max_clients must be >= 0, got {max_clients!r}")
        if max_backlog_bytes < 0:
            raise ValueError(f"max_backlog_bytes must be >= 0, got {max_backlog_bytes!r}")
        if not heartbeat_s > 0:
            raise ValueError(f"heartbeat_s must be > 0, got {heartbeat_s!r}")
        if retry_ms < 0 or retry_after_s < 0:
            raise ValueError(
                f"retry_ms and retry_after_s must be >= 0, got {retry_ms!r}, {retry_after_s!r}"
            )
        self.monitor = monitor
        self.max_clients = max_clients
        self.max_backlog_bytes = max_backlog_bytes
        self.heartbeat_s = heartbeat_s
        self.retry_ms = retry_ms
        self.retry_after_s = retry_after_s
        self.now: Callable[[], float] = monitor.reactor.seconds
        self.check_every_s = min(CHECK_EVERY_S, heartbeat_s / 2)
        self.streams: set[EventStream] = set()
        self._unsubscribe: Callable[[], None] | None = None
        self._timer: DelayedCall | None = None
        self._frame: tuple[int, bytes] = (-1, b"")
        self._last_publish_s = float("-inf")
        self.connected_total = 0
        self.rejected_total = 0
        self.dropped_slow_total = 0
        self.replayed_total = 0
        self.heartbeats_total = 0

    # HTTP --------------------------------------------------------------------------------

    def serve(self, request: Request) -> bytes | Deferred[bytes]:
        """Answer ``GET /api/v1/events``: a stream (a Deferred that fires when it ends), or a
        JSON error: 400 for a bad ``Last-Event-ID`` or query, 503 with ``Retry-After`` when
        ``max_clients`` streams are open or the monitor is not running."""
        query_params(request, {})
        since = last_event_id(request)
        if not self.monitor.running:
            return self._unavailable(request, "monitor_stopped", "the monitor is not running")
        if len(self.streams) >= self.max_clients:
            self.rejected_total += 1
            return self._unavailable(
                request,
                "too_many_clients",
                f"at most {self.max_clients} event streams may be open at once",
            )
        for name, value in EVENT_STREAM_HEADERS.items():
            request.setHeader(name, value)
        if request.method == b"HEAD":
            return b""
        stream = EventStream(self, request, self._replay_for(since))
        self.streams.add(stream)
        self.connected_total += 1
        if self._unsubscribe is None:
            self._unsubscribe = self.monitor.subscribe(self.publish)
        if self._timer is None:
            self._timer = self.monitor.reactor.callLater(self.check_every_s, self._check)
        request.notifyFinish().addBoth(lambda _: stream.release())
        request.registerProducer(stream, True)
        # registerProducer does not say whether the channel's transport is already full (a
        # pipelined response before this one): HTTPChannel keeps that in this flag.
        channel: Any = request.channel
        stream.paused = bool(getattr(channel, "_waitingForTransport", False))
        stream.write_now(b"retry: %d\n\n" % self.retry_ms, self.now())
        stream.drain()
        return stream.done

    def _replay_for(self, since: int | None) -> list[Sample]:
        """What a new stream gets before the live ones: the samples after ``since`` still in
        the ring; with no ``Last-Event-ID`` (or one from before a restart, larger than the
        newest seq) the newest sample alone, so the client shows data at once."""
        latest = self.monitor.latest()
        if since is None or since > latest.seq:
            return [latest]
        return list(self.monitor.samples(since_seq=since))

    def _unavailable(self, request: Request, error: str, message: str) -> bytes:
        return json_unavailable(
            request,
            error,
            f"{message}; retry in {self.retry_after_s} s",
            self.retry_after_s,
            max_clients=self.max_clients,
        )

    # fan-out -----------------------------------------------------------------------------

    def frame_for(self, seq: int, encoded: bytes) -> bytes:
        """The frame of sample ``seq``: the shared one for the newest, else built now."""
        if self._frame[0] == seq:
            return self._frame[1]
        return snapshot_frame(seq, encoded)

    def publish(self, sample: Sample) -> None:
        """The Monitor's subscriber: frame ``sample`` once, offer those bytes to every stream."""
        frame = snapshot_frame(sample.seq, sample.encoded)
        self._frame = (sample.seq, frame)
        now = self._last_publish_s = self.now()
        for stream in list(self.streams):
            try:
                stream.offer(frame, now)
            except Exception as exc:  # one broken stream never starves the others
                self.monitor.errors.record("sse", exc)
                stream.abort()

    def drop_slow(self, stream: EventStream) -> None:
        """``stream``'s backlog passed ``max_backlog_bytes``: abort it and count it."""
        self.dropped_slow_total += 1
        stream.abort()

    def forget(self, stream: EventStream) -> None:
        """Called by a stream as it ends; the last one out stops the subscription and timer."""
        self.streams.discard(stream)
        if not self.streams:
            self._idle()

    def _idle(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None

    def _check(self) -> None:
        self._timer = None
        if not self.monitor.running:
            self.close()
            return
        now = self.now()
        # While samples flow every stream that could be written was written at the last one.
        if now - self._last_publish_s >= self.heartbeat_s:
            for stream in list(self.streams):
                if now - stream.last_write_s >= self.heartbeat_s and not (
                    stream.paused or stream.backlog or stream.replay
                ):
                    try:
                        stream.write_now(HEARTBEAT, now)
                        self.heartbeats_total += 1
                    except Exception as exc:
                        self.monitor.errors.record("sse", exc)
                        stream.abort()
        if self.streams:
            self._timer = self.monitor.reactor.callLater(self.check_every_s, self._check)

    def close(self) -> None:
        """End every stream cleanly and stop the subscription and the timer."""
        for stream in list(self.streams):
            stream.finish()
        self._idle()

    # figures -----------------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """JSON-ready counters: open ``clients`` (and how many are ``paused``, holding
        ``backlog_bytes``), ``max_clients``, and totals since the hub was made."""
        return {
            "clients": len(self.streams),
            "max_clients": self.max_clients,
            "paused_clients": sum(1 for s in self.streams if s.paused),
            "backlog_bytes": sum(s.backlog_bytes for s in self.streams),
            "connected_total": self.connected_total,
            "rejected_total": self.rejected_total,
            "dropped_slow_total": self.dropped_slow_total,
            "replayed_total": self.replayed_total,
            "heartbeats_total": self.heartbeats_total,
        }
