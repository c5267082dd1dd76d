"""The dashboard in a real browser: Debian's Chromium driven by Playwright, against a
monitored server in a subprocess (tests/browser_server.py) mounted under a deep prefix.

They do not depend on the test reactor (the server is another process), so they simply run
in both passes of the suite; they take about 20 s each time.
"""

from __future__ import annotations

import json
import re
import statistics
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page

from tests.browser_scripts import CHART_PIXELS, INJECT_HISTORY, JUDGE, LIMITS, synthetic
from tests.browser_server import MARKUP_POOL_NAME
from tests.browser_support import (
    ARTIFACTS,
    AXE_SCRIPT,
    BrowserThread,
    ServerProcess,
    new_page,
    stats,
    text,
    wait_for,
)

PREFIX = "/a/deep/prefix"
CHARTS = ["lag", "busy", "pending", "connections", "pools", "timeouts"]
BUDGET_MS = 5.0


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    process = ServerProcess(prefix=PREFIX)
    try:
        yield process
    finally:
        process.stop()


def open_dashboard(browser: Browser, url: str, **context: Any) -> tuple[Page, Any]:
    page, watch = new_page(browser, **context)
    page.goto(url)
    wait_for(page, "() => window.__dashboardStats && window.__dashboardStats.renders >= 1")
    return page, watch


def test_page_loads_and_live_updates_change_the_numbers(
    browser: BrowserThread, server: ServerProcess
) -> None:
    def scenario(browser: Browser) -> None:
        # The prefix without its slash redirects, so relative URLs resolve under it.
        page, watch = open_dashboard(browser, server.url.rstrip("/"))
        assert page.url == server.url
        first_seq = text(page, "#seq")
        first = stats(page)
        # Two more snapshots over SSE, rendered: counters that only grow.
        wait_for(
            page,
            "(n) => window.__dashboardStats.applied >= n + 2"
            " && window.__dashboardStats.renders >= 3",
            first["applied"],
        )
        wait_for(page, "(seq) => document.getElementById('seq').textContent !== seq", first_seq)
        # One evaluation: a live update could land between two separate reads.
        later: dict[str, Any] = page.evaluate(
            "() => ({...window.__dashboardStats,"
            " shown: document.querySelector('#seq').textContent})"
        )
        assert later["renderedSeq"] >= first["renderedSeq"] + 2
        assert later["shown"] == f"#{later['renderedSeq']}"
        assert later["status"] == "live" and text(page, "#status-text") == "live"
        assert later["historySamples"] >= 1 and later["historyError"] is None
        # Tables show real rows: the workload's leaking site and the hostile pool name as text.
        assert "Workload.leak" in text(page, "#sites-table")
        # The note counts the sites listed, not every site seen (one evaluation: live updates).
        note, listed = page.evaluate(
            "() => [document.getElementById('sites-note').textContent,"
            " document.querySelectorAll('#sites-table tbody tr').length]"
        )
        found = re.fullmatch(r"([\d,]+) pending at ([\d,]+)\+? sites? · ([\d,]+) sites seen", note)
        assert found is not None, note
        at, seen = (int(found[i].replace(",", "")) for i in (2, 3))
        assert at == listed >= 1 and seen >= listed, (note, listed)
        # The stream's own figures are on the dashboard's own line, not in the program's
        # connections: this page's stream is one of the clients.
        assert re.search(
            r"[1-9]\d*/100 event streams, 0 slow dropped, 0 refused",
            text(page, "#own-work-text"),
        )
        assert "event streams" not in text(page, "#connections-note")
        assert MARKUP_POOL_NAME in text(page, "#pools-table")
        assert page.evaluate("() => window.__xss") is None
        assert page.locator("#pools-table img").count() == 0
        # The event stream shows up as an HTTP request in flight on the connections table.
        assert f"GET {PREFIX}/api/v1/events" in text(page, "#connections-table")
        # Connections sort by a column on click, and stay sorted across updates.
        page.click("#connections-table th[data-sort-key=peer] button")
        assert page.get_attribute("#connections-table th[data-sort-key=peer]", "aria-sort") == (
            "ascending"
        )
        wait_for(page, "(n) => window.__dashboardStats.renders >= n + 1", stats(page)["renders"])
        peers = page.locator("#connections-table tbody td:nth-child(2)").all_text_contents()
        ports = [int(p.rsplit(":", 1)[1]) for p in peers]
        assert len(ports) >= 1 and ports == sorted(ports), peers
        # The download link fetches the snapshot as a file.
        with page.expect_download() as download:
            page.click("a.download")
        assert download.value.suggested_filename == "reactor-snapshot.json"
        assert json.loads(Path(download.value.path()).read_text())["seq"] >= 1
        assert watch.errors == []
        foreign = [u for u in watch.requests if not u.startswith(server.origin + PREFIX + "/")]
        assert foreign == [server.origin + PREFIX]  # only the redirected first request
        assert any(u.endswith("/api/v1/events") for u in watch.requests)
        # The charts were seeded from the light series, never from whole-snapshot history.
        assert any("/api/v1/series?seconds=" in u for u in watch.requests)
        assert not any("/api/v1/history" in u for u in watch.requests)
        page.context.close()

    browser.run(scenario)


