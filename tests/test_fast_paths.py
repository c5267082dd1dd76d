"""The monitor must not take the host program's objects off CPython's fast paths.

On 3.11+ an instance keeps its attributes in an inline array until something reads its
``__dict__``; from then on it has a real dict and every attribute access on it is slower
(measured: reading ``vars(reactor)`` once, to patch ``reactor._poller``, cost 15,000
instructions on every Klein request afterwards). The compiled diagnostic
``dashboard._accel.dict_materialized`` tells, in a fresh process.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.accel_support import require_accelerator

PROGRAM = """
import json, socket
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from dashboard import _accel
from dashboard.monitor import Monitor

held = []

class Slow(Resource):
    isLeaf = True
    def render_GET(self, request):
        held.append(request)
        return NOT_DONE_YET

report = {"reactor_before": _accel.dict_materialized(reactor)}
monitor = Monitor(reactor)
monitor.start()
port = reactor.listenTCP(0, Site(Slow()), interface="127.0.0.1")
client = socket.create_connection(("127.0.0.1", port.getHost().port))
client.sendall(b"GET /slow HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")

def check():
    snapshot = monitor.sample().data
    requests = [r for c in snapshot["connections"]["items"] for r in c.get("requests", [])]
    report["in_flight"] = [[r["method"], r["uri"]] for r in requests]
    report["reactor"] = _accel.dict_materialized(reactor)
    report["request"] = _accel.dict_materialized(held[0])
    report["channel"] = _accel.dict_materialized(held[0].channel)
    report["transport"] = _accel.dict_materialized(held[0].channel.transport)
    monitor.stop()
    report["reactor_after_stop"] = _accel.dict_materialized(reactor)
    held[0].finish()
    reactor.stop()

def wait():
    if held:
        reactor.callLater(0.05, check)
    else:
        reactor.callLater(0.01, wait)

reactor.callWhenRunning(wait)
reactor.run()
client.close()
print(json.dumps(report))
"""


def test_monitor_and_snapshot_leave_reactor_request_and_transport_dicts_alone() -> None:
    require_accelerator()  # the program asks the extension's diagnostic
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["in_flight"] == [["GET", "/slow"]]
    for name in ("reactor_before", "reactor", "request", "channel", "transport"):
        assert report[name] is False, (name, report)
    assert report["reactor_after_stop"] is False, report


def test_history_keeps_bytes_not_dicts_for_all_but_the_newest_sample() -> None:
    """900 samples of a busy service as dicts would be hundreds of thousands of containers in
    every full collection of the host program; bytes are not tracked by the collector."""
    import gc

    from dashboard.monitor import Monitor
    from dashboard.testing import global_reactor

    monitor = Monitor(global_reactor(), history=50)
    monitor.start()
    try:
        taken = []
        as_taken = {}
        for _ in range(60):
            sample = monitor.sample()
            taken.append(sample)
            as_taken[sample.seq] = sample.data  # the dict itself, while it is the newest
        ring = list(monitor.samples())
        assert [s.seq for s in ring] == [s.seq for s in taken[-50:]]
        newest = ring[-1]
        assert newest is monitor.latest() and newest.data is newest.data  # kept as taken
        for sample in ring[:-1]:
            assert sample._data is None and not gc.is_tracked(sample.encoded)
            assert sample.data == as_taken[sample.seq]  # the same figures, decoded
        gc.collect()
        assert not any(gc.is_tracked(s.encoded) for s in ring)
    finally:
        monitor.stop()
