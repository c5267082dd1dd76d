"""The soak's event-stream clients: a crowd of sockets that join and leave, driven by one
``selectors`` loop on the calling thread (no reactor: the soak watches the server, not itself).

Kinds, by share of the crowd:

- ``reader`` (80%): reads ``/api/v1/events`` for a random lifetime, then closes;
- ``stalled`` (8%): asks for the stream with a 4 KiB receive buffer and never reads: the
  server must drop it once its backlog passes the limit;
- ``vanish`` (6%): sends the request and closes at once;
- ``half_open`` (6%): sends half a request head and then nothing: the server must drop it
  after its idle timeout.

Stalled and half-open clients never close on their own; the crowd closes what is left when
it leaves.
"""

from __future__ import annotations

import random
import selectors
import socket
import time

import attrs

REQUEST = b"GET /api/v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
HALF_REQUEST = b"GET /api/v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
KINDS = (("reader", 0.80), ("stalled", 0.08), ("vanish", 0.06), ("half_open", 0.06))
FRAME = b"event: snapshot\n"


@attrs.define(eq=False)
class Client:
    kind: str
    sock: socket.socket
    opened_at: float
    ends_at: float
    frames: int = 0
    status: int | None = None
    head: bytes = b""
    tail: bytes = b""
    dropped_at: float | None = None


@attrs.define
class CrowdFigures:
    """What the crowd saw. Times in seconds."""

    opened: dict[str, int] = attrs.field(factory=dict)
    frames: int = 0
    answered_200: int = 0
    answered_503: int = 0
    #: half-open clients the server dropped, and the longest they were held
    half_open_dropped: int = 0
    half_open_longest_s: float = 0.0
    #: stalled clients the server dropped (seen when the crowd left)
    stalled_dropped: int = 0
    peak: int = 0


class Crowd:
    """Up to ``size`` concurrent clients of the dashboard at 127.0.0.1:``port``, each living a
    random time in [``min_life_s``, ``max_life_s``] (readers; stalled and half-open ones live
    until :meth:`leave`). Call :meth:`step` often; it returns within ``budget_s``."""

    def __init__(
        self,
        port: int,
        size: int,
        min_life_s: float,
        max_life_s: float,
        seed: int = 1,
    ) -> None:
        self.port = port
        self.size = size
        self.min_life_s = min_life_s
        self.max_life_s = max_life_s
        self.random = random.Random(seed)
        self.selector = selectors.DefaultSelector()
        self.clients: set[Client] = set()
        self.figures = CrowdFigures()

    def _kind(self) -> str:
        roll = self.random.random()
        for kind, share in KINDS:
            if roll < share:
                return kind
            roll -= share
        return "reader"

    def _open(self, now: float) -> None:
        kind = self._kind()
        sock = socket.socket()
        if kind == "stalled":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(5)
        sock.connect(("127.0.0.1", self.port))
        sock.sendall(HALF_REQUEST if kind == "half_open" else REQUEST)
        self.figures.opened[kind] = self.figures.opened.get(kind, 0) + 1
        if kind == "vanish":
            sock.close()
            return
        sock.setblocking(False)
        lives = kind == "reader"
        life = self.random.uniform(self.min_life_s, self.max_life_s) if lives else float("inf")
        client = Client(kind, sock, now, now + life)
        self.clients.add(client)
        if kind != "stalled":  # a stalled client never reads
            self.selector.register(sock, selectors.EVENT_READ, client)

    def _close(self, client: Client) -> None:
        if client.kind != "stalled" and client.dropped_at is None:
            self.selector.unregister(client.sock)
        client.sock.close()
        self.clients.discard(client)

    def _read(self, client: Client, now: float) -> None:
        try:
            data = client.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            client.dropped_at = now
            self.selector.unregister(client.sock)
            if client.kind == "half_open":
                self.figures.half_open_dropped += 1
                held = now - client.opened_at
                self.figures.half_open_longest_s = max(self.figures.half_open_longest_s, held)
            self._close(client)
            return
        if client.status is None:
            client.head += data
            if b"\r\n" not in client.head:
                return
            client.status = int(client.head.split(b" ", 2)[1])
            if client.status == 200:
                self.figures.answered_200 += 1
            elif client.status == 503:
                self.figures.answered_503 += 1
            data, client.head = client.head, b""
        text = client.tail + data
        count = text.count(FRAME)
        client.frames += count
        self.figures.frames += count
        client.tail = text[-len(FRAME) :]

    def step(self, budget_s: float = 0.05, joining: bool = True) -> None:
        """Read what arrived, retire clients whose time is up, top the crowd up (at most 10
        new ones per step, so it joins gradually)."""
        now = time.monotonic()
        for key, _ in self.selector.select(timeout=budget_s):
            self._read(key.data, now)
        for client in [c for c in self.clients if c.ends_at <= now]:
            self._close(client)
        if joining:
            for _ in range(min(10, self.size - len(self.clients))):
                self._open(now)
        self.figures.peak = max(self.figures.peak, len(self.clients))

    def leave(self) -> None:
        """Everybody goes: a stalled client the server already dropped reads as closed."""
        for client in list(self.clients):
            if client.kind == "stalled" and _peer_closed(client.sock):
                self.figures.stalled_dropped += 1
            self._close(client)
        self.selector.close()


def _peer_closed(sock: socket.socket) -> bool:
    """Whether the server closed ``sock`` (an error, or end of data after what is buffered)."""
    try:
        while True:
            data = sock.recv(1 << 20)
            if not data:
                return True
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True
