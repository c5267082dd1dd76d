# mypy: allow-untyped-calls
"""A block names the program's own line (``where``) and who stalled the loop (``owner``).

Real blocks on the reactor under test (default or ``--reactor=asyncio``), caught by the real
watchdog thread, and :class:`StackOwner` on real frames for the options: a block inside the
standard library names the user's line that called it; one in a library (a temp dir on
``sys.path``, counted as library by the ``library_paths`` option) names its caller; the
dashboard's own work (a Jinja render called by dashboard/web/page.py, a slow snapshot) is
``owner: "dashboard"``, and the program's work that passes through a probe's hook is not.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import sys
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar, cast

import pytest
import pytest_twisted
from twisted.internet import task
from twisted.internet.task import deferLater

from dashboard.monitor import Monitor
from dashboard.probes import process as process_module
from dashboard.probes import stack_owner
from dashboard.probes.base import ProbeErrors, shorten_path
from dashboard.probes.loop import LoopProbe
from dashboard.probes.stack_owner import StackOwner

_F = TypeVar("_F", bound=Callable[..., Any])

BLOCK_S = 0.25
LIBRARY = "h3_slowlib"
LIBRARY_SOURCE = """\
import sys
import time


def crunch(seconds):
    time.sleep(seconds)


def judged(judge):
    return judge(sys._getframe())
