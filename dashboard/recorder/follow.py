"""``reactor-dashboard record URL --out PATH``: record a running dashboard from outside.

It follows the dashboard's event stream (``GET <URL>api/v1/events``, see
dashboard/web/sse.py: one ``snapshot`` frame per sample, ``id:`` its seq) and writes every
sample into a recording file with the same writer a recording Monitor uses
(dashboard/recorder/writer.py). After a disconnect it reconnects with ``Last-Event-ID`` (the
last seq written), so the dashboard replays what was missed from its history ring; it tries
at most ``--retries`` times in a row, waiting 0.5 s, 1 s, 2 s ... (at most 10 s) between
tries, and the count starts again once a sample arrives. An answer that will not change by
asking again (400, 401, 403, 404, 405, 421) stops it at once, in one line.

Nothing received is dropped: when the writer's queue is full (a reconnection replays up to
the dashboard's whole history ring at once) the reader waits for room. An event larger than
:data:`MAX_EVENT_BYTES` is skipped and counted. The summary line says how many samples were
written and dropped; any dropped (the file failed) makes the exit status 1.

SIGINT and SIGTERM stop it cleanly: what was received is written, the file closed, exit 0.
The token comes from ``--token``, the URL's ``?token=`` (the address the dashboard printed;
never printed back) or ``$REACTOR_DASHBOARD_TOKEN``, and is sent as ``Authorization:
Bearer``; sending it over plain http to a host other than loopback is warned about. Main
thread only (a blocking reader: no reactor).
"""

from __future__ import annotations

import argparse
import http.client
import ipaddress
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

import attrs

from dashboard.recorder.store import RecordingError, RecordingStore
from dashboard.recorder.writer import RecordingWriter

TOKEN_ENV = "REACTOR_DASHBOARD_TOKEN"
#: seconds without a byte (heartbeats come every 15 s) before the stream counts as dead
READ_TIMEOUT_S = 45.0
FIRST_BACKOFF_S = 0.5
LAST_BACKOFF_S = 10.0
#: the longest frame accepted (a sample's JSON); a longer line ends the connection
MAX_LINE_BYTES = 64 * 1024 * 1024
#: the largest event kept (its data lines together); a larger one is skipped and counted
MAX_EVENT_BYTES = 64 * 1024 * 1024
#: answers that asking again will not change: the follower stops at once
REFUSED_STATUSES = frozenset({400, 401, 403, 404, 405, 421})


class Stopped(Exception):
    """SIGINT or SIGTERM arrived."""


class Refused(Exception):
    """The dashboard refused the stream for good (bad token, not a dashboard)."""


@attrs.define
class Received:
    """One sample as it came off the stream: what the writer's ``offer`` reads."""

    seq: int
    time: float
    encoded: bytes


