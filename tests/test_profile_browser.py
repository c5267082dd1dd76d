"""The page's "Profile" panel in Debian's Chromium, against a monitored process whose reactor
spends about half its time in ``burn_cpu`` (tests/profile_server.py, on this run's reactor):
the button asks for a profile, the flame graph is drawn with ``burn_cpu`` in it, hovering a
box names it with its share, the idle share shows beside it, and the downloads hold the same
profile as collapsed stacks and a speedscope file. A function named with markup shows as
text and never runs."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser

from tests.browser_support import BrowserThread, ServerProcess, new_page, stats, wait_for
from tests.profile_server import MARKUP_NAME

SERVER = Path(__file__).resolve().parent / "profile_server.py"


class ProfileServer(ServerProcess):
    def __init__(self, reactor: str) -> None:
        self.prefix = ""
        words = self._start([sys.executable, str(SERVER), "--port", "0", "--reactor", reactor])
        self.port = int(words[0])


@pytest.fixture(scope="module")
def server(request: pytest.FixtureRequest) -> Iterator[ProfileServer]:
    reactor = str(request.config.getoption("reactor", "default"))
    process = ProfileServer("asyncio" if reactor == "asyncio" else "default")
    try:
        yield process
    finally:
        process.stop()


def test_the_button_draws_a_flame_graph_with_the_burn_function(
    browser: BrowserThread, server: ProfileServer
) -> None:
    def scenario(browser: Browser) -> dict[str, Any]:
        page, watch = new_page(browser, accept_downloads=True)
        page.goto(server.url)
        wait_for(page, "() => window.__dashboardStats && window.__dashboardStats.renders >= 1")
        assert page.locator("#profile-collapsed").is_hidden()
        page.fill("#profile-seconds", "2")
        page.click("#profile-start")
        assert page.locator("#profile-start").is_disabled()
        wait_for(page, "() => window.__dashboardStats.profile.drawn >= 1", timeout_ms=30000)
        burn = page.locator(".flame-box", has_text="burn_cpu").first
        burn.hover()
        hover = page.locator("#profile-hover").text_content() or ""
        boxes = page.eval_on_selector_all(
            ".flame-box", "nodes => nodes.map(n => [n.textContent, n.dataset.count])"
        )
        with page.expect_download() as collapsed_download:
            page.click("#profile-collapsed")
        with page.expect_download() as speedscope_download:
            page.click("#profile-speedscope")
        result = {
            "stats": stats(page)["profile"],
            "idle": page.locator("#profile-idle").text_content(),
            "status": page.locator("#profile-status").text_content(),
            "hover": hover,
            "boxes": boxes,
            "burn_width": burn.bounding_box(),
            "flame_width": page.locator("#profile-flame").bounding_box(),
            "collapsed": Path(collapsed_download.value.path()).read_text(),
            "collapsed_name": collapsed_download.value.suggested_filename,
            "speedscope": json.loads(Path(speedscope_download.value.path()).read_text()),
            "xss": page.evaluate("() => window.__xss === undefined"),
            "markup_img": page.locator("#profile-flame img").count(),
            "errors": watch.errors,
        }
        page.context.close()
        return result

    shown = browser.run(scenario, timeout_s=90)
    assert shown["errors"] == []
    assert shown["stats"]["error"] is None and shown["stats"]["asked"] == 1
    assert shown["stats"]["boxes"] == len(shown["boxes"]) > 3
    names = [name for name, _ in shown["boxes"]]
    assert names[0] == "all busy samples"
    assert any(re.fullmatch(r"burn_cpu \(.*tests/profile_server\.py:\d+\)", n) for n in names)
    # hovering names the frame and its share of the time
    assert re.fullmatch(
        r"burn_cpu \(.+profile_server\.py:\d+\): \d+ samples, \d+\.\d% of the time, "
        r"\d+\.\d% of busy",
        shown["hover"],
    ), shown["hover"]
    share = float(re.search(r"(\d+\.\d)% of the time", shown["hover"]).group(1))  # type: ignore[union-attr]
    assert 30 <= share <= 65, shown["hover"]
    # burn_cpu is most of the busy width
    assert shown["burn_width"]["width"] >= 0.5 * shown["flame_width"]["width"]
    idle = re.match(r"idle (\d+\.\d)%", shown["idle"] or "")
    assert idle and 30 <= float(idle.group(1)) <= 65, shown["idle"]
    assert re.fullmatch(r"\d+ samples in \d+(\.\d+)? s", shown["status"] or "")
    # markup in a function name is text
    assert any(name.startswith(MARKUP_NAME + " (") for name in names), names
    assert shown["xss"] and shown["markup_img"] == 0
    # the downloads: the same profile
    assert shown["collapsed_name"].endswith(".collapsed.txt")
    lines = shown["collapsed"].splitlines()
    assert any(line.startswith("[idle: waiting in the poller] ") for line in lines)
    assert all(re.fullmatch(r".+ \d+", line) for line in lines)
    document = shown["speedscope"]
    assert document["$schema"] == "https://www.speedscope.app/file-format-schema.json"
    [profile] = document["profiles"]
    assert profile["type"] == "sampled"
    assert len(profile["samples"]) == len(profile["weights"]) == len(lines)
    assert any(f["name"] == "burn_cpu" for f in document["shared"]["frames"])
