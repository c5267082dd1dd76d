"""The page's panels for issue 13's snapshot fields, rendered by the page's own modules in
Debian's Chromium: where results are lost, the dashboard's own work on a line of its own,
running loops apart from the oldest pending, Deferred timeouts with their function, site and
wait and cancellations apart, blocks by the user's own frame and by owner, pools by name
with per-host rows. Synthetic snapshots (tests/browser_scripts.py) go through the same
functions the live page calls, in a page that is paused so no live update overwrites them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser

from tests.browser_scripts import (
    JUDGE,
    LIMITS,
    MARKUP_SITE,
    RENDER_PANELS,
    contract_snapshot,
    old_snapshot,
)
from tests.browser_support import BrowserThread, ServerProcess, new_page, wait_for

PREFIX = "/panels"
#: What the page shows for a missing value.
DASH = "\u2013"


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    process = ServerProcess(prefix=PREFIX)
    try:
        yield process
    finally:
        process.stop()


def render(
    browser: BrowserThread, server: ServerProcess, snapshot: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """(what the panels show, the verdict, the page's console errors) for ``snapshot``."""

    def scenario(browser: Browser) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
        page, watch = new_page(browser)
        page.goto(server.url)
        wait_for(page, "() => window.__dashboardStats && window.__dashboardStats.renders >= 1")
        page.click("#pause")
        shown: dict[str, Any] = page.evaluate(RENDER_PANELS, snapshot)
        verdict: dict[str, Any] = page.evaluate(JUDGE, {"snapshots": [snapshot], "limits": LIMITS})
        page.context.close()
        return shown, verdict, watch.errors

    return browser.run(scenario)


def test_contract_fields_are_shown(browser: BrowserThread, server: ServerProcess) -> None:
    shown, verdict, errors = render(browser, server, contract_snapshot())
    assert errors == []
    # The dashboard's own work, on its own line (the program's figures exclude it).
    assert shown["own"] == (
        "3 Deferreds pending · 2 connections · port 127.0.0.1:8089 · 2 delayed calls · "
        "1/100 event streams, 0 slow dropped, 0 refused · blocked the loop once recently"
    )
    assert shown["connectionsNote"] == "4 open · 0 failed connects · listening on 127.0.0.1:8008"
    # Where results are lost: newest loss first as listed, even a site with nothing pending.
    assert shown["lost"] == [
        [
            "synapse/handlers/worker_lock.py:200 in WaitingLock.__init__",
            "200",
            "24",
            "0.4 s ago",
            "0",
        ],
        [MARKUP_SITE, "88", "0", "1 min 35 s ago", "2"],
    ]
    assert shown["lostNote"] == "288 lost in total · 24 in the last minute"
    assert shown["images"] == 0 and shown["xss"] is None  # the markup site stayed text
    # Running loops apart from the oldest pending.
    assert shown["loops"] == [
        ["synapse.util.caches.expire_caches", "1", "1 h 00 min"],
        ["synapse.app.phone_stats_home", "1", "2 min 05 s"],
    ]
    assert shown["loopsNote"] == "2 pending in 2 loops · not counted as oldest pending"
    assert shown["oldestNote"] == "oldest 20 s · running loops apart (2 pending)"
    assert [row[1] for row in shown["oldest"]] == [
        "synapse/notifier.py:650 in Notifier.wait_for_events"
    ]
    # Timeouts: a Deferred timeout's function, site and wait; cancellations counted apart.
    assert [row[1:] for row in shown["timeouts"]] == [
        [
            "deferred",
            "synapse.util.async_helpers.timeout_deferred.<locals>.time_it_out",
            "synapse/notifier.py:650 in Notifier.wait_for_events",
            "30 s",
            "Deferred cancelled by a delayed call",
        ],
        ["protocol", DASH, DASH, DASH, "HTTPChannel idle"],
    ]
    assert shown["timeoutsNote"] == (
        "deferred 5 · connect 0 · protocol 1 · 3 cancelled (not timeouts) · "
        "9 delayed calls, 0 overdue"
    )
    # Blocks by the innermost frame the user owns (not weakref.py), the dashboard's marked.
    assert [(b["summary"][8:], b["marked"], b["own"]) for b in shown["blocks"]] == [
        (
            "150 msthe dashboard…/web/page.py:101 in render_page",
            "/opt/app/dashboard/web/page.py:101 in render_page",
            True,
        ),
        (
            "180 mssynapse/handlers/sync.py:120 in wait_for_sync",
            "synapse/handlers/sync.py:120 in wait_for_sync",
            False,
        ),
    ]
    assert shown["blocksNote"] == (
        "2 in total · stuck over 100 ms counts · 1 of those listed were the dashboard's own work"
    )
    # Pools by name: every thread pool, an HTTP pool's hosts (in use unbounded; Twisted's
    # per-host limit is on the idle connections kept), an adbapi pool's driver and database.
    assert shown["pools"] == [
        ["twisted.internet.reactorthe reactor's thread pool", "threadpool", "1 / 10", "2", "0"],
        ["synapse-resolverthread pool", "threadpool", "0 / 4", "1", "0"],
        [
            "scrapy/core/downloader/handlers/http11.py:60 in HTTP11DownloadHandler.__init__"
            "2 hosts · keeps at most 8 idle per host",
            "http",
            "9 / ∞",
            "1",
            "0",
        ],
        ["↳ http://127.0.0.1:8000", "host", "8 / ∞", "0 (keeps ≤ 8)", ""],
        ["↳ http://127.0.0.1:8001", "host", "1 / ∞", "1 (keeps ≤ 8)", ""],
        ["sqlite3 /tmp/app.dbsqlite3 · /tmp/app.db", "adbapi", "1 / 5", "2", "0"],
    ]
    # The verdict: the program's block by its own frame, the dashboard's apart, and the
    # site that keeps losing results.
    assert verdict == {
        "level": "blocked",
        "reasons": [
            {
                "level": "blocked",
                "text": "the loop blocked once in the last 60 s, "
                "longest 180 ms in synapse/handlers/sync.py:120 in wait_for_sync",
            },
            {
                "level": "blocked",
                "text": "the dashboard's own work blocked the loop once in the last 60 s, "
                "longest 150 ms in …/web/page.py:101 in render_page",
            },
            {
                "level": "degraded",
                "text": "results lost: 24 Deferreds garbage-collected unfired in the last "
                "minute at synapse/handlers/worker_lock.py:200 in WaitingLock.__init__",
            },
        ],
    }


def test_a_site_losing_one_result_a_minute_is_not_named(
    browser: BrowserThread, server: ServerProcess
) -> None:
    snapshot = contract_snapshot()
    snapshot["loop"]["blocks"] = []
    snapshot["deferreds"]["lost_sites"][0]["lost_last_60s"] = 1
    _, verdict, errors = render(browser, server, snapshot)
    assert errors == []
    assert verdict == {"level": "ok", "reasons": []}


def test_an_older_snapshot_and_a_null_section_still_render(
    browser: BrowserThread, server: ServerProcess
) -> None:
    shown, verdict, errors = render(browser, server, old_snapshot())
    assert errors == []
    assert shown["own"] == "not reported"
    assert shown["lost"] == [["Not reported by this version of the dashboard."]]
    assert shown["loops"] == [["No LoopingCall running."]]
    assert shown["oldestNote"] == f"oldest {DASH}"
    assert shown["connectionsNote"] == f"{DASH} open · {DASH} failed connects"
    # No `where`: the innermost frame labels the block, as before.
    assert [(b["summary"][8:], b["marked"], b["own"]) for b in shown["blocks"]] == [
        ("120 msapp.py:9 in slow", "app.py:9 in slow", False)
    ]
    # The older HTTP pool shape: its per-host max is the idle kept per host, not a bound.
    assert shown["pools"] == [
        ["http#11 host · keeps at most 4 idle per host", "http", "1 / ∞", "3", "0"],
        ["↳ http://127.0.0.1:9", "host", "1 / ∞", "3 (keeps ≤ 4)", ""],
        ["sqlite3#1sqlite3", "adbapi", "0 / 3", "2", "0"],
    ]
    assert [row[1:] for row in shown["timeouts"]] == [
        ["deferred", DASH, DASH, DASH, "Deferred timed out after 0.2 s"]
    ]
    assert shown["timeoutsNote"] == f"deferred 1 · {DASH} delayed calls, {DASH} overdue"
    assert verdict["reasons"] == [
        {
            "level": "blocked",
            "text": "the loop blocked once in the last 60 s, longest 120 ms in app.py:9 in slow",
        }
    ]


def test_live_page_shows_real_losses_loops_and_own_work(
    browser: BrowserThread, server: ServerProcess
) -> None:
    """The monitored server's real snapshots: its leak drops Deferreds from a bounded deque
    (25 kept, one made every 0.3 s), so Workload.leak loses results; its LoopingCalls are
    running loops; the dashboard is mounted in the program's own site (no port of its own)."""

    def scenario(browser: Browser) -> dict[str, str]:
        page, watch = new_page(browser)
        page.goto(server.url)
        wait_for(
            page,
            "() => document.getElementById('lost-table').textContent.includes('Workload.leak')",
            timeout_ms=30000,
        )
        found: dict[str, str] = page.evaluate(
            "() => Object.fromEntries(['lost-table', 'loops-table', 'own-work-text',"
            " 'verdict-reasons'].map((id) => [id, document.getElementById(id).textContent]))"
        )
        assert watch.errors == []
        page.context.close()
        return found

    found = browser.run(scenario, timeout_s=90)
    assert "browser_server.py" in found["lost-table"], found
    assert "Workload.leak" in found["loops-table"], found  # the LoopingCall, by its function
    assert re.fullmatch(
        r"[\d,]+ Deferreds? pending · 0 connections · [\d,]+ delayed calls? · "
        r"[1-9]\d*/100 event streams, 0 slow dropped, 0 refused"
        r"( · blocked the loop (once|\d+ times) recently)?",  # a slow start on a busy machine
        found["own-work-text"],
    ), found["own-work-text"]


def test_pool_names_are_short_in_the_chart_legend(
    browser: BrowserThread, server: ServerProcess
) -> None:
    """Synapse's nine HTTP pools: a pool made in a class's ``__init__`` is named with who made
    the object, which the chart legend shows as the two functions (nine long names took half
    the page)."""
    names = [
        "synapse/http/client.py:835 in SimpleHttpClient.__init__"
        " (from synapse/server.py:778 in HomeServer.get_proxied_http_client)",
        "synapse/http/client.py:835 in SimpleHttpClient.__init__"
        " (from synapse/server.py:778 in HomeServer.get_proxied_http_client) #2",
        "/work/app/service/clients.py:12 in make_pool",
        "sqlite3 /var/lib/app/data.db",
        "twisted.internet.reactor",
    ]

    def scenario(browser: Browser) -> list[str]:
        page, _ = new_page(browser)
        page.goto(server.url)
        wait_for(page, "() => window.__dashboardStats && window.__dashboardStats.renders >= 1")
        shown: list[str] = page.evaluate(
            "async (names) => { const m = await import('./static/js/format.js');"
            " return names.map((n) => m.shortPool(n)); }",
            names,
        )
        page.context.close()
        return shown

    assert browser.run(scenario) == [
        "SimpleHttpClient.__init__ ← HomeServer.get_proxied_http_client",
        "SimpleHttpClient.__init__ ← HomeServer.get_proxied_http_client #2",
        "…/service/clients.py:12 in make_pool",
        "sqlite3 …/data.db",
        "twisted.internet.reactor",
    ]
