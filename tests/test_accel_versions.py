"""The compiled hot paths and the recompiled fire path on every CPython the build supports,
and the build's honest fallback everywhere else (issue 14)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any, cast

import pytest
from twisted.internet import defer

import hatch_build
from dashboard import accel
from dashboard.probes.deferred_source import _program, with_first_fire

ROOT = Path(__file__).resolve().parent.parent
FRAMES = ROOT / "dashboard" / "accel_frames"

#: A method shaped as Twisted's ``_startRunCallbacks`` that calls a function of a module its
#: file imports: 3.13 compiles that call as LOAD_ATTR + PUSH_NULL (a plain attribute load of
#: an imported name), not as the method load it compiles in a module that does not import it.
IMPORTING_MODULE = """
import traceback


class Fires:
    called = False
    debug = True

    def _startRunCallbacks(self, result):
        if self.called:
            raise RuntimeError("already called")
        if self.debug:
            self.stack = traceback.format_stack()
        self.called = True
        self.result = result
"""


def load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def ops(func: Any) -> list[str]:
    """The instructions' names, as the recompile check compares them (3.11's LOAD_METHOD
    named LOAD_ATTR, as 3.12 names it)."""
    return [op for op, _, _ in _program(func.__code__)]


def is_subsequence(short: list[str], long: list[str]) -> bool:
    rest = iter(long)
    return all(op in rest for op in short)


def test_twisteds_fire_path_is_recompiled_on_this_python() -> None:
    """Twisted's own ``_startRunCallbacks`` (its module imports ``traceback`` and calls
    ``traceback.format_stack()``) compiles alike outside its class on this version."""
    seen: list[object] = []
    start = with_first_fire(defer.Deferred._startRunCallbacks, seen.append)
    assert start is not None, f"not recompiled on {sys.version}"
    assert is_subsequence(ops(defer.Deferred._startRunCallbacks), ops(start))


def test_a_method_calling_a_module_its_file_imports_is_recompiled(tmp_path: Path) -> None:
    path = tmp_path / "importing_module.py"
    path.write_text(IMPORTING_MODULE)
    module = load(path, "importing_module")
    original = module.Fires._startRunCallbacks
    seen: list[object] = []
    start = with_first_fire(original, seen.append)
    assert start is not None
    # everything the original runs is in it, in order (on 3.13: LOAD_ATTR, PUSH_NULL)
    assert is_subsequence(ops(original), ops(start))
    fires = module.Fires()
    start(fires, 7)
    assert seen == [fires]
    assert (fires.called, fires.result) == (True, 7)
    assert any("test_accel_versions.py" in line for line in fires.stack)
    with pytest.raises(RuntimeError) as raised:
        start(fires, 8)
    last = traceback.extract_tb(raised.value.__traceback__)[-1]
    assert (last.filename, last.lineno) == (str(path), 11)  # its file's line, as before
    assert seen == [fires]


def test_the_monitor_runs_compiled_and_recompiled_where_the_build_makes_the_accelerator() -> None:
    """In a fresh process (the accelerator's choice is made at import): all three probes on
    the compiled hot path, the first firing counted by Twisted's recompiled method."""
    if not accel.expected():
        pytest.skip(f"no accelerator on this interpreter: {accel.interpreter_reason()}")
    program = (
        "from dashboard.monitor import Monitor\n"
        "from dashboard.testing import global_reactor\n"
        "from dashboard import accel\n"
        "m = Monitor(global_reactor()); m.start()\n"
        "d = m.sample().data\n"
        "print([d[k]['hot_path'] for k in ('loop', 'deferreds', 'connections')],"
        " m.deferreds.fire_hook, accel.absent_reason())\n"
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
    assert done.stdout.split("\n")[-2] == "['compiled', 'compiled', 'compiled'] recompiled None"


def test_the_build_and_the_runtime_agree_on_the_versions() -> None:
    assert accel.SUPPORTED_VERSIONS == hatch_build.SUPPORTED_VERSIONS
    assert accel.UNTESTED_VERSIONS == hatch_build.UNTESTED_VERSIONS
    # every version the build may compile has its header, and the selector names it
    selector = (FRAMES / "frames.h").read_text()
    for major, minor in hatch_build.SUPPORTED_VERSIONS + hatch_build.UNTESTED_VERSIONS:
        assert (FRAMES / f"py{major}{minor}.h").is_file()
        assert f'#include "py{major}{minor}.h"' in selector
        lower, upper = f"0x03{minor:02X}0000", f"0x03{minor + 1:02X}0000"
        assert f"PY_VERSION_HEX >= {lower} && PY_VERSION_HEX < {upper}" in selector


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"version": (3, 11)}, None),
        ({"version": (3, 12)}, None),
        ({"version": (3, 13)}, None),
        (
            {"version": (3, 14)},
            "Python 3.14 support is written but untested "
            "(set REACTOR_DASHBOARD_ACCEL_UNTESTED=1 to build it)",
        ),
        ({"version": (3, 14), "environ": {"REACTOR_DASHBOARD_ACCEL_UNTESTED": "1"}}, None),
        ({"version": (3, 15)}, "Python 3.15 is not supported (only 3.11, 3.12, 3.13)"),
        ({"version": (3, 10)}, "Python 3.10 is not supported (only 3.11, 3.12, 3.13)"),
        (
            {"version": (3, 13), "free_threaded": True},
            "Python 3.13 is a free-threaded build (the extension assumes the GIL)",
        ),
        ({"implementation": "pypy"}, "not CPython (pypy)"),
    ],
)
def test_which_interpreters_the_build_makes_the_accelerator_on(
    kwargs: dict[str, Any], expected: str | None
) -> None:
    args: dict[str, Any] = {
        "implementation": "cpython",
        "version": (3, 13),
        "free_threaded": False,
        "environ": {},
    }
    assert hatch_build._unsupported_reason(**{**args, **kwargs}) == expected


