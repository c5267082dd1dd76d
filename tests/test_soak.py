"""The soak (benchmarks/soak.py) for 60 seconds: the demo under load, 100 event-stream clients
joining and leaving (readers, clients that stop reading, that vanish, that hold half a
request). RSS grows at most 5% after warm-up, the descriptors are back at the baseline once the
clients left, no error is counted, and the server drops the misbehaving clients by itself.

It runs on this pytest run's reactor, so the suite's asyncio pass soaks the asyncio reactor
and the default pass epoll: once each, about 75 s. The 10-minute soak is
``python -m benchmarks.soak``.
"""

from __future__ import annotations

import pytest

from benchmarks.soak import run_soak


def test_a_60_second_soak_stays_within_its_budgets(request: pytest.FixtureRequest) -> None:
    reactor = str(request.config.getoption("reactor"))
    report = run_soak(60.0, clients=100, reactor=reactor)
    crowd = report.crowd
    print(
        f"\nsoak ({reactor}): RSS {report.rss_after_warmup >> 20} -> {report.rss_at_end >> 20} MiB"
        f" ({report.rss_growth_percent:+.1f}%), fds {report.fds_after} vs baseline"
        f" {report.fds_baseline} (back in {report.fds_back_after_s} s), {crowd.frames} frames,"
        f" clients {crowd.opened}, hub {dict(report.hub)}"
    )
    assert report.problems() == []
    assert report.rss_growth_percent <= 5.0
    assert report.fds_after <= report.fds_baseline
    assert report.errors_total == 0
    # The crowd really came, churned and got the stream.
    assert crowd.peak >= 95 and sum(crowd.opened.values()) >= 300
    assert crowd.answered_200 >= 200 and crowd.frames >= 2000
    # The server dropped the misbehaving ones on its own, within its limits.
    assert report.hub["dropped_slow_total"] >= 1
    assert crowd.half_open_dropped >= 1
    assert crowd.half_open_longest_s <= report.idle_timeout_s + 5
    assert report.hub["clients"] == 0  # every stream ended once the crowd left