"""


def async_test(func: _F) -> _F:
    return cast(_F, pytest_twisted.ensureDeferred(func))


def the_reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def line_of(func: Callable[..., Any], marker: str) -> int:
    """The line number of the one source line of ``func`` that contains ``marker``."""
    lines, first = inspect.getsourcelines(func)
    (index,) = [i for i, line in enumerate(lines) if marker in line]
    return first + index


def site(func: Callable[..., Any], marker: str) -> str:
    """``where`` as the dashboard writes it for that line of ``func``."""
    code = func.__code__
    return f"{shorten_path(code.co_filename)}:{line_of(func, marker)} in {code.co_name}"


async def one_block(read: Callable[[], dict[str, Any]], blocking: Callable[[], object]) -> Any:
    """Run ``blocking`` in a reactor callback; the one block it made (``read()`` is the loop
    section)."""
    reactor = the_reactor()
    await deferLater(reactor, 0.02, lambda: None)  # the first wait has happened
    before = read()["blocks_total"]
    await deferLater(reactor, 0.01, blocking)
    await deferLater(reactor, 0.05, lambda: None)
    section = read()
    assert section["blocks_total"] - before == 1, section["blocks"]
    return section["blocks"][-1]


@pytest.fixture
def slowlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """A library of our own in a temp dir on ``sys.path`` (not site-packages)."""
    (tmp_path / f"{LIBRARY}.py").write_text(LIBRARY_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop(LIBRARY, None)
    try:
        yield importlib.import_module(LIBRARY)
    finally:
        sys.modules.pop(LIBRARY, None)


# where ----------------------------------------------------------------------------------


class Kept:
    """Something to finalize."""


def finalize_slowly() -> None:
    kept = Kept()
    finalizer = weakref.finalize(kept, time.sleep, BLOCK_S)
    finalizer()  # the program's line: the block is inside weakref.py


@async_test
async def test_a_block_inside_the_standard_library_names_the_users_line(
    errors: ProbeErrors, accelerate: bool
) -> None:
    reactor = the_reactor()
    probe = LoopProbe(reactor, errors, reactor.seconds, accelerate=accelerate)
    probe.install()
    try:
        block = await one_block(probe.collect, finalize_slowly)
    finally:
        probe.uninstall()
    stack = block["stack"]
    assert "weakref.py:" in stack[-1] and stack[-1].endswith(" in __call__"), stack
    assert block["where"] == site(finalize_slowly, "finalizer()  #"), block
    assert block["where"] in stack  # one of the stack's own entries, which stays whole
    assert block["owner"] == "program"
    assert errors.counts == {}


@async_test
async def test_a_block_in_a_library_names_its_caller(
    errors: ProbeErrors, accelerate: bool, slowlib: ModuleType, tmp_path: Path
) -> None:
    def parse_page() -> None:
        slowlib.crunch(BLOCK_S)  # the caller

    reactor = the_reactor()
    probe = LoopProbe(
        reactor, errors, reactor.seconds, accelerate=accelerate, library_paths=(str(tmp_path),)
    )
    probe.install()
    try:
        block = await one_block(probe.collect, parse_page)
    finally:
        probe.uninstall()
    assert block["stack"][-1].startswith(f"{tmp_path}/{LIBRARY}.py:"), block["stack"]
    assert block["where"] == site(parse_page, "# the caller"), block
    assert block["owner"] == "program"


def test_stack_owner_options_on_real_frames(slowlib: ModuleType, tmp_path: Path) -> None:
    def through_the_library(owner: StackOwner) -> tuple[str | None, str]:
        return cast(tuple[str | None, str], slowlib.judged(owner.judge))  # the caller

    caller = site(through_the_library, "# the caller")
    inside = (
        f"{tmp_path}/{LIBRARY}.py:{LIBRARY_SOURCE.splitlines().index('def judged(judge):') + 2}"
    )
    library_file = str(tmp_path / f"{LIBRARY}.py")
    cases: list[tuple[dict[str, tuple[str, ...]], str]] = [
        ({}, inside),  # a directory of its own on sys.path: the user's code by default
        ({"library_paths": (str(tmp_path),)}, caller),
        ({"library_paths": (str(tmp_path) + "/",)}, caller),
        ({"library_paths": (library_file,)}, caller),
        ({"library_paths": (LIBRARY,)}, caller),  # a module name
        ({"library_paths": ("h3_slow",)}, inside),  # a module name is not a string prefix
        ({"library_paths": (str(tmp_path),), "user_paths": (LIBRARY,)}, inside),  # claimed back
    ]
    for options, expected in cases:
        where, owner = through_the_library(StackOwner(**options))
        assert where is not None and where.startswith(expected), (options, where)
        assert owner == "program"


def test_the_monitor_options_reach_the_loop_probe(tmp_path: Path) -> None:
    monitor = Monitor(the_reactor(), library_paths=str(tmp_path), user_paths=["mypkg", "/srv/app"])
    owner = monitor.loop.stack_owner
    assert monitor.library_paths == (str(tmp_path),)
    assert (owner.library_paths, owner.library_modules) == ((str(tmp_path),), ())
    assert (owner.user_paths, owner.user_modules) == (("/srv/app",), ("mypkg",))
    with pytest.raises(ValueError, match="a path prefix or a module name"):
        Monitor(the_reactor(), library_paths=("",))


def test_site_packages_is_library_unless_claimed_back(tmp_path: Path) -> None:
    package_dir = tmp_path / "lib" / "site-packages" / "vendorlib"
    package_dir.mkdir(parents=True)
    (package_dir / "__init__.py").write_text(LIBRARY_SOURCE)
    namespace: dict[str, Any] = {"__name__": "vendorlib"}
    exec(compile(LIBRARY_SOURCE, str(package_dir / "__init__.py"), "exec"), namespace)

    def call_vendor(owner: StackOwner) -> tuple[str | None, str]:
        return cast(tuple[str | None, str], namespace["judged"](owner.judge))  # the caller

    where, owner = call_vendor(StackOwner())
    assert where == site(call_vendor, "# the caller")
    assert owner == "program"
    where, _ = call_vendor(StackOwner(user_paths=("vendorlib",)))
    assert where is not None and where.startswith("vendorlib/__init__.py:")
    where, _ = call_vendor(StackOwner(user_paths=(str(package_dir),)))
    assert where is not None and where.startswith("vendorlib/__init__.py:")


def test_the_demo_installed_in_site_packages_is_a_program(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``pip install .`` puts dashboard/demo.py in site-packages: the demo's block must still
    name the demo's line (it named the venv's ``bin/reactor-dashboard`` script)."""
    demo = tmp_path / "lib" / "site-packages" / "dashboard" / "demo.py"
    monkeypatch.setattr(stack_owner, "DEMO_FILE", str(demo))
    source = "import sys\ndef blocking_report():\n    return sys._getframe(0)\n"
    namespace: dict[str, Any] = {"__name__": "dashboard.demo"}
    exec(compile(source, str(demo), "exec"), namespace)
    frame = namespace["blocking_report"]()
    assert StackOwner().judge(frame) == ("dashboard/demo.py:3 in blocking_report", "program")


