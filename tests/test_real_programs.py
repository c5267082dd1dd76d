"""Real programs nobody here wrote, under ``reactor-dashboard run``, measured against their own
numbers: a Scrapy crawl (Scrapy's stats, the site's own connection count) and a trial run
(trial's own verdict, bare and monitored).

Every program runs in a subprocess on loopback; the tests meet the programs at fixed points
through files (tests/meeting.py) to read the dashboard while they run; every wait has a
deadline.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests import trial_subject
from tests.meeting import say_go, wait_ready
from tests.test_run_command import (
    BIN,
    DASHBOARD_LINE,
    MOVED_LINE,
    Child,
    fresh_snapshot,
    http_get,
)

pytestmark = pytest.mark.integration

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


@pytest.fixture
def reactor_name(request: pytest.FixtureRequest) -> str:
    """The reactor this pytest run uses (``--reactor=default|asyncio``): programs get it too."""
    return str(request.config.getoption("reactor"))


def program_env(**extra: str) -> dict[str, str]:
    """The environment of a program under test: this checkout importable (``tests.*``)."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}


# Scrapy ----------------------------------------------------------------------------------------

FAST_PAGES = 20
NEVER_PAGES = 3  # each never answers: it times out, is retried once and times out again
SITE_LINE = re.compile(r"serving (\d+) (\d+)")


def scrapy_timeouts(stats: dict[str, int]) -> int:
    """Scrapy's own count of downloads that timed out, retries included (the exception's
    name is Twisted's ``TimeoutError`` or, since Scrapy 2.13, ``DownloadTimeoutError``)."""
    prefix = "downloader/exception_type_count/"
    return sum(v for k, v in stats.items() if k.startswith(prefix) and k.endswith("TimeoutError"))


def test_a_scrapy_crawl_under_run_counts_what_scrapy_and_the_site_count(tmp_path: Path) -> None:
    site = Child.start([sys.executable, str(TESTS / "crawl_site.py"), "20", "3"])
    try:
        ports = site.wait_for(SITE_LINE, "stdout")
        site_url = f"http://127.0.0.1:{ports[1]}/"
        site_stats = f"http://127.0.0.1:{ports[2]}/stats"
        crawl = Child.start(
            [str(BIN / "reactor-dashboard"), "run", "--port", "0",
             str(TESTS / "crawl_program.py"), site_url, str(tmp_path)],
            env=program_env(),
        )  # fmt: skip
        try:
            first = crawl.wait_for(DASHBOARD_LINE, "stderr")
            # Scrapy installs the asyncio reactor itself; the dashboard follows it.
            moved = crawl.wait_for(MOVED_LINE, "stderr")
            assert (moved[1], moved[2]) == ("AsyncioSelectorReactor", first[1])
            dashboard = f"http://127.0.0.1:{moved[2]}"

            wait_ready(tmp_path, "crawling", alive=lambda: crawl.process.poll() is None)
            crawling = fresh_snapshot(dashboard)  # the index is in, its links not yet followed
            say_go(tmp_path, "crawling")
            wait_ready(tmp_path, "done", alive=lambda: crawl.process.poll() is None)
            done = fresh_snapshot(dashboard)
            status, body = http_get(site_stats)
            assert status == 200
            served: dict[str, Any] = json.loads(body)
            say_go(tmp_path, "done")
            exit_status = crawl.wait(timeout_s=30)
        finally:
            crawl.stop()
    finally:
        site.stop()
    assert exit_status == 0, crawl.report()
    stats: dict[str, int] = json.loads((tmp_path / "stats.json").read_text())

    # The crawl is the one we think: every page fetched, each never-page tried twice.
    assert stats["item_scraped_count"] == FAST_PAGES, stats
    assert served["requests"]["/"] == 1
    assert all(served["requests"][f"/never/{i}"] == 2 for i in range(NEVER_PAGES)), served
    assert scrapy_timeouts(stats) == 2 * NEVER_PAGES, stats

    assert crawling["reactor"] == done["reactor"] == "AsyncioSelectorReactor"
    # Scrapy's download timeout is a delayed call that cancels the download's Deferred.
    assert done["timeouts"]["fired_total"]["deferred"] == scrapy_timeouts(stats), done["timeouts"]
    # Its HTTP pool is named after the code that made it.
    http_pools = [p for p in crawling["pools"] if p["kind"] == "http"]
    assert http_pools, crawling["pools"]
    assert all("scrapy/core/downloader" in p["name"] for p in http_pools), http_pools
    # Every connection of the crawl, and only those (the dashboard's own are apart), as the
    # site counted them; all closed by the end of the crawl.
    figures = done["connections"]
    assert figures["opened_total"] == served["accepted"], (figures, served["accepted"])
    assert figures["closed_total"] == figures["opened_total"]
    assert figures["open"] == 0
    assert done["errors"]["total"] == 0, done["errors"]


# trial -----------------------------------------------------------------------------------------

VERDICT_LINE = re.compile(r"^(?:\[(?:FAIL|ERROR)\]|tests\.trial_subject\.\S+)$")


