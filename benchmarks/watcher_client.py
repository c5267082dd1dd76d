"""What watches a monitored server in the HTTP benchmark: one SSE client connected to
``/api/v1/events`` and Prometheus-style scrapes of ``/metrics`` every second, on loopback.

``python -m benchmarks.watcher_client --port P --seconds S`` runs for at most S seconds (or
until killed), then prints one JSON line ``{"events": E, "scrapes": K, "errors": X}`` so the
benchmark can check the watcher really watched.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import threading
import time
from collections.abc import Sequence

REQUEST = b"GET /api/v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def follow_events(port: int, deadline: float, counts: dict[str, int]) -> None:
    """Read the event stream until ``deadline``, counting complete ``event:`` frames."""
    with socket.create_connection(("127.0.0.1", port), timeout=2.0) as sock:
        sock.sendall(REQUEST)
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(1 << 16)
            except TimeoutError:
                continue
            if not chunk:
                return
            counts["events"] += chunk.count(b"event: snapshot\n")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    args = parser.parse_args(argv)
    deadline = time.monotonic() + args.seconds
    counts = {"events": 0, "scrapes": 0, "errors": 0}
    reader = threading.Thread(target=follow_events, args=(args.port, deadline, counts), daemon=True)
    reader.start()
    next_scrape = time.monotonic()
    while time.monotonic() < deadline:
        conn = http.client.HTTPConnection("127.0.0.1", args.port, timeout=5)
        try:
            conn.request("GET", "/metrics")
            response = conn.getresponse()
            response.read()
            counts["scrapes" if response.status == 200 else "errors"] += 1
        except OSError:
            counts["errors"] += 1
        finally:
            conn.close()
        next_scrape += 1.0
        time.sleep(max(0.0, min(next_scrape, deadline) - time.monotonic()))
    reader.join(timeout=3)
    print(json.dumps(counts), flush=True)


if __name__ == "__main__":
    main()