def test_every_chart_draws_its_series(browser: BrowserThread, server: ServerProcess) -> None:
    def scenario(browser: Browser) -> list[dict[str, Any]]:
        page, watch = open_dashboard(browser, server.url)
        wait_for(
            page, "() => Object.values(window.__dashboardStats.charts.points).every(n => n >= 8)"
        )
        drawn: list[dict[str, Any]] = page.evaluate(CHART_PIXELS, CHARTS)
        assert watch.errors == []
        page.context.close()
        return drawn

    drawn = browser.run(scenario)
    assert [d["id"] for d in drawn] == CHARTS
    for chart in drawn:
        assert chart["canvas"], chart
        assert chart["width"] > 200 and chart["height"] > 60, chart
        # Series colours cover at least half a line's worth of the plot area.
        assert chart["series"] >= chart["width"] // 2, chart


def test_pause_freezes_the_view_and_resume_catches_up(
    browser: BrowserThread, server: ServerProcess
) -> None:
    def scenario(browser: Browser) -> None:
        page, _ = open_dashboard(browser, server.url)
        page.click("#pause")
        assert text(page, "#status-text") == "paused"
        assert page.get_attribute("#pause", "aria-pressed") == "true"
        frozen = stats(page)
        wait_for(page, "(n) => window.__dashboardStats.applied >= n + 2", frozen["applied"])
        assert stats(page)["renderedSeq"] == frozen["renderedSeq"]  # data kept, view frozen
        page.click("#pause")
        wait_for(page, "(s) => window.__dashboardStats.renderedSeq > s", frozen["renderedSeq"])
        assert text(page, "#status-text") == "live"
        page.context.close()

    browser.run(scenario)


def test_verdict_turns_blocked_after_a_300ms_block(
    browser: BrowserThread, server: ServerProcess
) -> None:
    def scenario(browser: Browser) -> None:
        page, watch = open_dashboard(browser, server.url)
        # (A slow start on a busy machine may have blocked already; ours is told by its stack.)
        assert "blocking_call" not in text(page, "#blocks-list")
        if "blocked" not in text(page, "#verdict-reasons"):
            assert page.get_attribute("#verdict", "data-level") in ("ok", "degraded")
        server.block()
        wait_for(
            page,
            "() => document.getElementById('verdict').dataset.level === 'blocked'"
            " && document.getElementById('blocks-list').textContent.includes('blocking_call')",
        )
        assert text(page, "#verdict-label") == "Blocked"
        reason = text(page, "#verdict-reasons")
        assert re.search(r"the loop blocked (once|\d+ times) in the last 60 s", reason), reason
        assert "blocking_call" in reason, reason  # the longest block names where it happened
        # The block's stack, one click away.
        summary = page.locator("#blocks-list details summary").first
        summary.click()
        stack = text(page, "#blocks-list details[open] .stack")
        assert "browser_server.py" in stack and "in blocking_call" in stack, stack
        duration = text(page, "#blocks-list details[open] .block-duration")
        assert duration.endswith(" ms") and 250 <= float(duration.split()[0]) < 1000, duration
        assert watch.errors == []
        page.context.close()

    browser.run(scenario)


def test_chart_update_takes_at_most_5ms_with_15_minutes_of_history(
    browser: BrowserThread, server: ServerProcess
) -> None:
    def scenario(browser: Browser) -> dict[str, Any]:
        page, watch = open_dashboard(browser, server.url)
        wait_for(page, "() => window.__dashboardStats.historySamples > 0")
        rows = page.evaluate(INJECT_HISTORY, 900)
        assert rows >= 900
        page.click("text=15 min")
        start = stats(page)["charts"]["updates"]
        wait_for(page, "(n) => window.__dashboardStats.charts.updates >= n + 25", start)
        charts: dict[str, Any] = stats(page)["charts"]
        # The 1-minute window draws only the last minute (4 samples a second here).
        page.click("text=1 min")
        wait_for(page, "() => window.__dashboardStats.charts.points.lag <= 250")
        assert watch.errors == []
        page.context.close()
        return charts

    charts = browser.run(scenario)
    assert min(charts["points"].values()) >= 900  # 15 minutes at 1 sample/s, and the live ones
    whole = charts["recentMs"][-25:]  # all six charts per update, data and drawing
    slowest = charts["recentSlowestMs"][-25:]  # the slowest single chart of each update
    print(
        f"\nchart update with {min(charts['points'].values())} points: all six charts "
        f"median {statistics.median(whole):.2f} ms, max {max(whole):.2f} ms; "
        f"slowest chart median {statistics.median(slowest):.2f} ms, max {max(slowest):.2f} ms"
    )
    # Medians: a single slow frame on a shared 2-core machine is the scheduler, not the page.
    assert statistics.median(whole) <= BUDGET_MS, whole
    assert statistics.median(slowest) <= BUDGET_MS / 2, slowest


