"""The page's "Where the loop's time goes" table and the verdict's handler reason, in Debian's
Chromium: live from a monitored server (tests/browser_server.py), and from synthetic
snapshots rendered by the page's own modules in a paused page."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser

from tests.browser_scripts import LIMITS
from tests.browser_support import BrowserThread, ServerProcess, new_page, wait_for

SERVER = Path(__file__).resolve().parent / "handlers_server.py"
MARKUP = '<img src=x onerror="window.__xss=1">app.handler'

RENDER = """
async (snapshot) => {
  const { HandlerTrends, renderHandlers } = await import(
    new URL('static/js/handlers.js', location.href));
  const trends = new HandlerTrends();
  for (let seq = 1; seq <= 5; seq += 1) {
    const rows = snapshot.loop.handlers.map((h) => ({ ...h, share_last: h.share * seq / 5 }));
    trends.add({ ...snapshot, seq, loop: { ...snapshot.loop, handlers: rows } });
  }
  renderHandlers(snapshot, trends);
  const rows = [...document.querySelectorAll('#handlers-table tbody tr')];
  return {
    rows: rows.map((tr) => [...tr.cells].map((td) => td.textContent.trim())),
    own: rows.map((tr) => tr.classList.contains('own')),
    sparkPoints: rows.map((tr) => {
      const line = tr.querySelector('svg.spark polyline');
      return line ? line.getAttribute('points').split(' ').length : 0;
    }),
    bars: rows.map((tr) => tr.querySelector('.bar-fill').style.width),
    note: document.getElementById('handlers-note').textContent,
    xss: window.__xss === 1,
  };
}
"""

JUDGE = """
async ({ snapshot, limits }) => {
  const { judge } = await import(new URL('static/js/verdict.js', location.href));
  return judge(snapshot, [], limits);
}
"""


def row(
    name: str, share: float, calls_per_s: float, mean_ms: float, max_ms: float, own: bool = False
) -> dict[str, Any]:
    return {
        "handler": name,
        "own": own,
        "calls": round(calls_per_s * 10),
        "busy_s": share * 10,
        "share": share,
        "share_last": share,
        "calls_per_s": calls_per_s,
        "mean_ms": mean_ms,
        "max_ms": max_ms,
        "calls_total": 1000,
        "busy_s_total": 12.5,
        "max_ms_total": max_ms,
        "duration_counts": [0] * 13,
    }


def snapshot(busy: float, rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "seq": 5,
        "time": 1_000_000.0,
        "loop": {
            "lag_ms": {"p50": 1, "p99": 2, "last": 1},
            "busy_ratio": busy,
            "blocks": [],
            "handlers": rows,
            "handlers_other": {"handlers": 3, "calls": 40, "busy_s": 0.05, "share": 0.005},
            "handlers_window_s": 10.0,
            "handlers_busy_ratio": busy,
        },
    }


class HandlersServer(ServerProcess):
    """tests/handlers_server.py: a monitored reactor with busy time by handler on."""

    def __init__(self) -> None:
        self.prefix = ""
        self.port = int(self._start([sys.executable, str(SERVER)])[0])


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    process = HandlersServer()
    try:
        yield process
    finally:
        process.stop()


def test_the_live_table_lists_handlers_and_marks_the_dashboards_own(
    browser: BrowserThread, server: ServerProcess
) -> None:
    def scenario(browser: Browser) -> tuple[list[list[str]], list[bool], str, list[str]]:
        page, watch = new_page(browser)
        page.goto(server.url)
        condition = """() => [...document.querySelectorAll('#handlers-table tbody tr')]
            .some((tr) => tr.textContent.includes('Monitor._tick'))"""
        wait_for(page, condition, timeout_ms=20000)
        rows = page.evaluate(
            """() => [...document.querySelectorAll('#handlers-table tbody tr')].map(
                (tr) => [...tr.cells].map((td) => td.textContent.trim()))"""
        )
        own = page.evaluate(
            """() => [...document.querySelectorAll('#handlers-table tbody tr')].map(
                (tr) => tr.classList.contains('own'))"""
        )
        title = page.text_content("#handlers-title") or ""
        page.context.close()
        return rows, own, title, watch.errors

    rows, own, title, errors = browser.run(scenario)
    assert errors == []
    assert title == "Where the loop's time goes"
    names = [r[0] for r in rows]
    tick = next(i for i, name in enumerate(names) if "dashboard.monitor.Monitor._tick" in name)
    assert names[tick].endswith("dashboard")  # the tag
    assert own[tick] is True
    program = names.index("__main__.busy_job (LoopingCall)")
    assert own[program] is False
    assert program < tick  # 20 ms ten times a second: busier than the sampler
    channel = next(i for i, n in enumerate(names) if "QuietChannel.dataReceived" in n)
    assert own[channel] is True  # the page's own requests


def test_rows_show_share_rate_mean_max_and_a_trend(
    browser: BrowserThread, server: ServerProcess
) -> None:
    data = snapshot(
        0.3,
        [
            row("myapp.jobs.poll (LoopingCall)", 0.2, 10, 20.0, 31.5),
            row(MARKUP, 0.05, 250, 0.2, 4.0),
            row("dashboard.monitor.Monitor._tick", 0.001, 1, 1.0, 1.2, own=True),
        ],
    )

    def scenario(browser: Browser) -> tuple[dict[str, Any], list[str]]:
        page, watch = new_page(browser)
        page.goto(server.url)
        wait_for(page, "() => window.__dashboardStats && window.__dashboardStats.renders >= 1")
        page.click("#pause")
        shown: dict[str, Any] = page.evaluate(RENDER, data)
        page.context.close()
        return shown, watch.errors

    shown, errors = browser.run(scenario)
    assert errors == []
    assert shown["rows"][0] == [
        "myapp.jobs.poll (LoopingCall)",
        "20.0 %",
        "10",
        "20.0 ms",
        "31.5 ms",
        "",
    ]
    assert shown["rows"][1][0] == MARKUP  # as text, never markup
    assert shown["xss"] is False
    assert shown["rows"][1][1:5] == ["5.0 %", "250", "0.20 ms", "4.00 ms"]
    assert shown["rows"][2][0] == "dashboard.monitor.Monitor._tickdashboard"
    assert shown["own"] == [False, False, True]
    assert shown["bars"][0] == "20%"
    assert shown["sparkPoints"] == [5, 5, 5]
    assert shown["note"] == (
        "last 10 s · handlers 25.6 % of the loop, busy 30.0 % · 3 more handlers 0.5 %"
    )


def test_the_verdict_names_a_handler_that_takes_most_of_a_busy_loop(
    browser: BrowserThread, server: ServerProcess
) -> None:
    busy = snapshot(0.9, [row("myapp.jobs.poll (LoopingCall)", 0.6, 40, 15.0, 30.0)])
    spread = snapshot(
        0.9,
        [
            row("myapp.a", 0.3, 40, 7.5, 9.0),
            row("myapp.b", 0.3, 40, 7.5, 9.0),
            row("myapp.c", 0.29, 40, 7.3, 9.0),
        ],
    )
    quiet = snapshot(0.3, [row("myapp.jobs.poll (LoopingCall)", 0.29, 10, 29.0, 30.0)])

    def scenario(browser: Browser) -> list[dict[str, Any]]:
        page, _watch = new_page(browser)
        page.goto(server.url)
        wait_for(page, "() => window.__dashboardStats && window.__dashboardStats.renders >= 1")
        verdicts = [
            page.evaluate(JUDGE, {"snapshot": s, "limits": LIMITS}) for s in (busy, spread, quiet)
        ]
        page.context.close()
        return verdicts

    named, spread_out, calm = browser.run(scenario)
    assert named["level"] == "degraded"
    assert named["reasons"] == [
        {
            "level": "degraded",
            "text": "the loop is 90.0 % busy, 60.0 % in myapp.jobs.poll (LoopingCall) "
            "(40 calls/s, mean 15.0 ms, max 30.0 ms)",
        }
    ]
    assert spread_out["reasons"] == []  # busy, but no one handler takes most of it
    assert calm["reasons"] == []  # one handler takes it all, but the loop is not busy
