"""The shield that keeps trial's janitor off the dashboard's own timers and port, in process:
trial's real ``_Janitor`` cleaning a real (never run, never installed) reactor."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.selectreactor import SelectReactor
from twisted.trial import reporter, util
from twisted.trial.unittest import SynchronousTestCase

from dashboard.attachment import close_port_now, uninstall_reactor
from dashboard.janitor_shield import JanitorShield, OwnWork, _ImportWatch
from dashboard.probes.base import is_own_module


class Case(SynchronousTestCase):
    def test_nothing(self) -> None:
        pass


def a_test() -> Any:
    """A trial test for the janitor to report about (trial's constructor is untyped)."""
    make: Any = Case
    return make("test_nothing")


def reported(result: reporter.TestResult, index: int) -> Any:
    """The ``DirtyReactorAggregateError`` the janitor reported as error ``index``."""
    failure: Any = result.errors[index][1]
    return failure.value


@pytest.fixture
def reactor() -> Iterator[Any]:
    """A fresh reactor of its own (the test's global one is not touched)."""
    fresh: Any = SelectReactor()
    yield fresh
    for call in fresh.getDelayedCalls():
        call.cancel()
    for port in fresh.removeAll():
        close_port_now(port)
    uninstall_reactor(fresh)  # its waker's descriptors


def listen(reactor: Any) -> Any:
    return reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")


def program_timer() -> None:
    """A function of the program's."""


def test_the_janitor_cleans_the_programs_work_and_leaves_the_dashboards(reactor: Any) -> None:
    own_port, program_port = listen(reactor), listen(reactor)
    own_call = reactor.callLater(60, is_own_module, "a dashboard function")
    site_call = reactor.callLater(60, own_port.factory.doStart)  # a method of its site
    program_call = reactor.callLater(60, program_timer)
    shield = JanitorShield(reactor, OwnWork([own_port]))
    shield.install()
    try:
        result = reporter.TestResult()
        test = a_test()
        assert util._Janitor(test, result, reactor).postCaseCleanup() is False
        assert [call.active() for call in (own_call, site_call, program_call)] == [
            True,
            True,
            False,
        ]
        assert len(result.errors) == 1
        [call] = reported(result, 0).delayedCalls  # the program's timer, and only it
        assert call.startswith(f"<DelayedCall 0x{id(program_call):x} ")
        assert call.endswith(" program_timer()>")

        util._Janitor(test, result, reactor).postClassCleanup()
        readers = reactor.getReaders()
        assert own_port in readers and program_port not in readers
        assert reported(result, 1).selectables == [repr(program_port)]
        assert own_call.active() and site_call.active()
    finally:
        shield.uninstall()


def test_without_the_shield_the_janitor_takes_everything(reactor: Any) -> None:
    # What the shield is for: trial's janitor alone cancels the dashboard's timers too.
    own_port = listen(reactor)
    own_call = reactor.callLater(60, is_own_module, "a dashboard function")
    result = reporter.TestResult()
    util._Janitor(a_test(), result, reactor).postClassCleanup()
    assert not own_call.active()
    assert own_port not in reactor.getReaders()


def test_a_janitor_of_another_reactor_is_left_alone(reactor: Any) -> None:
    other: Any = SelectReactor()
    own_call = other.callLater(60, is_own_module, "x")
    shield = JanitorShield(reactor, OwnWork())
    shield.install()
    try:
        util._Janitor(a_test(), reporter.TestResult(), other).postCaseCleanup()
        assert not own_call.active()  # the shield watches `reactor`, not this one
    finally:
        shield.uninstall()
        uninstall_reactor(other)


def test_uninstall_puts_the_very_same_methods_back(reactor: Any) -> None:
    before = {name: vars(util._Janitor)[name] for name in ("_cleanPending", "_cleanReactor")}
    shield = JanitorShield(reactor, OwnWork())
    shield.install()
    assert shield.patched
    assert vars(util._Janitor)["_cleanPending"] is not before["_cleanPending"]
    shield.uninstall()
    shield.uninstall()  # twice is fine
    assert not shield.patched
    assert {n: vars(util._Janitor)[n] for n in before} == before
    assert all(vars(util._Janitor)[n] is before[n] for n in before)


def test_the_import_watch_runs_after_the_module_and_only_for_it(tmp_path: Path) -> None:
    (tmp_path / "h6_watched_module.py").write_text("VALUE = 42\n")
    (tmp_path / "h6_other_module.py").write_text("VALUE = 7\n")
    seen: list[int] = []
    watch = _ImportWatch("h6_watched_module", lambda module: seen.append(module.VALUE))
    sys.path.insert(0, str(tmp_path))
    sys.meta_path.insert(0, watch)
    try:
        import h6_other_module  # type: ignore[import-not-found]
        import h6_watched_module  # type: ignore[import-not-found]

        assert seen == [42]
        assert h6_watched_module.VALUE == 42 and h6_other_module.VALUE == 7
    finally:
        sys.meta_path.remove(watch)
        sys.path.remove(str(tmp_path))
        for name in ("h6_watched_module", "h6_other_module"):
            sys.modules.pop(name, None)


def test_the_shield_patches_trial_when_trial_is_imported_later(
    reactor: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delitem(sys.modules, "twisted.trial.util")
    shield = JanitorShield(reactor, OwnWork())
    shield.install()
    try:
        assert not shield.patched  # nothing imported trial yet: nothing patched, no import
        assert "twisted.trial.util" not in sys.modules
        import twisted.trial.util as fresh_util

        assert shield.patched
        assert vars(fresh_util._Janitor)["_cleanPending"].__name__ == "_cleanPending"
        assert (
            vars(fresh_util._Janitor)["_cleanPending"] is not vars(util._Janitor)["_cleanPending"]
        )
    finally:
        shield.uninstall()
    assert not any(isinstance(f, _ImportWatch) for f in sys.meta_path)


def test_own_work_tells_the_dashboards_code_from_the_demos() -> None:
    assert is_own_module("dashboard.monitor")
    assert is_own_module("dashboard")
    assert not is_own_module("dashboard.demo")
    assert not is_own_module("dashboards_of_mine")


def test_a_programs_looping_call_start_hooked_by_the_dashboard_is_the_programs(
    reactor: Any,
) -> None:
    # The Deferred probe's hook on LoopingCall.start must not make a program's
    # callLater(5, lc.start, 1.0) look like the dashboard's: trial's janitor reports it.
    from twisted.internet import task

    from dashboard.probes.base import ProbeErrors
    from dashboard.probes.deferreds import DeferredsProbe

    deferreds = DeferredsProbe(reactor, ProbeErrors(), reactor.seconds)
    deferreds.install()
    shield = JanitorShield(reactor, OwnWork())
    shield.install()
    try:
        lc = task.LoopingCall(program_timer)
        lc.clock = reactor
        program_call = reactor.callLater(5, lc.start, 1.0)
        assert not OwnWork().owns_call(program_call)
        result = reporter.TestResult()
        assert util._Janitor(a_test(), result, reactor).postCaseCleanup() is False
        assert not program_call.active()
        [call] = reported(result, 0).delayedCalls
        assert call.startswith(f"<DelayedCall 0x{id(program_call):x} ")
    finally:
        shield.uninstall()
        deferreds.uninstall()
