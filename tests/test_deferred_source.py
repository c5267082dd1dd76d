"""Twisted's ``_startRunCallbacks`` recompiled with the first-firing count inside it."""

from __future__ import annotations

import traceback
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from dashboard.probes import deferreds
from dashboard.probes.base import ProbeErrors
from dashboard.probes.deferred_source import with_first_fire
from dashboard.probes.deferreds import DeferredsProbe

ORIGINAL = defer.Deferred._startRunCallbacks


def recompiled(seen: list[object]) -> Any:
    start = with_first_fire(ORIGINAL, seen.append)
    assert start is not None
    return start


def test_first_fire_is_called_once_per_deferred_and_only_on_the_first_firing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[object] = []
    monkeypatch.setattr(defer.Deferred, "_startRunCallbacks", recompiled(seen))
    results: list[object] = []
    d = defer.Deferred[int]()
    d.addCallback(results.append)
    d.callback(1)
    with pytest.raises(defer.AlreadyCalledError):
        d.callback(2)
    e = defer.Deferred[None]()
    e.cancel()  # no canceller: errbacks with CancelledError, suppresses one later firing
    e.callback(None)  # suppressed once: no error, no second count
    e.addErrback(lambda _: None)
    failed = defer.Deferred[None]()
    failed.errback(ValueError("x"))
    failed.addErrback(lambda _: None)
    assert seen == [d, e, failed]
    assert results == [1]
    assert (d.called, d.result) == (True, None)


def test_it_runs_in_twisteds_globals_with_twisteds_file_and_lines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A traceback through it names the same file and line as through the original, and a
    global it reads is looked up live in ``twisted.internet.defer``."""

    def raising_line(start: Any) -> tuple[str, int | None]:
        monkeypatch.setattr(defer.Deferred, "_startRunCallbacks", start)
        d = defer.Deferred[None]()
        d.callback(None)
        try:
            d.callback(None)
        except defer.AlreadyCalledError as exc:
            last = traceback.extract_tb(exc.__traceback__)[-1]
            return last.filename, last.lineno
        raise AssertionError("no AlreadyCalledError")

    new = recompiled([])
    assert raising_line(new) == raising_line(ORIGINAL)
    assert raising_line(new)[0] == defer.__file__
    assert new.__code__.co_qualname == "Deferred._startRunCallbacks"
    assert new.__annotations__ == ORIGINAL.__annotations__

    class Replaced(defer.AlreadyCalledError):
        pass

    monkeypatch.setattr(defer.Deferred, "_startRunCallbacks", new)
    monkeypatch.setattr(defer, "AlreadyCalledError", Replaced)
    d = defer.Deferred[None]()
    d.callback(None)
    with pytest.raises(Replaced):
        d.callback(None)


def test_debug_mode_records_the_same_invoker_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    """Twisted cuts its own two frames off the invoker stack; no frame was added."""

    def invoker(start: Any) -> list[str]:
        monkeypatch.setattr(defer.Deferred, "_startRunCallbacks", start)
        defer.setDebugging(True)
        try:
            d = defer.Deferred[None]()
            d.callback(None)  # the last frame recorded is this line
        finally:
            defer.setDebugging(False)
        assert d._debugInfo is not None
        stack = d._debugInfo.invoker
        assert stack is not None
        return stack

    before, after = invoker(ORIGINAL), invoker(recompiled([]))
    assert "d.callback(None)  # the last frame recorded" in after[-1]
    assert len(after) == len(before)


def _plain(self: Any, result: object) -> None:
    self.called = True
    self.result = result


def _private(self: Any, result: object) -> None:
    self.__private = 1
    self.called = True


def _zero_argument_super(self: Any, result: object) -> None:
    super().__init__()  # type: ignore[misc]
    self.called = True


def _twice(self: Any, result: object) -> None:
    self.called = True
    self.called = True


def _never(self: Any, result: object) -> None:
    self.result = result


def _nested(self: Any, result: object) -> None:
    self.called = True
    self.result = lambda: result


def test_it_declines_what_would_not_compile_alike() -> None:
    assert with_first_fire(_plain, print) is not None
    for start in (_private, _zero_argument_super, _twice, _never, _nested):
        assert with_first_fire(start, print) is None, start.__name__
    no_source: dict[str, Any] = {}
    exec("def f(self, result):\n    self.called = True\n", no_source)
    assert with_first_fire(no_source["f"], print) is None
    assert with_first_fire(len, print) is None  # type: ignore[arg-type]

    def closure(self: Any, result: object) -> None:
        self.called = no_source

    assert with_first_fire(closure, print) is None


@pytest.mark.parametrize("fire_hook", ["recompiled", "wrapper"])
def test_counts_are_exact_with_either_fire_hook(
    errors: ProbeErrors, accelerate: bool, fire_hook: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both ways of counting a first firing, on both hot paths: fired in the nursery, fired
    after promotion, fired twice, and dropped unfired."""
    if fire_hook == "wrapper":
        monkeypatch.setattr(deferreds, "with_first_fire", lambda *_: None)
    clock = Clock()
    probe = DeferredsProbe(clock, errors, clock.seconds, accelerate=accelerate)
    probe.install()
    try:
        assert probe.fire_hook == fire_hook
        young = [defer.Deferred[None]() for _ in range(5)]
        probe.sweep()  # promoted: tracked by weak reference from here on
        old = young[:3]
        for d in old:
            d.callback(None)
        fresh = [defer.Deferred[None]() for _ in range(4)]
        fresh[0].callback(None)
        with pytest.raises(defer.AlreadyCalledError):
            fresh[0].callback(None)
        section = probe.collect()
        assert section["created_total"] - section["born_fired_total"] == 9
        assert section["fired_total"] - section["born_fired_total"] == 4
        assert section["pending"] == 5
        del young, old
        probe.sweep()
        assert probe.collect()["unfired_collected_total"] == 2
        for d in fresh[1:]:
            d.callback(None)
        assert probe.collect()["pending"] == 0
    finally:
        probe.uninstall()
    assert vars(defer.Deferred)["_startRunCallbacks"] is ORIGINAL
    assert errors.counts == {}
