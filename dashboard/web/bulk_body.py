"""Large answers written as the client reads them (``/api/v1/history``, ``/api/v1/series``,
``/api/v1/snapshot`` and ``/metrics``).

:func:`stream_body` answers a request with an iterable of ``bytes`` pieces (the stored
samples' own ``encoded`` bytes and the separators between them: nothing is joined). A push
producer registered on the request writes them only while the transport wants more, at most
:data:`WRITE_BYTES` (16 KiB) at a time: once the transport's buffer passes Twisted's
``bufferSize`` (64 KiB) the channel pauses the producer, and resumes it when the client has
read the buffer empty. So an answer holds at most about 80 KiB of the transport's buffer in
the process, however large the body or its pieces. (A piece over 16 KiB is written in 16 KiB
slices: Twisted's transports take ``bytes`` only, so each slice is a copy, made when its turn
comes and handed to the transport, which would join it into its buffer anyway.)

Limits, from a :class:`dashboard.answer_limits.BulkAnswers` (one per kind of answer, shared
by every request of that kind): at most ``max_in_flight`` answers are written at once, a
caller beyond gets ``503`` JSON with ``Retry-After``; a client that **stops reading** is
dropped (its connection aborted) and counted in ``dropped_slow_total``. **Stops reading**
means: at every look over ``slow_client_timeout_s`` seconds the answer was waiting for the
client (the producer paused) and the answer's unread bytes did not fall: those in the
transport's buffer plus, on Linux, those the kernel holds in the socket's send queue not yet
acknowledged by the client (``TIOCOUTQ``; elsewhere the transport's buffer alone, which falls
only when the kernel's queue has room). The producer looks every quarter of the timeout, so
a client that stopped is dropped 1 to 1.25 timeouts later, and one that reads slowly but
steadily (a few KB a second, through any receive buffer) is not dropped.

Use from a Klein route::

    return stream_body(request, pieces, answers=limits, clock=reactor, length=total)

Everything here runs in the reactor thread.
"""

from __future__ import annotations

import contextlib
import struct
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from twisted.internet.base import DelayedCall
from twisted.internet.defer import Deferred
from twisted.web.server import Request

from dashboard.answer_limits import BulkAnswers
from dashboard.web.json_api import JSON_TYPE, json_unavailable

ErrorSink = Callable[[Exception], None]

#: The most bytes handed to the transport at once.
WRITE_BYTES = 16 * 1024


def _slices(pieces: Iterator[bytes]) -> Iterator[bytes]:
    """``pieces``, any over :data:`WRITE_BYTES` cut into slices of at most that."""
    for piece in pieces:
        if len(piece) <= WRITE_BYTES:
            yield piece
            continue
        view = memoryview(piece)
        for at in range(0, len(piece), WRITE_BYTES):
            yield bytes(view[at : at + WRITE_BYTES])


def _socket_of(transport: Any) -> Any:
    """The Twisted transport that owns the socket under ``transport`` (itself, or the one
    beneath a TLS wrapper), or ``None``."""
    for _ in range(3):
        if transport is None or isinstance(getattr(transport, "dataBuffer", None), bytes):
            return transport
        transport = getattr(transport, "transport", None)
    return None


def _kernel_unsent(transport: Any) -> int:
    """Bytes in the socket's send queue not yet acknowledged by the peer (Linux:
    ``TIOCOUTQ``); 0 where that is not known."""
    if sys.platform != "linux":
        return 0
    import fcntl
    import termios

    try:
        fileno = transport.fileno()
        if not isinstance(fileno, int) or fileno < 0:
            return 0
        queued: int = struct.unpack("i", fcntl.ioctl(fileno, termios.TIOCOUTQ, b"\0" * 4))[0]
    except Exception:  # a closed socket, a non-socket transport: nothing known
        return 0
    return queued


def unread_bytes(transport: Any) -> int | None:
    """Bytes of the answer written and not yet taken by the client: those in the
    transport's buffer (a Twisted TCP or Unix transport; through a TLS wrapper, the one
    beneath) plus those the kernel holds unacknowledged in the socket's send queue (Linux).
    ``None`` when the transport's buffer cannot be read."""
    owner = _socket_of(transport)
    if owner is None:
        return None
    offset = getattr(owner, "offset", 0)
    temp = getattr(owner, "_tempDataLen", 0)
    if not isinstance(offset, int) or not isinstance(temp, int):
        return None
    return len(owner.dataBuffer) - offset + temp + _kernel_unsent(owner)


def stream_body(
    request: Request,
    pieces: Iterable[bytes],
    *,
    answers: BulkAnswers,
    clock: Any,
    length: int | None = None,
    content_type: bytes = JSON_TYPE,
    on_error: ErrorSink | None = None,
) -> bytes | Deferred[None]:
    """Answer ``request`` with the concatenation of ``pieces``, written as the client reads.

    ``answers``: the limits and counters of this kind of answer; ``clock``: the reactor
    (``callLater``, ``seconds``); ``length``: the body's size in bytes, when known, sent as
    ``Content-Length`` (else HTTP/1.1 chunks it); ``on_error``: told of an exception raised
    by ``pieces`` (the connection is then aborted: the status line is already sent).
    ``pieces`` is iterated lazily, one piece per write.

    Returns what a Klein route returns: a 503 JSON body when ``answers.max_in_flight``
    answers are being written, ``b""`` for ``HEAD``, or a Deferred that fires (``None``) once
    the last piece is written, so Klein finishes the request. The status is 200 and the
    answer uncached (``Cache-Control: no-store``), as :func:`json_api.json_body` does.
    """
    if answers.in_flight >= answers.max_in_flight:
        answers.refused_total += 1
        return json_unavailable(
            request,
            "too_many_answers",
            f"at most {answers.max_in_flight} of these answers are written at once;"
            f" retry in {answers.retry_after_s} s",
            answers.retry_after_s,
            max_in_flight=answers.max_in_flight,
        )
    request.setResponseCode(200)
    request.setHeader(b"Content-Type", content_type)
    request.setHeader(b"Cache-Control", b"no-store")
    if length is not None:
        request.setHeader(b"Content-Length", b"%d" % length)
    if request.method == b"HEAD":
        answers.served_total += 1
        return b""
    return BodyProducer(request, _slices(iter(pieces)), answers, clock, on_error).start()


