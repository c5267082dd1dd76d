"""``GET /api/v1/profile``: the reactor thread's stack sampled about 100 times a second, on
this run's reactor, over loopback.

A known workload (a LoopingCall that spends half the time in ``burn_cpu``, the rest idle)
reads about half ``burn_cpu`` and about half idle. One profile at a time (409), bad
parameters 400, a client that goes away or ``Monitor.stop()`` ends the sampler thread, and no
thread runs when no profile is asked for. The collapsed and speedscope downloads parse. The
guard's rules (token, Host) apply, and signing out ends a profile open on the cookie. A render
that fails is a JSON 500, counted under ``errors.by_probe.profile``.
"""

from __future__ import annotations

import json
import re
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import attrs
import pytest
import pytest_twisted
import treq
from twisted.internet import task
from twisted.web.server import Site

from dashboard.monitor import Monitor
from dashboard.probes.profiler import THREAD_NAME
from dashboard.testing import global_reactor
from dashboard.web.profile_formats import IDLE_FRAME, SPEEDSCOPE_SCHEMA

TOKEN = "profile-test-token-0123456789"
BURN_S = 0.03  # each call burns 30 ms, every 60 ms: half the wall time


def burn_cpu(seconds: float) -> None:
    """The workload: busy on the reactor thread for ``seconds``."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


BURN_FRAME = f"burn_cpu ({__file__}:{burn_cpu.__code__.co_firstlineno})"


def profiler_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == THREAD_NAME]


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Wait (on the reactor) until ``condition()``; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await task.deferLater(global_reactor(), 0.02)


@attrs.define
class Served:
    monitor: Monitor
    base: str
    port: int


async def serve(token: str | None = None) -> tuple[Served, Any]:
    reactor = global_reactor()
    monitor = Monitor(reactor, interval=0.25, history=40, token=token)
    monitor.start()
    port: Any = reactor.listenTCP(0, Site(monitor.resource()), interface="127.0.0.1")
    number = port.getHost().port
    return Served(monitor, f"http://127.0.0.1:{number}", number), port


@pytest_twisted.async_yield_fixture
async def served() -> AsyncIterator[Served]:
    result, port = await serve()
    try:
        yield result
    finally:
        await port.stopListening()
        result.monitor.stop()


@pytest_twisted.async_yield_fixture
async def served_with_token() -> AsyncIterator[Served]:
    result, port = await serve(TOKEN)
    try:
        yield result
    finally:
        await port.stopListening()
        result.monitor.stop()


async def get(url: str, **kwargs: Any) -> tuple[int, Any, bytes]:
    response = await treq.get(url, persistent=False, **kwargs)
    return response.code, response.headers, await treq.content(response)


def share_of(profile: dict[str, Any], frame: str) -> float:
    count: int = sum(s["count"] for s in profile["stacks"] if s["frames"][-1] == frame)
    samples: int = profile["samples"]
    return count / samples


# the known workload ---------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_half_the_samples_are_burn_cpu_and_half_idle(served: Served) -> None:
    loop = task.LoopingCall(burn_cpu, BURN_S)
    loop.clock = global_reactor()
    loop.start(2 * BURN_S)
    try:
        started = time.monotonic()
        code, headers, body = await get(served.base + "/api/v1/profile?seconds=3")
        took = time.monotonic() - started
    finally:
        loop.stop()
    assert code == 200, body
    assert headers.getRawHeaders("content-type") == ["application/json; charset=utf-8"]
    assert headers.getRawHeaders("content-disposition") is None
    assert took >= 3.0
    profile = json.loads(body)
    assert profile["seconds"] == 3 and profile["hz_requested"] == 100.0
    assert profile["idle_by"] == "pulse"
    # about 100 looks a second (a loaded machine may skip some; skipped ones are counted)
    assert 150 <= profile["samples"] <= 330, profile["samples"]
    assert profile["samples"] == profile["idle_samples"] + profile["busy_samples"]
    assert sum(s["count"] for s in profile["stacks"]) == profile["busy_samples"]
    burn = share_of(profile, BURN_FRAME)
    idle = profile["idle_samples"] / profile["samples"]
    assert 0.35 <= burn <= 0.65, (burn, idle)
    assert 0.3 <= idle <= 0.65, (burn, idle)
    assert profile["idle_share"] == round(idle, 4)
    # one box per function: burn_cpu's whole stack, outermost first, named by def lines
    top = profile["stacks"][0]
    assert top["frames"][-1] == BURN_FRAME
    assert any(
        f.startswith("LoopingCall.__call__ (twisted/internet/task.py:") for f in top["frames"]
    )
    assert all(re.fullmatch(r".+ \(.+:\d+\)", f) for s in profile["stacks"] for f in s["frames"])
    assert profile["truncated"] == {
        "deep_samples": 0,
        "other_samples": 0,
        "max_depth": 64,
        "max_stacks": 1000,
    }
    await until(lambda: not profiler_threads())
    assert served.monitor.errors.as_json()["total"] == 0


# one at a time, bad input ---------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_one_at_a_time_409_and_head_says_whether_one_could_start(served: Served) -> None:
    url = served.base + "/api/v1/profile?seconds=2"
    head = await treq.head(url, persistent=False)
    assert head.code == 200 and await treq.content(head) == b""
    assert not profiler_threads()  # HEAD samples nothing
    first = treq.get(url, persistent=False)
    await until(lambda: served.monitor.profiler.active is not None)
    code, _, body = await get(served.base + "/api/v1/profile?seconds=1&format=collapsed")
    assert code == 409
    error = json.loads(body)
    assert error["error"] == "profile_running" and error["status"] == 409
    assert 0 < error["seconds_left"] <= 2
    busy_head = await treq.head(url, persistent=False)
    assert busy_head.code == 409
    assert len(profiler_threads()) == 1
    response = await first
    assert response.code == 200
    assert json.loads(await treq.content(response))["samples"] > 0
    # free again as soon as the answer came
    again = await treq.head(url, persistent=False)
    assert again.code == 200
    assert served.monitor.profiler.runs_total == 1


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("", "seconds"),
        ("?seconds=0", "seconds"),
        ("?seconds=31", "seconds"),
        ("?seconds=abc", "seconds"),
        ("?seconds=1.5", "seconds"),
        ("?seconds=-1", "seconds"),
        ("?seconds=1&format=xml", "format"),
        ("?seconds=1&format=", "format"),
        ("?seconds=1&hz=1000", "hz"),
        ("?seconds=1&seconds=2", "seconds"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_bad_parameters_are_400_naming_the_problem(
    served: Served, query: str, parameter: str
) -> None:
    code, headers, body = await get(served.base + "/api/v1/profile" + query)
    assert code == 400, body
    assert headers.getRawHeaders("content-type") == ["application/json; charset=utf-8"]
    error = json.loads(body)
    assert error["error"] == "bad_request" and error["parameter"] == parameter
    assert parameter in error["message"]
    assert not profiler_threads()
    assert served.monitor.profiler.runs_total == 0


# threads end ----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_client_that_goes_away_stops_the_sampler(served: Served) -> None:
    sock = socket.create_connection(("127.0.0.1", served.port))
    try:
        sock.sendall(b"GET /api/v1/profile?seconds=30 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        await until(lambda: len(profiler_threads()) == 1)
    finally:
        sock.close()
    gone_at = time.monotonic()
    await until(lambda: not profiler_threads(), timeout_s=5.0)
    assert time.monotonic() - gone_at < 5.0
    assert served.monitor.profiler.cancelled_total == 1
    assert served.monitor.profiler.active is None
    # and the next one may start
    code, _, body = await get(served.base + "/api/v1/profile?seconds=1")
    assert code == 200, body
    assert sys.getswitchinterval() == pytest.approx(0.005)


@pytest_twisted.ensureDeferred
async def test_monitor_stop_ends_the_sampler_and_the_answer(served: Served) -> None:
    answer = treq.get(served.base + "/api/v1/profile?seconds=30", persistent=False)
    await until(lambda: len(profiler_threads()) == 1)
    switch_during = sys.getswitchinterval()
    served.monitor.stop()
    assert not profiler_threads()  # stop() joined it
    assert sys.getswitchinterval() == pytest.approx(0.005)
    assert switch_during == pytest.approx(0.001)
    response = await answer
    assert response.code == 503
    error = json.loads(await treq.content(response))
    assert error["error"] == "profile_stopped"
    code, _, body = await get(served.base + "/api/v1/profile?seconds=1")
    assert code == 503 and json.loads(body)["error"] == "not_running"
    assert not profiler_threads()


@pytest_twisted.ensureDeferred
async def test_nothing_runs_when_no_profile_is_asked_for(served: Served) -> None:
    for path in ("/", "/api/v1/snapshot", "/metrics", "/api/v1/series?seconds=5"):
        code, _, _ = await get(served.base + path)
        assert code == 200, path
    await task.deferLater(global_reactor(), 0.6)  # a few samples
    assert not profiler_threads()
    assert served.monitor.profiler.runs_total == 0
    assert sys.getswitchinterval() == pytest.approx(0.005)
    code, _, _ = await get(served.base + "/api/v1/profile?seconds=1")
    assert code == 200
    await until(lambda: not profiler_threads(), timeout_s=5.0)
    assert sys.getswitchinterval() == pytest.approx(0.005)


# downloads ------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_collapsed_stacks_parse_as_flamegraph_input(served: Served) -> None:
    loop = task.LoopingCall(burn_cpu, BURN_S)
    loop.clock = global_reactor()
    loop.start(2 * BURN_S)
    try:
        code, headers, body = await get(served.base + "/api/v1/profile?seconds=2&format=collapsed")
    finally:
        loop.stop()
    assert code == 200
    assert headers.getRawHeaders("content-type") == ["text/plain; charset=utf-8"]
    [disposition] = headers.getRawHeaders("content-disposition")
    assert re.fullmatch(
        r'attachment; filename="reactor-profile-\d{8}-\d{6}\.collapsed\.txt"', disposition
    )
    text = body.decode()
    assert text.endswith("\n")
    counts: dict[str, int] = {}
    for line in text.splitlines():
        # flamegraph.pl's own parse: the count follows the last run of spaces
        match = re.fullmatch(r"(.*)\s+?(\d+(?:\.\d*)?)", line)
        assert match, line
        stack = match.group(1)
        assert stack not in counts  # merged: each stack once
        counts[stack] = int(match.group(2))
    assert counts[IDLE_FRAME] > 0
    burn = sum(n for stack, n in counts.items() if stack.split(";")[-1] == BURN_FRAME)
    total = sum(counts.values())
    assert 0.35 <= burn / total <= 0.65, (burn, total)
    assert 150 <= total <= 220


@pytest_twisted.ensureDeferred
async def test_speedscope_file_has_the_schema_shape(served: Served) -> None:
    loop = task.LoopingCall(burn_cpu, BURN_S)
    loop.clock = global_reactor()
    loop.start(2 * BURN_S)
    try:
        code, headers, body = await get(served.base + "/api/v1/profile?seconds=1&format=speedscope")
    finally:
        loop.stop()
    assert code == 200
    [disposition] = headers.getRawHeaders("content-disposition")
    assert disposition.endswith('.speedscope.json"')
    document = json.loads(body)
    # speedscope's src/lib/file-format-spec.ts: File, Frame, SampledProfile
    assert document["$schema"] == SPEEDSCOPE_SCHEMA
    assert isinstance(document["version"], str)
    frames = document["shared"]["frames"]
    assert frames and all(isinstance(f["name"], str) for f in frames)
    assert all(
        isinstance(f.get("line", 0), int) and isinstance(f.get("file", ""), str) for f in frames
    )
    names = [f["name"] for f in frames]
    assert len(set(map(json.dumps, frames))) == len(frames)  # shared, once each
    burn = frames[names.index("burn_cpu")]
    assert burn == {
        "name": "burn_cpu",
        "file": __file__,
        "line": burn_cpu.__code__.co_firstlineno,
    }
    assert {"name": IDLE_FRAME} in frames
    [profile] = document["profiles"]
    assert profile["type"] == "sampled"
    assert profile["unit"] in {
        "none",
        "nanoseconds",
        "microseconds",
        "milliseconds",
        "seconds",
        "bytes",
    }
    assert isinstance(profile["name"], str)
    assert profile["startValue"] <= profile["endValue"]
    assert len(profile["samples"]) == len(profile["weights"])
    assert all(
        isinstance(i, int) and 0 <= i < len(frames) for stack in profile["samples"] for i in stack
    )
    # weights are seconds at the rate asked for: about the second sampled
    assert 0.6 <= sum(profile["weights"]) <= 1.2
    assert profile["endValue"] == pytest.approx(sum(profile["weights"]), abs=1e-3)
    assert document["activeProfileIndex"] == 0


# the guard ------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_the_guard_rules_apply(served_with_token: Served) -> None:
    base = served_with_token.base
    code, _, body = await get(base + "/api/v1/profile?seconds=1")
    assert code == 401
    assert json.loads(body)["status"] == 401
    code, _, _ = await get(
        base + "/api/v1/profile?seconds=1", headers={"Authorization": "Bearer wrong"}
    )
    assert code == 401
    code, _, _ = await get(
        base + "/api/v1/profile?seconds=1",
        headers={"Authorization": f"Bearer {TOKEN}", "Host": "evil.example"},
    )
    assert code == 421
    assert served_with_token.monitor.profiler.runs_total == 0
    assert not profiler_threads()
    code, _, body = await get(
        base + "/api/v1/profile?seconds=1", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert code == 200 and json.loads(body)["samples"] > 0


@pytest_twisted.ensureDeferred
async def test_a_render_that_fails_is_a_json_500_and_counted(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dashboard.web import profile

    def broken(_: object) -> bytes:
        raise RuntimeError("render broke")

    _, content_type, suffix = profile.FORMATS["json"]
    monkeypatch.setitem(profile.FORMATS, "json", (broken, content_type, suffix))
    code, _, body = await get(served.base + "/api/v1/profile?seconds=1")
    assert code == 500
    assert json.loads(body)["error"] == "internal_error"
    errors = served.monitor.errors.as_json()
    assert errors["by_probe"] == {"profile": 1}
    assert "render broke" in errors["last"]["profile"]
    await until(lambda: not profiler_threads())


@pytest_twisted.ensureDeferred
async def test_signing_out_ends_a_profile_open_on_the_cookie(served_with_token: Served) -> None:
    base = served_with_token.base
    signed = await treq.get(f"{base}/?token={TOKEN}", allow_redirects=False, persistent=False)
    assert signed.code == 303
    await treq.content(signed)
    [set_cookie] = signed.headers.getRawHeaders("set-cookie")
    cookie: str = set_cookie.split(";", 1)[0]
    sock = socket.create_connection(("127.0.0.1", served_with_token.port))
    try:
        sock.sendall(
            b"GET /api/v1/profile?seconds=30 HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: %s\r\n\r\n"
            % cookie.encode()
        )
        await until(lambda: len(profiler_threads()) == 1)
        sign_out: dict[bytes | str, bytes | str] = {
            "Cookie": cookie,
            "Sec-Fetch-Site": "same-origin",
        }
        out = await treq.post(f"{base}/session/sign-out", headers=sign_out, persistent=False)
        assert out.code == 200
        assert json.loads(await treq.content(out))["revoked"] is True
        await until(lambda: not profiler_threads(), timeout_s=5.0)
        assert served_with_token.monitor.profiler.cancelled_total == 1
    finally:
        sock.close()
