"""Each hot-path section of a snapshot says why it runs pure Python (issue 14):
``hot_path_reason`` is null on the compiled path and one line otherwise."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock

from dashboard import accel
from dashboard.monitor import Monitor
from dashboard.probes.base import ProbeErrors
from dashboard.probes.connections import ConnectionsProbe
from dashboard.probes.deferreds import DeferredsProbe
from dashboard.probes.loop import LoopProbe
from tests.accel_support import require_accelerator

SECTIONS = ("loop", "deferreds", "connections")


def probes(accelerate: bool | None) -> list[Any]:
    """The three probes with a hot path, made (not installed) as the Monitor makes them."""
    clock = Clock()
    errors = ProbeErrors()
    return [
        LoopProbe(MemoryReactorClock(), errors, clock.seconds, accelerate=accelerate),
        DeferredsProbe(clock, errors, clock.seconds, accelerate=accelerate),
        ConnectionsProbe(MemoryReactorClock(), errors, clock.seconds, accelerate=accelerate),
    ]


def sections(monitor: Monitor) -> list[tuple[str, str | None]]:
    data = monitor.sample().data
    return [(data[name]["hot_path"], data[name]["hot_path_reason"]) for name in SECTIONS]


def test_each_hot_path_says_why_it_is_python(accelerate: bool) -> None:
    """The fixture's compiled variant: no reason; its Python variant: asked for."""
    reasons = [p.hot_path_reason for p in probes(accelerate)]
    if accelerate:
        assert reasons == [None, None, None]
    else:
        assert reasons == ["the pure-Python path was asked for (accelerate=False)"] * 3


def test_a_snapshot_says_compiled_and_no_reason_where_the_build_made_it(
    clocked: tuple[Monitor, MemoryReactorClock],
) -> None:
    if not accel.expected():
        pytest.skip(f"no accelerator on this interpreter: {accel.interpreter_reason()}")
    monitor, _ = clocked
    assert accel.enabled(), f"the accelerator should be in use here: {accel.absent_reason()}"
    assert sections(monitor) == [("compiled", None)] * 3


def test_a_snapshot_says_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """``REACTOR_DASHBOARD_ACCEL=0`` when the Monitor is made: every section says so."""
    if not accel.expected():
        pytest.skip(f"no accelerator on this interpreter: {accel.interpreter_reason()}")
    monkeypatch.setenv(accel.ENV, "0")
    monitor = Monitor(MemoryReactorClock(), interval=1.0, history=5)
    monitor.start()
    try:
        line = "switched off (REACTOR_DASHBOARD_ACCEL=0)"
        assert sections(monitor) == [("python", line)] * 3
    finally:
        monitor.stop()


def test_a_fresh_process_without_the_extension_says_it_was_not_built() -> None:
    """The extension made unimportable before ``dashboard`` is: all three sections Python,
    each naming the reason the user would see after a failed compile (or its interpreter's
    own, where none is built)."""
    program = (
        "import sys\n"
        "sys.modules['dashboard._accel'] = None\n"  # import fails, as when never built
        "from dashboard.monitor import Monitor\n"
        "from dashboard.testing import global_reactor\n"
        "m = Monitor(global_reactor()); m.start()\n"
        "d = m.sample().data\n"
        "for k in ('loop', 'deferreds', 'connections'):\n"
        "    print(k, d[k]['hot_path'], d[k]['hot_path_reason'])\n"
        "m.stop()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, accel.ENV: "1"},
    )
    assert done.returncode == 0, done.stderr
    reason = accel.interpreter_reason() or "not built at install (no compiler or Python headers?)"
    assert done.stdout.splitlines() == [f"{k} python {reason}" for k in SECTIONS]


def test_the_reasons_a_user_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accel, "built", None)
    monkeypatch.setattr(accel, "_stale_abi", "8")
    assert accel.absent_reason() == f"a stale build (ABI 8, this code needs {accel.ABI}): reinstall"
    monkeypatch.setattr(accel, "_stale_abi", None)
    monkeypatch.setattr(accel, "interpreter_reason", lambda: "Python 3.15 is not supported")
    assert accel.absent_reason() == "Python 3.15 is not supported"
    # what the probes say, built after that
    assert [p.hot_path_reason for p in probes(None)] == ["Python 3.15 is not supported"] * 3
    assert accel.hot_path_reason(None, True) is None
    assert accel.hot_path_reason(False, False) == (
        "the pure-Python path was asked for (accelerate=False)"
    )


def test_the_deferreds_probe_names_its_own_reason_when_its_counters_were_made_pure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The accelerator in use, but the site counters' base class was chosen at import with
    the switch off: the probe says that, not a generic line."""
    if not accel.expected():
        pytest.skip(f"no accelerator on this interpreter: {accel.interpreter_reason()}")
    from dashboard.probes import deferreds

    monkeypatch.setattr(deferreds, "COMPILED_COUNTS", False)
    clock = Clock()
    probe = DeferredsProbe(clock, ProbeErrors(), clock.seconds)
    assert (probe.accelerated, probe.hot_path_reason) == (
        False,
        "the site counters were made pure Python at import (REACTOR_DASHBOARD_ACCEL=0 then)",
    )


def test_a_compiled_test_is_skipped_with_the_reason_only_where_no_build_can_exist(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``accelerate``'s compiled variant (and every test of a compiled path): skipped where
    the interpreter cannot have the extension, failed where it should and does not."""
    monkeypatch.setattr(accel, "built", None)
    monkeypatch.setattr(accel, "_stale_abi", None)
    monkeypatch.setattr(accel, "interpreter_reason", lambda: "Python 3.15 is not supported")
    with pytest.raises(pytest.skip.Exception) as skipped:
        require_accelerator()
    assert (
        str(skipped.value) == "no compiled path on this interpreter: Python 3.15 is not supported"
    )
    monkeypatch.setattr(accel, "interpreter_reason", lambda: None)  # a supported interpreter
    with pytest.raises(pytest.fail.Exception) as failed:
        require_accelerator()
    assert str(failed.value) == (
        "dashboard._accel should be in use on this interpreter and is not: "
        "not built at install (no compiler or Python headers?)"
    )
    monkeypatch.setattr(accel, "built", object())
    monkeypatch.setenv(accel.ENV, "0")
    with pytest.raises(pytest.fail.Exception, match=r"is not: switched off"):
        require_accelerator()
    monkeypatch.setenv(accel.ENV, "1")
    assert require_accelerator() is accel.built