def stream_whole(
    request: Request,
    body: bytes,
    *,
    answers: BulkAnswers,
    clock: Any,
    content_type: bytes = JSON_TYPE,
    on_error: ErrorSink | None = None,
) -> bytes | Deferred[None]:
    """:func:`stream_body` of one body already built (a snapshot's bytes, the metrics
    text), with its ``Content-Length``: written as the client reads it, in slices, counted
    in ``answers`` (a 503 beyond its limit), never handed to the transport whole."""
    return stream_body(
        request,
        (body,),
        answers=answers,
        clock=clock,
        length=len(body),
        content_type=content_type,
        on_error=on_error,
    )


class BodyProducer:
    """One answer being written: an ``IPushProducer`` (by its methods) registered on the
    request, paused and resumed by the HTTP channel as the transport's buffer fills and
    empties. ``done`` fires once every piece is written; it is cancelled (by Klein) or
    released (by ``notifyFinish``) when the client goes away first, and aborted by
    ``answers.close()`` (the Monitor stopping)."""

    def __init__(
        self,
        request: Request,
        pieces: Iterator[bytes],
        answers: BulkAnswers,
        clock: Any,
        on_error: ErrorSink | None,
    ) -> None:
        self.request = request
        self.pieces = pieces
        self.answers = answers
        self.clock = clock
        self.on_error = on_error
        self.done: Deferred[None] = Deferred(self._cancelled)
        self.paused = False
        self.closed = False
        self.progress_s = clock.seconds()
        self.written_bytes = 0
        #: the answer's bytes not yet taken by the client at the last check (None: not known)
        self.unread: int | None = None
        self._timer: DelayedCall | None = None

    @property
    def check_s(self) -> float:
        """Seconds between two looks at the client's progress: a quarter of the timeout."""
        return self.answers.slow_client_timeout_s / 4

    def start(self) -> Deferred[None]:
        self.answers.track(self)
        self.request.notifyFinish().addBoth(lambda _: self.release())
        self.request.registerProducer(self, True)
        # registerProducer does not say whether the channel's transport is already full (a
        # pipelined answer before this one): HTTPChannel keeps that in this flag.
        channel: Any = self.request.channel
        self.paused = bool(getattr(channel, "_waitingForTransport", False))
        self._timer = self.clock.callLater(self.check_s, self._check)
        self._write()
        return self.done

    def _write(self) -> None:
        """Write pieces until the transport pauses us or the body is done."""
        while not self.paused and not self.closed:
            try:
                piece = next(self.pieces, None)
            except Exception as exc:
                self._failed(exc)
                return
            if piece is None:
                self._finish()
                return
            if piece:  # an empty chunk would end a chunked body early
                self.written_bytes += len(piece)
                self.request.write(piece)

    # IPushProducer: called by the HTTP channel ----------------------------------------------

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self.progress_s = self.clock.seconds()
        if not self.closed:
            self._write()

    def stopProducing(self) -> None:
        self.release()

    # endings -----------------------------------------------------------------------------

    def release(self) -> None:
        """Leave the in-flight count, stop the timer, forget the pieces. Safe to call twice."""
        if self.closed:
            return
        self.closed = True
        self.answers.untrack(self)
        self.pieces = iter(())
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
        if self.request.channel is not None and self.request.producer is self:
            self.request.unregisterProducer()

    def _finish(self) -> None:
        self.release()
        self.answers.served_total += 1
        if not self.done.called:
            self.done.callback(None)

    def abort(self) -> None:
        """Drop the connection without flushing. The request's ``notifyFinish`` then
        errbacks and Klein cancels ``done``."""
        self.release()
        transport: Any = self.request.transport
        if transport is not None:
            abort = getattr(transport, "abortConnection", None)
            (abort or transport.loseConnection)()

    def _failed(self, exc: Exception) -> None:
        if self.on_error is not None:
            with contextlib.suppress(Exception):  # reporting must never stop the abort
                self.on_error(exc)
        self.abort()

    def _check(self) -> None:
        """The slow-client timer, every :attr:`check_s`: the client made progress when the
        producer is not paused (the transport wants more) or the answer's unread bytes
        (:func:`unread_bytes`) fell since the last look (the client took some); one that
        made none for the timeout is dropped."""
        self._timer = None
        if self.closed:
            return
        now = self.clock.seconds()
        unread = unread_bytes(self.request.transport)
        if not self.paused or (
            unread is not None and self.unread is not None and unread < self.unread
        ):
            self.progress_s = now
        self.unread = unread
        # (a hair under the timeout: the quarters, added up as floats, may fall short)
        if now - self.progress_s >= self.answers.slow_client_timeout_s - 1e-6:
            self.answers.dropped_slow_total += 1
            self.abort()
            return
        self._timer = self.clock.callLater(self.check_s, self._check)

    def _cancelled(self, _: Deferred[None]) -> None:
        # Klein cancels the route's Deferred when the client disconnects.
        self.release()
