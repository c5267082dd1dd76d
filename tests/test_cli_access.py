"""Access options end to end: ``Monitor(token=..., metrics_token=..., allowed_hosts=...)``, its
``resource()`` behind the guard, the loud warning of ``listen()`` on a non-loopback interface
without a token, and ``--token`` / ``REACTOR_DASHBOARD_TOKEN`` on ``run`` and ``demo``.

Nothing here binds anything but loopback: the warning is checked with a stand-in endpoint.
"""

from __future__ import annotations

import json
import os
import re
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from treq.testing import StubTreq
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock

from dashboard.attach import (
    METRICS_TOKEN_ENV,
    TOKEN_ENV,
    access_options,
    main,
    take_token_variables,
)
from dashboard.monitor import Monitor
from dashboard.web.guard import GuardedResource
from tests.test_own_site import exchange, parse_answers
from tests.test_run_command import DASHBOARD_LINE, Child, run_command, write_script

TOKEN = "cli-test-token-0123456789abcdef"
METRICS_TOKEN = "cli-scraper-token-0123456789"


@pytest.fixture
def reactor_name(request: pytest.FixtureRequest) -> str:
    """This pytest run's reactor (``--reactor``): ``run`` gets the same one."""
    return str(request.config.getoption("reactor"))


SERVING_SCRIPT = """
from twisted.internet import reactor
reactor.callLater(30, reactor.stop)
reactor.run()
"""


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_access_options_come_from_flags_then_the_environment() -> None:
    env = {TOKEN_ENV: "from-the-environment-0123", METRICS_TOKEN_ENV: ""}
    assert access_options(None, None, env) == {"token": "from-the-environment-0123"}
    assert access_options(TOKEN, METRICS_TOKEN, env) == {
        "token": TOKEN,
        "metrics_token": METRICS_TOKEN,
    }
    assert access_options(None, None, {}) == {}
    with pytest.raises(ValueError, match=f"{TOKEN_ENV} must be at least 16"):
        access_options(None, None, {TOKEN_ENV: "short"})
    with pytest.raises(ValueError, match="--metrics-token may use letters"):
        access_options(None, "has spaces in it, 0123456789", {})