def verdicts(output: str) -> list[str]:
    """trial's report: each ``[FAIL]``/``[ERROR]`` and the tests it names, in order."""
    return [line for line in output.splitlines() if VERDICT_LINE.match(line)]


def keep_alive_get(connection: http.client.HTTPConnection, path: str) -> tuple[int, int]:
    """GET ``path`` on a kept-alive connection; the status and the client's port (the same
    port means the same connection)."""
    connection.request("GET", path)
    response = connection.getresponse()
    response.read()
    assert connection.sock is not None
    port: int = connection.sock.getsockname()[1]
    return response.status, port


def summary(output: str) -> str:
    return [line for line in output.splitlines() if line.strip()][-1]


def test_trial_under_run_keeps_trials_verdict_and_the_monitor_survives(
    tmp_path: Path, reactor_name: str
) -> None:
    reactor_option = [] if reactor_name == "default" else ["--reactor", reactor_name]
    check_trial_under_run(tmp_path, run_options=reactor_option, trial_options=[])


def test_trial_choosing_its_reactor_under_run_keeps_its_verdict(tmp_path: Path) -> None:
    # trial installs the reactor it is given; the dashboard follows it, and trial's janitor
    # leaves the moved dashboard alone as well.
    check_trial_under_run(tmp_path, run_options=[], trial_options=["--reactor=asyncio"])


def check_trial_under_run(tmp_path: Path, run_options: list[str], trial_options: list[str]) -> None:
    """trial on tests/trial_subject.py bare, then under ``run``: same verdict; the dashboard
    answers in the first test and in the last, and sampled in between."""
    trial = ["-m", "twisted.trial", *trial_options, "tests.trial_subject"]
    bare_dir = tmp_path / "bare"
    bare_dir.mkdir()
    for meeting in ("first", "last"):
        say_go(bare_dir, meeting)  # bare, nobody looks: the meetings pass at once
    bare = subprocess.run(
        [sys.executable, *trial],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=bare_dir,
        env=program_env(**{trial_subject.FOLDER_ENV: str(bare_dir)}),
    )
    assert summary(bare.stdout) == trial_subject.EXPECTED_SUMMARY, bare.stdout + bare.stderr
    assert bare.returncode == 1

    watched_dir = tmp_path / "watched"
    watched_dir.mkdir()
    child = Child.start(
        [str(BIN / "reactor-dashboard"), "run", "--port", "0", *run_options, *trial],
        cwd=watched_dir,
        env=program_env(**{trial_subject.FOLDER_ENV: str(watched_dir)}),
    )
    try:
        found = child.wait_for(DASHBOARD_LINE, "stderr")
        dashboard = f"http://127.0.0.1:{found[1]}"
        if trial_options:
            moved = child.wait_for(MOVED_LINE, "stderr")
            assert (moved[1], moved[2]) == ("AsyncioSelectorReactor", found[1])

        def alive() -> bool:
            return child.process.poll() is None

        wait_ready(watched_dir, "first", alive)  # in the first test
        first = fresh_snapshot(dashboard)
        # A client that keeps its connection to the dashboard open across the tests (its
        # idle timeout is a delayed call of the dashboard's, its socket a reader).
        kept = http.client.HTTPConnection("127.0.0.1", int(found[1]), timeout=5)
        kept_status, kept_port = keep_alive_get(kept, "/api/v1/snapshot")
        assert kept_status == 200
        say_go(watched_dir, "first")
        # Later: after six more tests, a janitor's cleaning after each and a class cleanup.
        wait_ready(watched_dir, "last", alive)
        # The same connection still answers.
        assert keep_alive_get(kept, "/api/v1/snapshot") == (200, kept_port)
        kept.close()
        last = fresh_snapshot(dashboard)
        deadline = time.monotonic() + 15
        while last["seq"] < first["seq"] + 2 and time.monotonic() < deadline:
            time.sleep(0.2)  # sampling goes on: one sample a second
            last = fresh_snapshot(dashboard)
        say_go(watched_dir, "last")
        status = child.wait(timeout_s=30)
    finally:
        child.stop()

    assert last["seq"] >= first["seq"] + 2, (first["seq"], last["seq"])
    assert first["reactor"] == last["reactor"]
    own = f"127.0.0.1:{found[1]}"
    assert last["connections"]["own"]["listening"] == [own]
    assert last["errors"]["total"] == 0, last["errors"]
    # trial's verdict is the program's: same exit status, same report, same summary; the
    # timer the program left behind is still reported, and nothing of the dashboard's.
    out = child.text("stdout")
    assert status == bare.returncode == 1, child.report()
    assert summary(out) == trial_subject.EXPECTED_SUMMARY, child.report()
    assert verdicts(out) == verdicts(bare.stdout), child.report()
    assert out.count("DirtyReactorAggregateError") == 1, out
    assert "test_6_leaves_a_timer_behind.<locals>.<lambda>" in out
    for dashboards_own in ("Monitor._tick", "QuietSite", "_periodic_sweep", "_updateLogDateTime"):
        assert dashboards_own not in out, out
    assert "Traceback" not in child.text("stderr"), child.report()
