"""``reactor-dashboard replay PATH``: the dashboard's page and API over a recording, on
127.0.0.1 (the same app as a live Monitor's, behind the same guard; see replay.py)."""

from __future__ import annotations

import sys
from typing import Any, cast

from twisted.web.resource import IResource

from dashboard.recorder.replay import ReplaySource
from dashboard.recorder.store import RecordingError, open_for_reading


def replay_resource(source: ReplaySource) -> IResource:
    """The guarded dashboard resource over ``source`` (no token: it binds loopback only)."""
    from dashboard.web.app import DashboardApp
    from dashboard.web.guard import GuardedResource

    app: Any = DashboardApp(cast(Any, source)).app.resource()
    return cast(IResource, GuardedResource(cast(IResource, app), reactor=source.reactor))


def serve_replay(path: str, port: int, duration_s: float | None = None) -> int:
    """Serve the recording at ``path`` on 127.0.0.1:``port`` until Ctrl-C (or
    ``duration_s``). A bad file raises :class:`RecordingError` before anything listens."""
    from twisted.internet import reactor as global_reactor
    from twisted.internet.endpoints import serverFromString

    from dashboard.web.quiet_site import QuietSite

    reactor: Any = global_reactor
    store = open_for_reading(path)
    try:
        source = ReplaySource(store, reactor)
    except RecordingError:
        store.close()
        raise
    start, end = source.span()
    site = QuietSite(replay_resource(source))
    endpoint = serverFromString(reactor, f"tcp:{port}:interface=127.0.0.1")
    status: list[int] = [0]

    def listening(listened: Any) -> None:
        number = listened.getHost().port
        print(
            f"reactor-dashboard: replaying {path} ({store.count()} samples,"
            f" {end - start:.0f} s) on http://127.0.0.1:{number}/",
            file=sys.stderr,
            flush=True,
        )
        if store.immutable:
            print(
                f"reactor-dashboard: {path} is in a folder this user cannot write: it is"
                " read as it is now (samples recorded into it later are not shown)",
                file=sys.stderr,
                flush=True,
            )

    def failed(failure: Any) -> None:
        print(
            f"reactor-dashboard replay: cannot listen on 127.0.0.1:{port}:"
            f" {failure.getErrorMessage()}",
            file=sys.stderr,
        )
        status[0] = 2
        reactor.stop()

    endpoint.listen(site).addCallbacks(listening, failed)
    if duration_s is not None:
        reactor.callLater(duration_s, reactor.stop)
    reactor.addSystemEventTrigger("after", "shutdown", source.stop)
    reactor.run()
    return status[0]