def test_a_bad_token_is_one_line_and_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = write_script(tmp_path, "never.py", "print('never runs')\n")
    assert main(["--token", "short", str(script)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("reactor-dashboard run: --token must be at least 16")
    assert captured.err.count("\n") == 1


def test_the_monitor_checks_its_access_options_up_front() -> None:
    with pytest.raises(ValueError, match="token must be at least 16"):
        monitor_with(token="short")
    with pytest.raises(ValueError, match="metrics_token"):
        monitor_with(metrics_token="x y")
    with pytest.raises(ValueError, match="not a host name"):
        monitor_with(allowed_hosts=["bad host:x"])
    one: Any = monitor_with(allowed_hosts="dash.internal")
    assert one.allowed_hosts == ("dash.internal",)
    assert TOKEN not in repr(monitor_with(token=TOKEN))


def monitor_with(**options: Any) -> Monitor:
    """A Monitor on a memory reactor with these options (typed loosely: the access options
    are new)."""
    return Monitor(MemoryReactorClock(), **options)


def stub_get(resource: Any, url: str, headers: dict[str, Any] | None = None) -> int:
    stub: Any = StubTreq(resource)
    box: list[Any] = []
    stub.get(url, headers=headers or {}).addBoth(box.append)
    stub.flush()
    code: int = box[0].code
    return code


def test_the_monitors_resource_is_guarded() -> None:
    monitor = monitor_with(token=TOKEN, allowed_hosts=["dash.internal"])
    monitor.sample()
    resource = monitor.resource()
    assert isinstance(resource, GuardedResource)
    assert stub_get(resource, "http://127.0.0.1/api/v1/snapshot") == 401
    bearer = {"Authorization": [f"Bearer {TOKEN}"]}
    assert stub_get(resource, "http://127.0.0.1/api/v1/snapshot", bearer) == 200
    assert stub_get(resource, "http://dash.internal/api/v1/snapshot", bearer) == 200
    assert stub_get(resource, "http://attacker.example/api/v1/snapshot", bearer) == 421
    open_monitor = monitor_with()
    open_monitor.sample()
    assert stub_get(open_monitor.resource(), "http://127.0.0.1/api/v1/snapshot") == 200


class StandInEndpoint:
    """Takes the place of a real server endpoint: nothing is bound."""

    def __init__(self, description: str) -> None:
        self.description = description

    def listen(self, factory: Any) -> defer.Deferred[Any]:
        return defer.succeed(self)


def test_listening_elsewhere_without_a_token_warns_on_stderr(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from twisted.internet import endpoints

    described: list[str] = []

    def stand_in(reactor: Any, description: str) -> StandInEndpoint:
        described.append(description)
        return StandInEndpoint(description)

    monkeypatch.setattr(endpoints, "serverFromString", stand_in)
    monitor_with().listen("tcp:8089:interface=0.0.0.0", allow_remote=True)
    warning = capsys.readouterr().err
    assert "WARNING" in warning and "0.0.0.0" in warning and "WITHOUT a token" in warning
    monitor_with(token=TOKEN).listen("tcp:8089:interface=0.0.0.0", allow_remote=True)
    monitor_with().listen(0)
    assert capsys.readouterr().err == ""
    assert described == ["tcp:8089:interface=0.0.0.0"] * 2 + ["tcp:0:interface=127.0.0.1"]


def test_run_with_a_token_from_the_environment(tmp_path: Path, reactor_name: str) -> None:
    script = write_script(tmp_path, "serve.py", SERVING_SCRIPT)
    env = {**os.environ, TOKEN_ENV: TOKEN, METRICS_TOKEN_ENV: METRICS_TOKEN}
    child = Child.start(run_command(reactor_name, str(script)), env=env)
    try:
        found = child.wait_for(DASHBOARD_LINE, "stderr")
        base = f"http://127.0.0.1:{found[1]}"
        child.wait_for(re.compile(r"a token is required"), "stderr")
        status, body = get(base + "/api/v1/snapshot")
        assert (status, body["error"]) == (401, "unauthorized")
        status, body = get(base + "/api/v1/snapshot", {"Authorization": f"Bearer {TOKEN}"})
        assert status == 200 and body["seq"] >= 1
        metrics = urllib.request.Request(
            base + "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
        )
        with urllib.request.urlopen(metrics, timeout=5) as response:
            assert response.status == 200
    finally:
        child.stop()
    assert TOKEN not in child.text("stderr") + child.text("stdout")


ENVIRONMENT_SCRIPT = """
import os, subprocess, sys
from twisted.internet import reactor
print("in-program:", os.environ.get("REACTOR_DASHBOARD_TOKEN"),
      os.environ.get("REACTOR_DASHBOARD_METRICS_TOKEN"), flush=True)
# A subprocess started from os.environ, and one from the C library's environment (os.system).
print("subprocess:", subprocess.run(["env"], capture_output=True, text=True).stdout, flush=True)
os.system("echo system: $REACTOR_DASHBOARD_TOKEN $REACTOR_DASHBOARD_METRICS_TOKEN $KEEP_ME")
print("spawned", flush=True)
reactor.callLater(30, reactor.stop)
reactor.run()
"""


def test_run_removes_the_token_variables_before_the_program_runs(
    tmp_path: Path, reactor_name: str
) -> None:
    script = write_script(tmp_path, "spawn.py", ENVIRONMENT_SCRIPT)
    env = {**os.environ, TOKEN_ENV: TOKEN, METRICS_TOKEN_ENV: METRICS_TOKEN, "KEEP_ME": "kept"}
    child = Child.start(run_command(reactor_name, str(script)), env=env)
    try:
        found = child.wait_for(DASHBOARD_LINE, "stderr")
        child.wait_for(re.compile(r"^spawned$"), "stdout")
        base = f"http://127.0.0.1:{found[1]}"
        # The dashboard still took both tokens before they were removed.
        assert get(base + "/api/v1/snapshot")[0] == 401
        status, body = get(base + "/api/v1/snapshot", {"Authorization": f"Bearer {TOKEN}"})
        assert status == 200 and body["seq"] >= 1
        metrics = urllib.request.Request(
            base + "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
        )
        with urllib.request.urlopen(metrics, timeout=5) as response:
            assert response.status == 200
            assert response.headers["Server"] == "reactor-dashboard"
        # Twisted's own refusal on run's dashboard port: JSON, with the security headers.
        received, closed = exchange(int(found[1]), b"GET /\r\nHost: 127.0.0.1\r\n\r\n")
        [refusal] = parse_answers(received)
        assert closed and refusal.status == 400
        assert json.loads(refusal.body)["error"] == "bad_request_line"
        assert refusal.headers["x-frame-options"] == "DENY"
    finally:
        child.stop()
    out = child.text("stdout")
    assert "in-program: None None\n" in out, child.report()
    assert "\nKEEP_ME=kept\n" in out  # the subprocess's environment was printed ...
    assert not re.search(r"^REACTOR_DASHBOARD_(METRICS_)?TOKEN=", out, re.M)  # ... without them
    assert "system: kept\n" in out
    assert TOKEN not in out and METRICS_TOKEN not in out


def test_token_variables_are_taken_out_of_the_environment() -> None:
    env = {TOKEN_ENV: TOKEN, METRICS_TOKEN_ENV: "", "OTHER": "1"}
    assert take_token_variables(env) == {TOKEN_ENV: TOKEN, METRICS_TOKEN_ENV: ""}
    assert env == {"OTHER": "1"}
    assert take_token_variables(env) == {}


def test_demo_takes_a_token(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "dashboard", "demo", "--port", "0", "--duration", "20"]
    child = Child.start(command, env={**os.environ, TOKEN_ENV: TOKEN})
    try:
        found = child.wait_for(
            re.compile(r"Reactor Dashboard: (http://127\.0\.0\.1:\d+)/"), "stdout"
        )
        status, _ = get(found[1] + "/api/v1/snapshot")
        assert status == 401
        status, body = get(found[1] + "/api/v1/snapshot", {"Authorization": f"Bearer {TOKEN}"})
        assert status == 200 and body["seq"] >= 1
    finally:
        child.stop()
