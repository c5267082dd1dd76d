"""Hatchling build hook: compile the optional C accelerator ``dashboard._accel``.

The extension is a pure speed-up: ``dashboard`` falls back to pure Python when it cannot be
imported.  So the build never fails because of it:

* it reads CPython's internal frame layout, one header per version in
  ``dashboard/accel_frames/``: CPython 3.11, 3.12 and 3.13 build it (tested); 3.14's header
  is written from CPython's 3.14 sources but has never run, so 3.14 builds it only when
  ``REACTOR_DASHBOARD_ACCEL_UNTESTED=1`` is set; any other interpreter (another version, a
  free-threaded build, not CPython) is skipped and gets a pure wheel;
* any compile or link failure (no compiler, no Python headers, ...) prints a warning and the
  wheel is pure as well.

Whatever the reason for a pure wheel, one line says so, in the build's output and on the
controlling terminal (pip shows a backend's output only with ``-v``); the running probes say
``hot_path: "python"``, and ``dashboard.accel.absent_reason()`` says why.

It is compiled with the running interpreter's own toolchain settings from ``sysconfig`` (CC,
CFLAGS, CCSHARED, INCLUDEPY, LDSHARED, EXT_SUFFIX), honouring the usual CC, LDSHARED, CPPFLAGS,
CFLAGS and LDFLAGS environment overrides like setuptools does; no setuptools needed.

* Normal wheels: built in a temporary directory and added with ``force_include``; the wheel
  is then tagged for this interpreter and platform.
* Editable installs: built straight into the source tree (``dashboard/_accel<EXT_SUFFIX>``,
  git-ignored), where the editable path finds it.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hatchling.builders.config import BuilderConfig
from hatchling.builders.hooks.plugin.interface import BuildHookInterface

PACKAGE = "dashboard"
MODULE = "_accel"
SOURCE = f"{PACKAGE}/{MODULE}.c"
#: The headers the C source includes (one per CPython version), next to it in the sdist.
HEADERS = f"{PACKAGE}/accel_frames"
#: Versions whose frame header has run here, under the whole test suite.
SUPPORTED_VERSIONS = ((3, 11), (3, 12), (3, 13))
#: Versions whose header is written from CPython's sources but has never run: built on request.
UNTESTED_VERSIONS = ((3, 14),)
#: Set to 1 to build on an UNTESTED_VERSIONS interpreter.
UNTESTED_ENV = "REACTOR_DASHBOARD_ACCEL_UNTESTED"
#: Where the fallback line is also written (see AccelBuildHook._fall_back).
TERMINAL = "/dev/tty"
COMMAND_TIMEOUT = 600  # seconds, per compiler / linker call
OUTPUT_TAIL = 4000  # characters of compiler output shown in the warning


class AccelBuildError(Exception):
    """The extension could not be built; the message says why."""


class AccelBuildHook(BuildHookInterface[BuilderConfig]):
    """Compile ``dashboard/_accel.c`` into the wheel (or the source tree when editable)."""

    _tempdir: str | None = None

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel":
            return
        editable = version == "editable"
        reason = _unsupported_reason()
        if reason is not None:
            self._fall_back(f"not built: {reason}")
            return

        source = Path(self.root, SOURCE)
        if not source.is_file() or not Path(self.root, HEADERS, "frames.h").is_file():
            self._fall_back(f"not built: {SOURCE} or {HEADERS}/ not found")
            return

        ext_suffix = str(sysconfig.get_config_var("EXT_SUFFIX"))
        filename = f"{MODULE}{ext_suffix}"
        in_tree = Path(self.root, PACKAGE, filename)
        self._tempdir = tempfile.mkdtemp(prefix="reactor-dashboard-accel-")
        built = Path(self._tempdir, filename)
        try:
            _compile(source, built, Path(self._tempdir))
        except AccelBuildError as exc:
            stale = ""
            if editable and in_tree.exists():
                # Never leave an old binary that no longer matches the C source.
                in_tree.unlink()
                stale = f"; removed the stale {in_tree.relative_to(self.root)}"
            self._fall_back(f"could not be compiled{stale} (pip install -v shows why)", str(exc))
            self._cleanup()
            return

        if editable:
            # Copy next to the target, then rename: atomic, and a process that already
            # loaded the old module keeps its (unlinked) mapping instead of crashing.
            staging = in_tree.with_name(f".{filename}.{os.getpid()}.tmp")
            try:
                shutil.copyfile(built, staging)
                staging.chmod(0o755)
                os.replace(staging, in_tree)
            except OSError as exc:
                staging.unlink(missing_ok=True)
                self._fall_back(f"could not be installed as {in_tree}: {exc}")
            else:
                self._say(f"built {in_tree.relative_to(self.root)} (editable, in the source tree)")
            self._cleanup()
            return

        build_data["force_include"][str(built)] = f"{PACKAGE}/{filename}"
        build_data["pure_python"] = False
        build_data["infer_tag"] = True
        self._say(f"built {PACKAGE}/{filename}")

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        self._cleanup()

    def clean(self, versions: list[str]) -> None:
        # `hatch build --clean`: drop extensions an editable build left in the source tree.
        for path in Path(self.root, PACKAGE).glob(f"{MODULE}.*"):
            if path.suffix in {".so", ".pyd"}:
                path.unlink()

    def _cleanup(self) -> None:
        if self._tempdir is not None:
            shutil.rmtree(self._tempdir, ignore_errors=True)
            self._tempdir = None

    def _say(self, message: str) -> None:
        self.app.display_info(f"[{PACKAGE}.{MODULE}] {message}")

    def _fall_back(self, what: str, detail: str = "") -> None:
        """Say in one line that the probes will run pure Python, and why: in the build's
        output, and on the terminal. A frontend such as pip shows a build backend's output
        only with ``-v`` (or when the build fails, which this never does), so the line is also
        written to the controlling terminal, where there is one."""
        line = (
            f"reactor-dashboard: the optional C accelerator {PACKAGE}.{MODULE} {what}; "
            "the probes run pure Python (same figures, slower hot paths)"
        )
        self.app.display_warning(f"WARNING {line}" + (f"\n{detail}" if detail else ""))
        _to_terminal(line)


def _to_terminal(line: str) -> None:
    """``line`` on the controlling terminal, if there is one; nothing otherwise."""
    try:
        with open(TERMINAL, "w", encoding="utf-8") as tty:
            tty.write(line + "\n")
    except OSError:  # no terminal (CI, a service), or not a Unix
        pass


def _unsupported_reason(
    implementation: str | None = None,
    version: tuple[int, int] | None = None,
    free_threaded: bool | None = None,
    environ: Mapping[str, str] | None = None,
) -> str | None:
    """Why this interpreter (by default the running one) does not get the extension, or None
    if it does. (The rules of ``dashboard.accel.interpreter_reason``, which cannot be
    imported here: tests/test_accel_versions.py checks that their version lists agree.)"""
    implementation = sys.implementation.name if implementation is None else implementation
    version = sys.version_info[:2] if version is None else version
    if free_threaded is None:
        free_threaded = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
    environ = os.environ if environ is None else environ
    if implementation != "cpython":
        return f"not CPython ({implementation})"
    named = f"Python {version[0]}.{version[1]}"
    if free_threaded:
        return f"{named} is a free-threaded build (the extension assumes the GIL)"
    if version in UNTESTED_VERSIONS:
        if environ.get(UNTESTED_ENV) == "1":
            return None
        return f"{named} support is written but untested (set {UNTESTED_ENV}=1 to build it)"
    if version not in SUPPORTED_VERSIONS:
        supported = ", ".join(f"{major}.{minor}" for major, minor in SUPPORTED_VERSIONS)
        return f"{named} is not supported (only {supported})"
    return None


def _config(name: str) -> str:
    value = sysconfig.get_config_var(name)
    return "" if value is None else str(value)


def _toolchain() -> tuple[list[str], list[str]]:
    """The compile command prefix and the link command prefix, setuptools-style."""
    config_cc = _config("CC")
    cc = os.environ.get("CC", config_cc)
    ldshared = _config("LDSHARED")
    if "LDSHARED" in os.environ:
        ldshared = os.environ["LDSHARED"]
    elif "CC" in os.environ and config_cc and ldshared.startswith(config_cc):
        # The configured link command starts with the configured compiler: swap it too.
        ldshared = cc + ldshared[len(config_cc) :]
    if not cc or not ldshared:
        raise AccelBuildError("sysconfig has no CC/LDSHARED (no Unix-style toolchain)")

    include_py = _config("INCLUDEPY")
    if not include_py or not Path(include_py, "Python.h").is_file():
        raise AccelBuildError(f"Python headers not found (INCLUDEPY={include_py!r})")
    includes = ["-I", include_py]
    plat_include = sysconfig.get_path("platinclude")
    if plat_include and plat_include != include_py:
        includes += ["-I", plat_include]

    env_flags = [
        *shlex.split(os.environ.get("CPPFLAGS", "")),
        *shlex.split(os.environ.get("CFLAGS", "")),
    ]
    compile_cmd = [
        *shlex.split(cc),
        *shlex.split(_config("CFLAGS")),
        *shlex.split(_config("CCSHARED")),
        "-O2",
        *env_flags,  # the user's flags come last so they win
        *includes,
    ]
    link_cmd = [
        *shlex.split(ldshared),
        *env_flags,
        *shlex.split(os.environ.get("LDFLAGS", "")),
    ]
    return compile_cmd, link_cmd


def _run(command: list[str]) -> None:
    try:
        result = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise AccelBuildError(f"$ {shlex.join(command)}\n{exc}") from exc
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip()[-OUTPUT_TAIL:]
        raise AccelBuildError(
            f"$ {shlex.join(command)}\nexit status {result.returncode}\n{output}".rstrip()
        )


def _compile(source: Path, target: Path, workdir: Path) -> None:
    """Compile and link ``source`` into the extension module ``target``."""
    compile_cmd, link_cmd = _toolchain()
    obj = workdir / f"{source.stem}.o"
    _run([*compile_cmd, "-c", str(source), "-o", str(obj)])
    _run([*link_cmd, str(obj), "-o", str(target)])
    if not target.is_file():
        raise AccelBuildError(f"the linker reported success but wrote no {target.name}")
