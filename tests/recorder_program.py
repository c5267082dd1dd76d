# mypy: allow-untyped-calls
"""A monitored program that records, for tests/test_recorder*.py.

``python tests/recorder_program.py --record PATH [--reactor asyncio] [--interval 0.1]
[--sites N] [--serve] [--duration S] [--fsize-limit BYTES] [--token T]`` starts a Monitor
recording into PATH (``--sites`` pending Deferreds at that many distinct sites, to weigh
each sample), prints
``listening <port>`` when ``--serve``, then ``seq <n>`` for every sample taken, flushed, and
stops after ``--duration`` seconds (or at SIGTERM). ``--fsize-limit`` caps the size of any
file this process writes (``RLIMIT_FSIZE``, SIGXFSZ ignored: a write past it fails with
EFBIG, as on a full disk).
"""

from __future__ import annotations

import argparse
import resource
import signal
import sys
from typing import Any

from dashboard.attach import install_reactor


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--record", required=True)
    parser.add_argument("--reactor", default="default")
    parser.add_argument("--interval", type=float, default=0.1)
    parser.add_argument("--sites", type=int, default=0)
    parser.add_argument("--serve", action="store_true")
    parser.add_argument("--duration", type=float, default=None)
    parser.add_argument("--fsize-limit", type=int, default=0)
    parser.add_argument("--record-max-mb", type=float, default=512.0)
    parser.add_argument("--token", default=None)
    args = parser.parse_args(argv)
    if args.fsize_limit:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (args.fsize_limit, args.fsize_limit))

    reactor: Any = install_reactor(args.reactor)
    from dashboard.monitor import Monitor
    from tests.history_server import pending_at_sites

    monitor = Monitor(
        reactor,
        interval=args.interval,
        top_sites=max(50, args.sites),
        record=args.record,
        record_max_mb=args.record_max_mb,
        token=args.token,
    )
    monitor.start()
    held = pending_at_sites(args.sites)  # made while watched: counted as pending
    monitor.subscribe(lambda sample: print(f"seq {sample.seq}", flush=True))
    if args.serve:

        def listening(port: Any) -> None:
            print(f"listening {port.getHost().port}", flush=True)

        monitor.listen(0).addCallback(listening)
    signal.signal(signal.SIGTERM, lambda *_: reactor.callFromThread(reactor.stop))
    reactor.addSystemEventTrigger("after", "shutdown", monitor.stop)
    if args.duration is not None:
        reactor.callLater(args.duration, reactor.stop)
    reactor.run()
    del held
    print("stopped", flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))
    main(sys.argv[1:])
