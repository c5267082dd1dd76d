"""Hatchling build hook: compile the optional C accelerator ``dashboard._accel``.

The extension is a pure speed-up: ``dashboard`` falls back to pure Python when it cannot be
imported.  So the build never fails because of it:

* only CPython 3.11 and 3.12 build it (the C source uses those versions' internal frame
  layout); anything else is skipped with a message and gets a pure wheel;
* any compile or link failure (no compiler, no Python headers, ...) prints a warning and the
  wheel is pure as well.

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
from pathlib import Path
from typing import Any

from hatchling.builders.config import BuilderConfig
from hatchling.builders.hooks.plugin.interface import BuildHookInterface

PACKAGE = "dashboard"
MODULE = "_accel"
SOURCE = f"{PACKAGE}/{MODULE}.c"
SUPPORTED_VERSIONS = ((3, 11), (3, 12))
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
            self._say(f"skipping the optional C extension {PACKAGE}.{MODULE}: {reason}")
            return

        source = Path(self.root, SOURCE)
        if not source.is_file():
            self._warn(f"{SOURCE} not found; building without the C extension")
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
            self._warn(
                f"could not build the optional C extension {PACKAGE}.{MODULE}; "
                f"the pure-Python fallback will be used{stale}.\n{exc}"
            )
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
                self._warn(f"could not install the built extension as {in_tree}: {exc}")
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

    def _warn(self, message: str) -> None:
        self.app.display_warning(f"WARNING [{PACKAGE}.{MODULE}] {message}")


def _unsupported_reason() -> str | None:
    """Why this interpreter does not get the extension, or None if it does."""
    if sys.implementation.name != "cpython":
        return f"not CPython ({sys.implementation.name})"
    if sys.version_info[:2] not in SUPPORTED_VERSIONS:
        supported = " and ".join(f"{major}.{minor}" for major, minor in SUPPORTED_VERSIONS)
        return f"Python {sys.version_info.major}.{sys.version_info.minor} (only {supported})"
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
