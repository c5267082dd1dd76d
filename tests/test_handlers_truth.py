"""Busy time by handler tells the truth on the real reactor (``--reactor=default|asyncio``):
a 20 ms callback ten times a second reads 0.20; a known mix of a LoopingCall and a protocol
fed over loopback reads its known shares by name; the shares of an otherwise idle loop sum to
its busy share; install and uninstall leave the reactor as it was."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

import pytest
import pytest_twisted
from twisted.internet import defer, task
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater

from dashboard import accel
from dashboard.monitor import Monitor
from dashboard.probes.base import ProbeErrors, own_attribute
from dashboard.probes.loop import HANDLERS_BY_DEFAULT, LoopProbe, between_work_codes

_F = TypeVar("_F", bound=Callable[..., Any])

WINDOW_S = 3.0
HERE = "tests.test_handlers_truth"


def async_test(func: _F) -> _F:
    return cast(_F, pytest_twisted.ensureDeferred(func))


def the_reactor() -> Any:
    from twisted.internet import reactor

    return reactor


#: (who, started, ended) of every burn, the reactor clock's seconds: what each really took
#: (on a loaded machine a burn overshoots when the process is descheduled at its end)
BURNS: list[tuple[str, float, float]] = []


def burn(seconds: float, who: str) -> None:
    """Hold the loop for ``seconds`` of wall time."""
    started = time.time()
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    BURNS.append((who, started, time.time()))


def burn_20ms() -> None:
    burn(0.020, "loop")


def burn_10ms() -> None:
    burn(0.010, "loop")


class Burner(Protocol):
    """8 ms of work per newline-ended message."""

    def dataReceived(self, data: bytes) -> None:
        for _ in range(data.count(b"\n")):
            burn(0.008, "protocol")


def overshoot(who: str, nominal_s: float, per_s: float) -> float:
    """How much more than ``nominal_s`` ``who``'s burns took on average, as a share of the
    loop at ``per_s`` burns a second (0 on an idle machine; under load a burn ends late when
    the process is descheduled at its end, and the loop really was held that long)."""
    took = [end - begin for name, begin, end in BURNS if name == who]
    return max(0.0, (sum(took) / len(took) - nominal_s) * per_s) if took else 0.0


def measured_share(who: str, section: dict[str, Any], now: float) -> float:
    """The share ``who``'s burns really took in the section's window (ending at ``now``)."""
    start = now - section["handlers_window_s"]
    busy = sum(end - begin for name, begin, end in BURNS if name == who and begin >= start)
    return float(busy / section["handlers_window_s"])


def by_name(section: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["handler"]: row for row in section["handlers"]}


async def run_for(reactor: Any, seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


def probe_on(reactor: Any, errors: ProbeErrors, accelerate: bool) -> LoopProbe:
    probe = LoopProbe(
        reactor,
        errors,
        reactor.seconds,
        handlers=True,
        handlers_window_s=WINDOW_S,
        accelerate=accelerate,
    )
    probe.install()
    assert probe.handlers is not None
    assert (probe.handlers.timer is not None) is accelerate
    return probe


@async_test
async def test_a_20ms_callback_ten_times_a_second_reads_0_20(accelerate: bool) -> None:
    reactor = the_reactor()
    errors = ProbeErrors()
    probe = probe_on(reactor, errors, accelerate)
    loop = task.LoopingCall(burn_20ms)
    try:
        await run_for(reactor, 0.05)
        probe.collect()  # the window starts after the first wait
        loop.start(0.1, now=False)
        BURNS.clear()
        for _ in range(4):
            await run_for(reactor, 1.0)
            section = probe.collect()
            now = time.time()
    finally:
        if loop.running:
            loop.stop()
        probe.uninstall()
    rows = by_name(section)
    row = rows[f"{HERE}.burn_20ms (LoopingCall)"]
    assert row["share"] == pytest.approx(measured_share("loop", section, now), abs=0.02)
    assert section["handlers_window_s"] == pytest.approx(WINDOW_S, abs=1.2)
    late = overshoot("loop", 0.020, 10)
    assert row["share"] == pytest.approx(0.20, abs=0.03 + late)
    assert row["calls_per_s"] == pytest.approx(10, abs=1.5)
    assert row["mean_ms"] == pytest.approx(20.0, abs=3.0 + late * 100)
    assert row["max_ms"] >= 19.9
    assert section["handlers"][0] is row or row["share"] >= section["handlers"][0]["share"]
    total = sum(r["share"] for r in section["handlers"]) + section["handlers_other"]["share"]
    busy = section["handlers_busy_ratio"]
    assert busy is not None
    assert total == pytest.approx(busy, abs=0.03)
    assert total <= busy + 0.005  # what the reactor calls is inside its busy time
    assert errors.counts == {}


FEEDER = """
import socket, sys, time
sock = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
next_at = time.monotonic()
end = next_at + float(sys.argv[2])
while next_at < end:
    sock.sendall(b"message\\n")
    next_at += 0.08
    time.sleep(max(0.0, next_at - time.monotonic()))