def test_only_library_frames_name_the_innermost_and_no_frame_names_nothing(
    tmp_path: Path,
) -> None:
    walker: Any = os.walk(tmp_path)  # a suspended generator of the standard library: its
    next(walker)  # frame has no caller, so the stack is the standard library's only
    frame = walker.gi_frame
    assert frame is not None
    where, owner = StackOwner().judge(frame)
    code = frame.f_code
    assert where == f"{code.co_filename}:{frame.f_lineno} in {code.co_name}"
    assert code.co_filename in ("<frozen os>", os.__file__)
    assert owner == "program"
    assert StackOwner().judge(None) == (None, "unknown")  # no stack: not blamed on the program


# owner ----------------------------------------------------------------------------------


class SlowHtml:
    """Rendered by Jinja through ``__html__``: sleeps in C, so no frame of ours is inside."""

    __html__ = staticmethod(functools.partial(time.sleep, BLOCK_S))


@async_test
async def test_a_block_in_jinja_called_by_the_dashboard_is_the_dashboards(
    errors: ProbeErrors, accelerate: bool, tmp_path: Path
) -> None:
    from dashboard.web.page import PageAssets

    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "page.html").write_text("<p>{{ snapshot.value }}</p>\n")
    assets = PageAssets(templates, tmp_path)

    def render() -> bytes:
        return assets.render_page({"value": SlowHtml()}, {})  # the dashboard renders

    reactor = the_reactor()
    probe = LoopProbe(reactor, errors, reactor.seconds, accelerate=accelerate)
    probe.install()
    try:
        block = await one_block(probe.collect, render)
    finally:
        probe.uninstall()
    stack = block["stack"]
    assert any("dashboard/web/page.py:" in frame for frame in stack), stack
    assert any("jinja2/" in frame for frame in stack), stack
    assert block["owner"] == "dashboard", stack
    # Named by the dashboard's own frame, not by the caller (here the test) that ran it.
    (page_frame,) = [frame for frame in stack if "dashboard/web/page.py:" in frame]
    assert page_frame.endswith(" in render_page") and block["where"] == page_frame
    assert site(render, "# the dashboard renders") in stack


@async_test
async def test_a_slow_snapshot_is_the_dashboards(monkeypatch: pytest.MonkeyPatch) -> None:
    reactor = the_reactor()
    monitor = Monitor(reactor, interval=0.05)
    monitor.start()
    try:
        await deferLater(reactor, 0.1, lambda: None)
        before = monitor.snapshot()["loop"]["blocks_total"]
        # The next sample stalls inside the process probe, in C (no frame of the test's).
        monkeypatch.setattr(process_module, "_gc_stats", functools.partial(time.sleep, BLOCK_S))
        await deferLater(reactor, 0.1 + BLOCK_S, lambda: None)
        monkeypatch.undo()
        await deferLater(reactor, 0.05, lambda: None)
        loop = monitor.snapshot()["loop"]
    finally:
        monitor.stop()
    new = loop["blocks_total"] - before
    assert new >= 1, loop["blocks"]
    for block in loop["blocks"][-new:]:  # one per sample taken while it was slow
        assert any("dashboard/monitor.py:" in frame for frame in block["stack"]), block["stack"]
        assert block["stack"][-1].startswith(f"{process_module.__file__}:"), block["stack"]
        assert block["owner"] == "dashboard", block["stack"]
        assert block["where"] == block["stack"][-1], block  # the process probe's frame


@async_test
async def test_the_programs_block_through_a_dashboard_hook_is_the_programs() -> None:
    reactor = the_reactor()
    monitor = Monitor(reactor, interval=5)
    monitor.start()
    calls: list[task.LoopingCall] = []

    def start_polling() -> None:
        # LoopingCall.start runs the first call at once, through the deferreds probe's hook
        # of LoopingCall.start: the program's sleep has Twisted and the hook above it.
        call = task.LoopingCall(time.sleep, BLOCK_S)
        calls.append(call)
        call.start(60)  # the program's line

    try:
        block = await one_block(lambda: monitor.snapshot()["loop"], start_polling)
    finally:
        for call in calls:
            call.stop()
        monitor.stop()
    stack = block["stack"]
    assert stack[-1].startswith("twisted/internet/"), stack  # Twisted called time.sleep
    assert any("dashboard/probes/" in frame for frame in stack), stack
    assert block["owner"] == "program", stack
    assert block["where"] == site(start_polling, "# the program's line")
