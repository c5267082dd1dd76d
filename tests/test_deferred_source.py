"""Twisted's ``_startRunCallbacks`` recompiled with the first-firing count inside it."""

from __future__ import annotations

import dis
import functools
import importlib.util
import linecache
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from dashboard.probes import deferreds
from dashboard.probes.base import ProbeErrors
from dashboard.probes.deferred_source import bind_first_fire, with_first_fire
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

    def raising_line(start: Any) -> tuple[str, int | None, int | None, int | None]:
        monkeypatch.setattr(defer.Deferred, "_startRunCallbacks", start)
        d = defer.Deferred[None]()
        d.callback(None)
        try:
            d.callback(None)
        except defer.AlreadyCalledError as exc:
            last = traceback.extract_tb(exc.__traceback__)[-1]
            return last.filename, last.lineno, last.colno, last.end_colno  # carets alike
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


def _own_name(self: Any, result: object) -> None:
    self.called = True
    self.result = _own_name  # the module's function: the closure would bind it otherwise


def _hook_parameter(self: Any, result: object, _rd_hook: object = None) -> None:
    self.called = True


def _hook_global(self: Any, result: object) -> None:
    global _rd_hook
    self.called = True


def _private_parameter(self: Any, result: object, __flag: bool = False) -> None:
    self.called = True


class Shapes:
    """Methods as Twisted's are: indented in a class body."""

    MARK = object()

    def text(self, result: object, how: object = MARK) -> None:
        self.words = """first
        second"""  # not dedented: the literal is unchanged
        self.called = True
        self.how = how  # a default naming a class attribute: never evaluated again


def test_it_declines_what_would_not_compile_alike() -> None:
    assert with_first_fire(_plain, print) is not None
    declined: tuple[Callable[..., None], ...] = (_private, _zero_argument_super, _twice)
    declined += (_never, _nested, _own_name)
    declined += (_hook_parameter, _hook_global, _private_parameter)
    for start in declined:
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


def test_a_class_method_keeps_its_literals_defaults_and_columns() -> None:
    seen: list[object] = []
    new = with_first_fire(Shapes.text, seen.append)
    assert new is not None
    assert new.__defaults__ is Shapes.text.__defaults__
    obj = Shapes()
    new(obj, None)
    assert seen == [obj]
    assert obj.words == "first\n        second"
    assert obj.how is Shapes.MARK
    # every instruction of the original keeps its line and columns (tracebacks' carets)
    original = {i.positions for i in dis.get_instructions(Shapes.text)}
    assert original <= {i.positions for i in dis.get_instructions(new)}


def test_a_wrapper_is_not_read_through_its_wrapped(monkeypatch: pytest.MonkeyPatch) -> None:
    """A third party's ``functools.wraps`` wrapper names Twisted's method as ``__wrapped__``:
    the probe must wrap the wrapper, not recompile Twisted's source in its place."""
    traced: list[object] = []

    @functools.wraps(ORIGINAL)
    def traced_start(self: Any, result: object) -> None:
        traced.append(result)
        ORIGINAL(self, result)

    assert with_first_fire(traced_start, print) is None
    monkeypatch.setattr(defer.Deferred, "_startRunCallbacks", traced_start)
    clock = Clock()
    probe = DeferredsProbe(clock, ProbeErrors(), clock.seconds)
    probe.install()
    try:
        assert probe.fire_hook == "wrapper"
        d = defer.Deferred[str]()
        d.callback("x")
        with pytest.raises(defer.AlreadyCalledError):
            d.callback("y")
        assert traced == ["x", "y"]
        assert probe.collect()["pending"] == 0
    finally:
        probe.uninstall()


def test_a_source_changed_on_disk_is_not_compiled(tmp_path: Path) -> None:
    """The file is read again to recompile; if it is no longer the code running, decline."""
    path = tmp_path / "changing.py"
    path.write_text("def start(self, result):\n    self.called = True\n    self.v = 1\n")
    spec = importlib.util.spec_from_file_location("changing", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert with_first_fire(module.start, print) is not None
    path.write_text("def start(self, result):\n    self.called = True\n    self.v = 'two'\n")
    linecache.checkcache(str(path))
    assert with_first_fire(module.start, print) is None


def site_totals(probe: DeferredsProbe) -> tuple[int, int]:
    """(created, fired) over the probe's sites, read without a sweep."""
    sites = probe._sites_by_line.values()
    return sum(s.created for s in sites), sum(s.fired for s in sites)


def test_a_second_probe_counts_through_the_first(errors: ProbeErrors, accelerate: bool) -> None:
    """The second probe finds the first's methods in place: it reads their own source (not
    Twisted's, through ``__wrapped__``), so it calls them, and both count every Deferred.
    (Fired before any sweep: both probes keep a promoted Deferred's reference in the same
    attribute, so the later one's promotion wins; a known limit of two at once.)"""
    clock = Clock()
    first = DeferredsProbe(clock, errors, clock.seconds, accelerate=accelerate)
    second = DeferredsProbe(clock, errors, clock.seconds, accelerate=accelerate)
    first.install()
    second.install()
    try:
        assert second.fire_hook == "wrapper"  # the first's method has a closure
        made = [defer.Deferred[None]() for _ in range(3)]
        assert [site_totals(p) for p in (first, second)] == [(3, 0), (3, 0)]
        for d in made:
            d.callback(None)
        assert [site_totals(p) for p in (first, second)] == [(3, 3), (3, 3)]
        assert [p.collect()["pending"] for p in (first, second)] == [0, 0]
    finally:
        second.uninstall()
        first.uninstall()
    assert vars(defer.Deferred)["_startRunCallbacks"] is ORIGINAL
    assert errors.counts == {}


def test_the_count_can_be_bound_after_compiling(monkeypatch: pytest.MonkeyPatch) -> None:
    """The probe compiles first (the compiled Tracker needs the new code object among the
    frames it skips) and binds the count afterwards."""
    before: list[object] = []
    start = with_first_fire(ORIGINAL, before.append)
    assert start is not None
    code = start.__code__
    after: list[object] = []
    bind_first_fire(start, after.append)
    assert start.__code__ is code
    monkeypatch.setattr(defer.Deferred, "_startRunCallbacks", start)
    d = defer.Deferred[None]()
    d.callback(None)
    assert (before, after) == ([], [d])
    with pytest.raises(TypeError):
        bind_first_fire(ORIGINAL, after.append)  # not one of with_first_fire's