def axe_serious(page: Page) -> list[dict[str, Any]]:
    page.add_script_tag(path=str(AXE_SCRIPT))
    result: list[dict[str, Any]] = page.evaluate(
        """async () => {
          const results = await axe.run(document, { resultTypes: ['violations'] });
          return results.violations
            .filter((v) => v.impact === 'serious' || v.impact === 'critical')
            .map((v) => ({ id: v.id, impact: v.impact, help: v.help,
                           nodes: v.nodes.slice(0, 5).map((n) => n.target.join(' ')) }));
        }"""
    )
    return result


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_axe_finds_no_serious_or_critical_violations(
    browser: BrowserThread, server: ServerProcess, scheme: str
) -> None:
    def scenario(browser: Browser) -> list[dict[str, Any]]:
        # bypass_csp: axe is injected as an inline script, which the page's CSP forbids.
        page, _ = open_dashboard(browser, server.url, bypass_csp=True, color_scheme=scheme)
        wait_for(page, "() => window.__dashboardStats.renders >= 2")
        if page.locator("#blocks-list details").count():
            page.locator("#blocks-list details summary").first.click()
        violations = axe_serious(page)
        page.context.close()
        return violations

    assert browser.run(scenario) == []


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_screenshot(browser: BrowserThread, server: ServerProcess, scheme: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / ("dashboard.png" if scheme == "light" else "dashboard-dark.png")

    def scenario(browser: Browser) -> None:
        page, watch = open_dashboard(browser, server.url, color_scheme=scheme)
        wait_for(page, "() => window.__dashboardStats.historySamples > 0")
        wait_for(page, "() => window.__dashboardStats.renders >= 3")
        page.click("text=1 min")
        page.screenshot(path=str(path), full_page=True)
        assert watch.errors == []
        page.context.close()

    if path.exists():
        path.unlink()
    browser.run(scenario)
    assert path.stat().st_size > 50_000


def test_reconnects_after_the_server_restarts(browser: BrowserThread) -> None:
    first = ServerProcess()  # mounted at the root this time
    port = first.port

    def load(browser: Browser) -> tuple[Page, dict[str, Any]]:
        page, _ = open_dashboard(browser, first.url)
        wait_for(page, "() => window.__dashboardStats.status === 'live'")
        wait_for(page, "() => window.__dashboardStats.applied >= 2")
        return page, stats(page)

    second: ServerProcess | None = None
    try:
        page, before = browser.run(load)
        first.kill()
        browser.run(
            lambda _: wait_for(page, "() => window.__dashboardStats.status === 'reconnecting'")
        )
        assert browser.run(lambda _: text(page, "#status-text")) == "reconnecting…"
        down = browser.run(lambda _: stats(page))
        second = ServerProcess(port=port)

        def resumed(_: Browser) -> dict[str, Any]:
            wait_for(page, "() => window.__dashboardStats.status === 'live'", timeout_ms=20000)
            wait_for(page, "(n) => window.__dashboardStats.applied >= n + 2", down["applied"])
            # One evaluation: a live update could land between two separate reads.
            after: dict[str, Any] = page.evaluate(
                "() => ({...window.__dashboardStats,"
                " shown: document.querySelector('#seq').textContent})"
            )
            page.context.close()
            return after

        after = browser.run(resumed)
    finally:
        first.stop()
        if second is not None:
            second.stop()
    assert before["status"] == "live" and down["status"] == "reconnecting"
    assert before["renderedPid"] == first.process.pid
    # The same page now shows the new process's samples (its seq counts from 1 again).
    assert after["renderedPid"] == second.process.pid
    assert after["shown"] == f"#{after['renderedSeq']}"
    assert after["applied"] >= down["applied"] + 2


def test_verdict_names_each_reason(browser: BrowserThread, server: ServerProcess) -> None:
    def scenario(browser: Browser) -> list[dict[str, Any]]:
        page, _ = open_dashboard(browser, server.url)
        verdicts = [
            page.evaluate(JUDGE, {"snapshots": synthetic(trouble), "limits": LIMITS})
            for trouble in (False, True)
        ]
        verdicts.append(
            page.evaluate(JUDGE, {"snapshots": synthetic(False, 125), "limits": LIMITS})
        )
        verdicts.append(page.evaluate(JUDGE, {"snapshots": synthetic(False, 60), "limits": LIMITS}))
        page.context.close()
        return verdicts

    quiet, troubled, blocked, old_block = browser.run(scenario)
    assert quiet == {"level": "ok", "reasons": []}
    assert troubled["level"] == "degraded"
    assert [r["text"] for r in troubled["reasons"]] == [
        "loop lag p99 80.0 ms, over 50.0 ms",
        "pending Deferreds growing: about 89 → 139 in the last 60 s",
        "pool db saturated: 4/4 in use, 7 waiting",
        "timeouts rising: 3.0/s in the last 60 s (was 0.10/s)",
    ]
    assert blocked["level"] == "blocked"
    assert blocked["reasons"] == [
        {
            "level": "blocked",
            "text": "the loop blocked once in the last 60 s, "
            "longest 420 ms in app.py:9 in slow_call",
        }
    ]
    assert old_block == {"level": "ok", "reasons": []}  # 69 s ago: out of the recent window


SEEDED = """
() => {
  // What the page had before any live snapshot: rows and per-site trend points older than
  // the page's own initial snapshot came from the series seed.
  const initial = JSON.parse(document.getElementById('initial-snapshot').textContent);
  const rows = window.__dashboard.store.rows;
  const leak = [...window.__dashboard.trends.bySite].find(
    ([site]) => site.includes('Workload.leak'));
  const row = [...document.querySelectorAll('#sites-table tbody tr')].find(
    (tr) => tr.textContent.includes('Workload.leak'));
  return {
    initial: initial.time,
    firstRow: rows.length ? rows[0].t : null,
    olderRows: rows.filter((r) => r.t < initial.time).length,
    older: rows.filter((r) => r.t < initial.time).map((r) => [r.seq, r.lagP99, r.open]),
    leakFirst: leak ? leak[1][0][0] : null,
    trendText: row ? row.querySelector('.trend .visually-hidden').textContent : null,
  };
}
"""


def server_uptime_s(server: ServerProcess) -> float:
    with urllib.request.urlopen(server.url + "api/v1/snapshot", timeout=5) as response:
        uptime: float = json.loads(response.read())["process"]["uptime_s"]
    return uptime


def test_charts_and_site_trends_are_seeded_from_the_series(
    browser: BrowserThread, server: ServerProcess
) -> None:
    # The server has run long enough for the seed to reach back before the page opened.
    for _ in range(100):  # bounded: at most about 20 s
        if server_uptime_s(server) >= 8:
            break
        time.sleep(0.2)

    def scenario(browser: Browser) -> dict[str, Any]:
        page, watch = open_dashboard(browser, server.url)
        wait_for(page, "() => window.__dashboardStats.historySamples > 0")
        wait_for(page, "() => window.__dashboardStats.renders >= 2")
        seeded: dict[str, Any] = page.evaluate(SEEDED)
        assert watch.errors == []
        assert [u for u in watch.requests if "/api/v1/series" in u] == [
            # the 5-minute window, cut to the server's history (400 samples of 0.25 s)
            server.url + "api/v1/series?seconds=100&sites_seconds=60"
        ]
        page.context.close()
        return seeded

    seeded = browser.run(scenario)
    # Charted rows from before the page opened: at 4 samples a second, several seconds' worth,
    # each with the figures the full history holds for that sample (the first sample's lag
    # is null there too: nothing was measured yet).
    assert seeded["olderRows"] >= 20, seeded
    with urllib.request.urlopen(server.url + "api/v1/history", timeout=10) as response:
        history = json.loads(response.read())["samples"]
    expected = {
        s["seq"]: [s["seq"], s["loop"]["lag_ms"]["p99"], s["connections"]["open"]] for s in history
    }
    assert len(seeded["older"]) == seeded["olderRows"]
    assert [expected.get(seq) for seq, _, _ in seeded["older"]] == seeded["older"], seeded
    assert sum(1 for _, lag, _ in seeded["older"] if lag is not None) >= 19, seeded
    assert seeded["firstRow"] <= seeded["initial"] - 5, seeded
    # The per-site trend column reaches back too: from the series' sites of the last minute.
    assert seeded["leakFirst"] is not None and seeded["leakFirst"] <= seeded["initial"] - 5
    found = re.fullmatch(r" in (\d+) s", seeded["trendText"] or "")
    assert found is not None and int(found[1]) >= 5, seeded