sock.close()
"""


@async_test
async def test_a_known_mix_gives_its_known_shares_by_name(accelerate: bool) -> None:
    """A 10 ms LoopingCall at 10 Hz (0.10) and a protocol burning 8 ms per message, fed 12.5
    messages a second over loopback by another process (0.10; a thread of this one would
    hold the loop up taking the GIL back)."""
    reactor = the_reactor()
    errors = ProbeErrors()
    port = reactor.listenTCP(0, Factory.forProtocol(Burner), interface="127.0.0.1")
    probe = probe_on(reactor, errors, accelerate)
    loop = task.LoopingCall(burn_10ms)
    feeder = None
    try:
        await run_for(reactor, 0.05)
        probe.collect()
        loop.start(0.1, now=False)
        feeder = subprocess.Popen(
            [sys.executable, "-c", FEEDER, str(port.getHost().port), "6"],
            stdin=subprocess.DEVNULL,
        )
        await run_for(reactor, 1.0)  # the feeder connected and sends
        probe.collect()
        BURNS.clear()
        for _ in range(3):
            await run_for(reactor, 1.0)
            section = probe.collect()
            now = time.time()
    finally:
        if loop.running:
            loop.stop()
        probe.uninstall()
        if feeder is not None:
            feeder.kill()
            feeder.wait(10)
        await port.stopListening()
    rows = by_name(section)
    looping = rows[f"{HERE}.burn_10ms (LoopingCall)"]
    protocol = rows[f"{HERE}.Burner.dataReceived"]
    # each as its own burns measured it, and near the nominal 0.10 (a loaded machine
    # stretches a burn by a millisecond or two: the loop was held that long)
    assert looping["share"] == pytest.approx(measured_share("loop", section, now), abs=0.02)
    assert protocol["share"] == pytest.approx(measured_share("protocol", section, now), abs=0.02)
    assert looping["share"] == pytest.approx(0.10, abs=0.03 + overshoot("loop", 0.010, 10))
    late = overshoot("protocol", 0.008, 12.5)
    assert protocol["share"] == pytest.approx(0.10, abs=0.03 + late)
    assert protocol["calls_per_s"] == pytest.approx(12.5, abs=2)
    assert protocol["own"] is False and looping["own"] is False
    total = sum(r["share"] for r in section["handlers"]) + section["handlers_other"]["share"]
    assert total == pytest.approx(section["handlers_busy_ratio"], abs=0.03)
    assert errors.counts == {}


@async_test
async def test_uninstall_puts_back_the_very_same_objects(accelerate: bool) -> None:
    reactor = the_reactor()
    names = ("runUntilCurrent", "_doReadOrWrite", "_readOrWrite")
    missing = object()
    before = {name: own_attribute(reactor, name, missing) for name in names}
    probe = probe_on(reactor, ProbeErrors(), accelerate)
    try:
        hooked = {name: own_attribute(reactor, name, missing) for name in names}
        assert probe.handlers is not None
        assert "runUntilCurrent" in probe.handlers.hooks  # recompiled, not the fallback
        assert hooked["runUntilCurrent"] is not before["runUntilCurrent"]
        await run_for(reactor, 0.05)
    finally:
        probe.uninstall()
    after = {name: own_attribute(reactor, name, missing) for name in names}
    assert after == before
    assert all(after[name] is before[name] for name in names)


@async_test
async def test_asyncio_descriptors_go_back_to_the_reactors_own_method(accelerate: bool) -> None:
    reactor = the_reactor()
    loop = getattr(reactor, "_asyncioEventloop", None)
    port = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
    probe = probe_on(reactor, ProbeErrors(), accelerate)

    own = getattr(type(reactor), "_readOrWrite", None)

    def methods() -> set[str]:
        """What each registered descriptor's callback runs: "own" (the reactor's method),
        "hooked" (the recompiled method, or the wrapper where it is not recompiled)."""
        found: set[str] = set()
        assert loop is not None
        for key in loop._selector.get_map().values():
            for handle in key.data:
                if handle is not None and len(handle._args) >= 2:
                    method = handle._args[1]
                    found.add("own" if getattr(method, "__func__", None) is own else "hooked")
        return found

    try:
        hooked = methods() if loop is not None else set()
    finally:
        probe.uninstall()
        unhooked = methods() if loop is not None else set()
        await port.stopListening()
    if loop is None:
        assert probe.handlers is not None and probe.handlers.hooks == []  # uninstalled
        return
    assert hooked == {"hooked"}
    assert unhooked == {"own"}


@async_test
async def test_the_recompiled_loop_method_counts_as_the_reactors_own_loop(accelerate: bool) -> None:
    """A stack the watchdog takes after a blocking call returned ends in the recompiled
    ``runUntilCurrent``: it must be known as the reactor's loop (a late stack)."""
    reactor = the_reactor()
    probe = probe_on(reactor, ProbeErrors(), accelerate)
    seen: list[list[bool]] = []
    try:
        codes = between_work_codes(reactor)
        hooked = reactor.runUntilCurrent.__func__.__code__

        def callback() -> None:
            frame: Any = sys._getframe()
            runs_it = False
            while frame is not None:
                runs_it = runs_it or frame.f_code is hooked
                frame = frame.f_back
            seen.append([runs_it, hooked in codes])

        await deferLater(reactor, 0.01, callback)
        assert probe.watchdog is not None and hooked in probe.watchdog.between_work
    finally:
        probe.uninstall()
    assert seen == [[True, True]]


