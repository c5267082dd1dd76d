"""A fan-out client for the SSE benchmark: many event streams from one process (``selectors``,
non-blocking sockets on loopback), recording when each client has each event complete.

"When" is the kernel's receive timestamp of the bytes that completed the frame (Linux
``SO_TIMESTAMPNS``, read with ``recvmsg``): the moment the event reached that client's socket,
whatever order this single process then reads its sockets in. Where the kernel gives none, the
time of the read is used. The time of the read is reported too (``read_spreads_ms``): it adds
this process's own pace of going through N sockets, which N separate clients would not have.

``python -m benchmarks.sse_fanout_client --port P --clients N --seconds S`` connects N streams,
prints ``connected`` once every stream has its first frame, reads for S seconds, prints
``measured``, reads 0.5 s more (so the last event can reach everyone), then prints one JSON line
``{"events": E, "missed": M, "clock": "kernel"|"read", "spreads_ms": [...],
"read_spreads_ms": [...]}`` and closes every socket. ``spreads_ms`` has,
for each event first seen inside the window, the time between its first and its last client
(max - min of the arrival times, the frame's closing blank line). An event some client never got
counts in ``missed``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import selectors
import socket
import struct
import sys
import time
from collections.abc import Sequence

import attrs

#: ``SO_TIMESTAMPNS`` on Linux (asm-generic); Python's socket module does not name it.
SO_TIMESTAMPNS = 35
ID_LINE = re.compile(rb"\nid: (\d+)\n")
#: Bytes kept between reads so an ``id:`` line or a frame end split across reads is still seen.
TAIL = 32
REQUEST = b"GET /api/v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


@attrs.define(eq=False)
class Stream:
    """One client socket: what is left of its last read, and the event whose end it awaits."""

    sock: socket.socket
    index: int
    buffer: bytes = b""
    current: int | None = None
    frames: int = 0


Arrival = tuple[float, float]  # (kernel receive time or read time, read time), seconds
Arrivals = dict[int, list[Arrival]]


def feed(stream: Stream, data: bytes, now: Arrival, arrivals: Arrivals) -> None:
    """Scan ``data`` for frame starts (``id:``) and ends (blank line); record completions."""
    text = stream.buffer + data
    pos = 0
    while True:
        if stream.current is None:
            match = ID_LINE.search(text, pos)
            if match is None:
                break
            stream.current = int(match.group(1))
            pos = match.end()
        else:
            end = text.find(b"\n\n", pos)
            if end < 0:
                break
            arrivals.setdefault(stream.current, []).append(now)
            stream.frames += 1
            stream.current = None
            pos = end + 2
    stream.buffer = text[max(pos, len(text) - TAIL) :]


def open_streams(port: int, count: int, selector: selectors.BaseSelector) -> list[Stream]:
    streams = []
    for index in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        with contextlib.suppress(OSError):  # not Linux: read times only
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.sendall(REQUEST)
        sock.setblocking(False)
        stream = Stream(sock, index)
        selector.register(sock, selectors.EVENT_READ, stream)
        streams.append(stream)
    return streams


def pump(selector: selectors.BaseSelector, until: float, arrivals: Arrivals) -> None:
    """Read every ready socket until the monotonic deadline ``until``."""
    while (left := until - time.monotonic()) > 0:
        for key, _ in selector.select(timeout=min(left, 0.05)):
            stream: Stream = key.data
            data, ancillary, _, _ = stream.sock.recvmsg(1 << 18, 64)
            read_at = time.time()
            if not data:
                raise SystemExit(f"stream {stream.index} was closed by the server")
            feed(stream, data, (kernel_time(ancillary) or read_at, read_at), arrivals)


def kernel_time(ancillary: list[tuple[int, int, bytes]]) -> float | None:
    """The ``SO_TIMESTAMPNS`` receive time in ``ancillary`` (unix seconds), if there is one."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
            seconds, nanoseconds = struct.unpack("qq", data[:16])
            return float(seconds) + float(nanoseconds) / 1e9
    return None


def spread_ms(times: list[float]) -> float:
    return (max(times) - min(times)) * 1000


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    selector = selectors.DefaultSelector()
    arrivals: Arrivals = {}
    streams = open_streams(args.port, args.clients, selector)
    deadline = time.monotonic() + 30
    while any(s.frames == 0 for s in streams):
        if time.monotonic() > deadline:
            raise SystemExit("not every stream got its first frame within 30 s")
        pump(selector, time.monotonic() + 0.05, arrivals)
    print("connected", flush=True)
    start, start_wall = time.monotonic(), time.time()
    arrivals.clear()
    pump(selector, start + args.seconds, arrivals)
    end_wall = start_wall + (time.monotonic() - start)
    print("measured", flush=True)
    pump(selector, time.monotonic() + 0.5, arrivals)
    in_window = [a for a in arrivals.values() if start_wall <= min(r for _, r in a) < end_wall]
    complete = [a for a in in_window if len(a) == args.clients]
    kernel = all(k != r for a in complete for k, r in a)
    result = {
        "events": len(in_window),
        "missed": len(in_window) - len(complete),
        "clock": "kernel" if kernel and complete else "read",
        "spreads_ms": [spread_ms([k for k, _ in a]) for a in complete],
        "read_spreads_ms": [spread_ms([r for _, r in a]) for a in complete],
    }
    print(json.dumps(result), flush=True)
    for stream in streams:
        selector.unregister(stream.sock)
        stream.sock.close()
    sys.stdout.flush()


if __name__ == "__main__":
    main()