class App:
    """Hatchling's Application, as far as the hook uses it."""

    def __init__(self) -> None:
        self.said: list[tuple[str, str]] = []

    def display_info(self, message: str) -> None:
        self.said.append(("info", message))

    def display_warning(self, message: str) -> None:
        self.said.append(("warning", message))


def hook(root: Path, app: App) -> hatch_build.AccelBuildHook:
    """The hook as hatchling makes it, with what ``initialize`` reads: root, target, app."""
    unused: Any = None
    return hatch_build.AccelBuildHook(
        str(root), {}, unused, unused, str(root / "dist"), "wheel", cast(Any, app)
    )


def test_an_unsupported_interpreter_gets_a_pure_wheel_and_one_line_on_the_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    terminal = tmp_path / "tty"
    monkeypatch.setattr(hatch_build, "TERMINAL", str(terminal))
    monkeypatch.setattr(hatch_build, "_unsupported_reason", lambda: "Python 3.15 is not supported")
    app = App()
    build_data: dict[str, Any] = {"force_include": {}}
    hook(ROOT, app).initialize("standard", build_data)
    assert build_data == {"force_include": {}}  # pure: nothing added, not re-tagged
    line = (
        "reactor-dashboard: the optional C accelerator dashboard._accel not built: Python 3.15 "
        "is not supported; the probes run pure Python (same figures, slower hot paths)\n"
    )
    assert terminal.read_text() == line
    assert app.said == [("warning", "WARNING " + line.rstrip())]


def test_a_failed_compile_gets_a_pure_wheel_one_line_and_the_details_in_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    terminal = tmp_path / "tty"
    monkeypatch.setattr(hatch_build, "TERMINAL", str(terminal))
    monkeypatch.setattr(hatch_build, "_unsupported_reason", lambda: None)
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    (tmp_path / "dashboard" / "accel_frames").mkdir(parents=True)
    (tmp_path / "dashboard" / "accel_frames" / "frames.h").write_text("")
    (tmp_path / "dashboard" / "_accel.c").write_text("int x;\n")
    app = App()
    build_data: dict[str, Any] = {"force_include": {}}
    hook(tmp_path, app).initialize("standard", build_data)
    assert build_data == {"force_include": {}}
    said = terminal.read_text()
    assert said.count("\n") == 1 and "could not be compiled (pip install -v shows why)" in said
    [(kind, message)] = app.said
    assert kind == "warning" and message.startswith("WARNING " + said.rstrip() + "\n$ ")
    assert "no-such-compiler" in message


def compiler() -> list[str]:
    cc = sysconfig.get_config_var("CC") or "cc"
    if shutil.which(str(cc).split()[0]) is None:
        pytest.fail(f"no C compiler ({cc}) where the accelerator is built")
    return str(cc).split()


@pytest.mark.parametrize(
    ("defines", "message"),
    [
        (["-DPY_VERSION_HEX=0x030A0000"], "no frame access written for this CPython version"),
        (["-DPY_VERSION_HEX=0x030F0000"], "no frame access written for this CPython version"),
        (
            ["-DPY_VERSION_HEX=0x030D0000", "-DPy_GIL_DISABLED"],
            "does not support free-threaded CPython builds",
        ),
    ],
)
def test_the_c_source_stops_on_a_version_it_has_no_header_for(
    tmp_path: Path, defines: list[str], message: str
) -> None:
    """Should the build ever try (a version added to the list without its header), the
    compile stops with a message and the build falls back, rather than guessing a layout."""
    stub = tmp_path / "stub.c"
    stub.write_text(f'#include "{FRAMES / "frames.h"}"\n')
    done = subprocess.run(
        [*compiler(), "-E", *defines, str(stub)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    assert message in done.stderr