@async_test
async def test_a_cancel_from_a_delayed_call_is_still_a_timeout(
    accelerate: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The timeouts probe reads the running delayed call from the recompiled method's frame."""
    monkeypatch.setenv(accel.ENV, "1" if accelerate else "0")
    reactor = the_reactor()
    monitor = Monitor(reactor, interval=10.0, handlers=True)
    monitor.start()
    try:
        d: defer.Deferred[None] = defer.Deferred()
        d.addErrback(lambda failure: None)
        reactor.callLater(0.01, d.cancel)
        await run_for(reactor, 0.1)
        fired = monitor.snapshot()["timeouts"]["fired_total"]
    finally:
        monitor.stop()
    assert fired["deferred"] == 1


@async_test
async def test_the_dashboards_own_handlers_are_marked(
    accelerate: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(accel.ENV, "1" if accelerate else "0")
    reactor = the_reactor()
    monitor = Monitor(reactor, interval=0.1, handlers=True)
    monitor.start()
    try:
        await run_for(reactor, 0.35)
        rows = by_name(monitor.snapshot()["loop"])
    finally:
        monitor.stop()
    assert rows["dashboard.monitor.Monitor._tick"]["own"] is True
    assert rows["dashboard.monitor.Monitor._tick"]["calls"] >= 2


@async_test
async def test_on_by_default_where_compiled_off_in_pure_python(
    accelerate: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default (``Monitor(handlers=None)``): on where the accelerator runs on a CPython
    whose cost was measured within budget (3.11: a Klein hello request 0.3-0.4% slower), off
    on the pure-Python path (a reactor iteration 1.33x) and on 3.13 (1.3-1.6%), with nothing
    hooked and the reason in the snapshot; ``handlers=False`` is off everywhere."""
    monkeypatch.setenv(accel.ENV, "1" if accelerate else "0")
    reactor = the_reactor()
    missing = object()
    before = own_attribute(reactor, "runUntilCurrent", missing)
    for handlers in (None, False):
        monitor = Monitor(reactor, interval=10.0, handlers=handlers)
        monitor.start()
        try:
            assert monitor.loop.accelerated is accelerate
            hooked = own_attribute(reactor, "runUntilCurrent", missing) is not before
            await run_for(reactor, 0.05)
            loop = monitor.snapshot()["loop"]
        finally:
            monitor.stop()
        assert own_attribute(reactor, "runUntilCurrent", missing) is before
        by_default = sys.version_info[:2] in HANDLERS_BY_DEFAULT
        on = handlers is None and accelerate and by_default
        assert hooked is on
        if on:
            assert isinstance(loop["handlers"], list) and loop["handlers_off_reason"] is None
            assert loop["handler_hooks"][0] == "runUntilCurrent"
        else:
            assert loop["handlers"] is None and loop["handlers_other"] is None
            reason = loop["handlers_off_reason"]
            if handlers is False:
                assert reason.startswith("switched off")
            elif not accelerate:
                assert "the pure-Python path" in reason
            else:
                assert reason.startswith(f"off by default on Python {sys.version_info[0]}.")
