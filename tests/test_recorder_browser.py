"""The replayed page in Chromium: scrub to a moment and the tables show that moment's sites
and blocking stacks; the charts show the chosen range. A real recording
(tests/recorder_phases.py) served by the real ``reactor-dashboard replay``."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser

from dashboard.recorder.store import RecordingStore, compress
from tests.browser_support import BrowserThread, new_page, stats, text, wait_for
from tests.test_recorder_replay import Phases, Replay


@pytest.fixture(scope="module")
def recording(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Phases, Replay]]:
    path: Path = tmp_path_factory.mktemp("browser-replay") / "phases.db"
    phases = Phases(path, str(request.config.getoption("reactor")))
    server = Replay(path)
    try:
        yield phases, server
    finally:
        server.stop()


def test_scrubbing_shows_that_moments_sites_and_stacks(
    browser: BrowserThread, recording: tuple[Phases, Replay]
) -> None:
    phases, server = recording

    def scenario(browser: Browser) -> dict[str, Any]:
        page, watch = new_page(browser)
        page.goto(f"http://127.0.0.1:{server.port}/")
        wait_for(page, "() => window.__dashboardStats?.replay?.moments >= 1")
        wait_for(page, "() => window.__dashboardStats.replay.ranges >= 1")
        assert text(page, "#status-text") == "replay"
        assert page.locator("#replay").is_visible()
        assert not page.locator(".window-switch").is_visible()
        # the whole recording charted: every sample, oldest to newest
        rows = page.evaluate("() => window.__dashboard.store.rows.length")
        # scrub with the slider itself to the middle of phase A
        moments = stats(page)["replay"]["moments"]
        page.locator("#replay-scrubber").fill(str(phases.middle(phases.a)))
        wait_for(page, "(n) => window.__dashboardStats.replay.moments > n", moments)
        wait_for(page, "() => window.__dashboardStats.renders >= 2")
        shown_a = stats(page)["replay"]["shownAt"]
        sites_a = text(page, "#sites-table")
        blocks_a = text(page, "#blocks-list")
        # then to phase B through the page's hook
        page.evaluate("(t) => window.__dashboard.replay.seek(t)", phases.middle(phases.b))
        wait_for(
            page,
            "() => document.getElementById('sites-table').textContent"
            ".includes('beta_site_function')",
        )
        sites_b = text(page, "#sites-table")
        download = page.get_attribute("a.download", "href")
        blocks_b = text(page, "#blocks-list")
        # a narrower range: phase B alone in the charts
        page.evaluate(
            "([a, b]) => window.__dashboard.replay.range(a, b)", [phases.b[0], phases.b[1]]
        )
        times = page.evaluate("() => window.__dashboard.store.rows.map((r) => r.t)")
        # the range picker's own button: the inputs hold the whole span
        ranges = stats(page)["replay"]["ranges"]
        page.click("#replay-apply")
        wait_for(page, "(n) => window.__dashboardStats.replay.ranges > n", ranges)
        errors = list(watch.errors)
        requests = list(watch.requests)
        page.context.close()
        return {
            "rows": rows,
            "shown_a": shown_a,
            "sites_a": sites_a,
            "blocks_a": blocks_a,
            "sites_b": sites_b,
            "download": download,
            "blocks_b": blocks_b,
            "times": times,
            "errors": errors,
            "requests": requests,
        }

    seen = browser.run(scenario, timeout_s=120)
    assert seen["rows"] >= 15
    assert seen["shown_a"] <= phases.middle(phases.a) and seen["shown_a"] >= phases.a[0] - 0.2
    assert "alpha_site_function" in seen["sites_a"] and "beta" not in seen["sites_a"]
    assert "replayed_block_function" not in seen["blocks_a"]
    assert "beta_site_function" in seen["sites_b"] and "alpha" not in seen["sites_b"]
    assert "replayed_block_function" in seen["blocks_b"]
    assert seen["download"].startswith("api/v1/snapshot?at=")
    assert float(seen["download"].split("=")[1]) <= phases.middle(phases.b)
    assert seen["times"] and all(phases.b[0] <= t <= phases.b[1] for t in seen["times"])
    assert seen["errors"] == []
    assert not any("/api/v1/events" in url for url in seen["requests"])
    assert any("/api/v1/snapshot?at=" in url for url in seen["requests"])


def test_a_late_range_answer_is_dropped_and_latest_extends_to_the_newest(
    browser: BrowserThread, recording: tuple[Phases, Replay], tmp_path: Path
) -> None:
    """Two ranges asked in a row, the first answered last: the charts show the second.
    A sample recorded after the page loaded: "Latest" moves To (and the moment) to it."""
    phases, _ = recording
    copy = tmp_path / "growing.db"
    shutil.copyfile(phases.path, copy)
    server = Replay(copy)
    try:
        newest = phases.b[1] + 30.0

        def scenario(browser: Browser) -> dict[str, Any]:
            page, watch = new_page(browser)
            page.goto(f"http://127.0.0.1:{server.port}/")
            wait_for(page, "() => window.__dashboardStats?.replay?.ranges >= 1")
            wait_for(page, "() => window.__dashboardStats.replay.moments >= 1")
            # the whole-span answer is held back 1.5 s; phase B's is asked after it
            page.evaluate(
                """(slow) => {
                  const real = window.fetch;
                  window.fetch = (url, options) => {
                    const answer = real(url, options);
                    if (!String(url).includes(`series?from=${slow}&`)) return answer;
                    return answer.then((r) => new Promise((ok) => setTimeout(() => ok(r), 1500)));
                  };
                }""",
                phases.a[0],
            )
            page.evaluate(
                """([a0, b0, b1]) => {
                  window.__both = Promise.all([
                    window.__dashboard.replay.range(a0, b1),
                    window.__dashboard.replay.range(b0, b1),
                  ]);
                }""",
                [phases.a[0], phases.b[0], phases.b[1]],
            )
            page.evaluate("() => window.__both")
            times = page.evaluate("() => window.__dashboard.store.rows.map((r) => r.t)")
            stale = stats(page)["replay"]["stale"]
            to_before = page.input_value("#replay-to")
            # a sample recorded now, 30 s after the last: Latest finds it
            store = RecordingStore(copy, create=True)
            try:
                last = store.at(float("inf"))
                assert last is not None
                data = last.data | {"time": newest, "seq": last.seq + 1}
                encoded = json.dumps(data).encode()
                store.append([(newest, last.seq + 1, len(encoded), compress(encoded))])
            finally:
                store.close()
            page.click("#replay-latest")
            wait_for(page, "() => window.__dashboardStats.replay.latest >= 1")
            wait_for(page, "(t) => window.__dashboardStats.replay.shownAt >= t - 1", newest)
            seen = {
                "times": times,
                "stale": stale,
                "to_before": to_before,
                "to_after": page.input_value("#replay-to"),
                "state_to": stats(page)["replay"]["to"],
                "errors": list(watch.errors),
            }
            page.context.close()
            return seen

        seen = browser.run(scenario, timeout_s=120)
    finally:
        server.stop()
    assert seen["times"] and all(phases.b[0] <= t <= phases.b[1] for t in seen["times"])
    assert seen["stale"] >= 1
    assert seen["state_to"] == newest and seen["to_after"] != seen["to_before"]
    assert seen["errors"] == []