def events_url(url: str) -> str:
    """``<url>api/v1/events``; ``url`` is the page's address (a missing ``/`` is added)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not a dashboard address (http://host:port/...): {url!r}")
    base = url if url.endswith("/") else url + "/"
    return urljoin(base, "api/v1/events")


def token_from_url(url: str) -> tuple[str, str | None]:
    """``url`` without its ``token=`` query parameter, and that token (None when absent)."""
    parts = urlsplit(url)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    tokens = [value for name, value in pairs if name == "token"]
    if not tokens:
        return url, None
    query = urlencode([(name, value) for name, value in pairs if name != "token"])
    return urlunsplit(parts._replace(query=query)), tokens[-1] or None


def is_loopback(host: str) -> bool:
    """``host`` (a name or an address) is this machine."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def clear_text_warning(url: str, token: str | None) -> str | None:
    """What to warn about when ``token`` would cross a network in clear text (plain http
    to a host other than loopback); None when it would not."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if not token or parts.scheme != "http" or is_loopback(host):
        return None
    return (
        f"the token goes in clear text over plain http to {host}"
        " (use https, or an SSH tunnel to 127.0.0.1)"
    )


def frames(
    response: Any, on_oversized: Callable[[], None] | None = None
) -> Iterator[tuple[int | None, bytes]]:
    """(id, data) of every ``snapshot`` event of an SSE body, as they arrive. An event
    whose data passes :data:`MAX_EVENT_BYTES` is skipped (``on_oversized`` called)."""
    event_id: int | None = None
    data: bytes | None = None
    kind = b"message"
    oversized = False
    while True:
        line = response.readline(MAX_LINE_BYTES)
        if not line:
            return
        if not line.endswith(b"\n"):
            raise OSError("an event line longer than the limit, or a cut stream")
        line = line.rstrip(b"\r\n")
        if not line:
            if oversized:
                if on_oversized is not None:
                    on_oversized()
            elif data is not None and kind == b"snapshot":
                yield event_id, data
            event_id, data, kind, oversized = None, None, b"message", False
            continue
        if oversized:
            continue
        name, _, value = line.partition(b":")
        value = value[1:] if value.startswith(b" ") else value
        if name == b"id" and value.isdigit():
            event_id = int(value)
        elif name == b"data":
            if (0 if data is None else len(data) + 1) + len(value) > MAX_EVENT_BYTES:
                data, oversized = None, True  # its bytes go now; the rest is skipped
            else:
                data = value if data is None else data + b"\n" + value
        elif name == b"event":
            kind = value


@attrs.define
class Follower:
    """Follows one dashboard's stream into ``writer``."""

    url: str
    writer: RecordingWriter
    token: str | None = attrs.field(default=None, repr=False)
    retries: int = 10
    last_id: int | None = None
    received_total: int = 0
    connections_total: int = 0
    #: events skipped for passing MAX_EVENT_BYTES
    oversized_total: int = 0
    _sleep: Any = time.sleep

    def connect(self) -> Any:
        parts = urlsplit(self.url)
        kind = (
            http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        )
        connection = kind(parts.hostname or "", parts.port, timeout=READ_TIMEOUT_S)
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if self.last_id is not None:
            headers["Last-Event-ID"] = str(self.last_id)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        if response.status in REFUSED_STATUSES:
            raise Refused(f"{self.url} answered {response.status} {response.reason}")
        if response.status != 200:
            raise OSError(f"{self.url} answered {response.status} {response.reason}")
        self.connections_total += 1
        return response

    def run(self) -> None:
        """Follow until stopped (:class:`Stopped`) or ``retries`` failures in a row
        (:class:`OSError`)."""
        failures = 0
        backoff = FIRST_BACKOFF_S
        while True:
            reason = "the stream ended"
            try:
                response = self.connect()
                for event_id, data in frames(response, self._count_oversized):
                    self.take(event_id, data)
                    failures, backoff = 0, FIRST_BACKOFF_S
            except (OSError, http.client.HTTPException) as exc:
                reason = str(exc) or type(exc).__name__
            failures += 1
            if failures > self.retries:
                raise OSError(f"gave up after {self.retries} tries in a row: {reason}")
            self._sleep(backoff)
            backoff = min(LAST_BACKOFF_S, backoff * 2)

    def _count_oversized(self) -> None:
        self.oversized_total += 1

    def take(self, event_id: int | None, data: bytes) -> None:
        try:
            sample = json.loads(data)
            moment = float(sample["time"])
            seq = int(sample.get("seq", event_id or 0))
        except (ValueError, KeyError, TypeError):
            return  # not a sample: skipped
        self.writer.put(Received(seq, moment, data))  # waits for room: nothing dropped
        self.received_total += 1
        if event_id is not None:
            self.last_id = event_id


def follow_command(args: argparse.Namespace) -> int:
    """The ``record`` command: the exit status (0 when stopped by a signal)."""
    address, url_token = token_from_url(args.url)
    token = args.token or url_token or os.environ.pop(TOKEN_ENV, None) or None
    try:
        url = events_url(address)
    except ValueError as exc:
        raise RecordingError(str(exc)) from None
    warning = clear_text_warning(url, token)
    if warning is not None:
        print(f"reactor-dashboard record: warning: {warning}", file=sys.stderr, flush=True)
    store = RecordingStore(args.out, create=True)
    writer = RecordingWriter(
        store,
        max_age_s=args.record_hours * 3600.0,
        max_bytes=int(args.record_max_mb * 1024 * 1024),
    )
    writer.start()
    follower = Follower(url, writer, token=token, retries=max(0, args.retries))

    def stop(signum: int, frame: Any) -> None:
        raise Stopped()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    print(f"reactor-dashboard: recording {url} into {args.out}", file=sys.stderr, flush=True)
    status = 0
    try:
        follower.run()
    except Stopped:
        pass
    except Refused as exc:
        print(f"reactor-dashboard record: {exc}", file=sys.stderr)
        status = 2
    except OSError as exc:
        print(f"reactor-dashboard record: {exc}", file=sys.stderr)
        status = 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        writer.close()
    skipped = (
        f", {follower.oversized_total} events over {MAX_EVENT_BYTES} bytes skipped"
        if follower.oversized_total
        else ""
    )
    print(
        f"reactor-dashboard: recorded {writer.written_total} samples,"
        f" {writer.dropped_total} dropped ({follower.connections_total} connections{skipped})",
        file=sys.stderr,
        flush=True,
    )
    if writer.dropped_total and status == 0:
        status = 1
    return status
