"""The optional compiled part of the probes (``dashboard/_accel.c``), or its absence.

Built at install time on CPython 3.11, 3.12 and 3.13 (``hatch_build.py``; 3.14 on request,
its frame access written from CPython's sources but never run here); everywhere else, and
when ``REACTOR_DASHBOARD_ACCEL=0`` is set, the probes use their pure-Python paths, which
have the same semantics and tests. A stale build (an ``ABI`` other than this one's) counts as
absent, never as an import error. :func:`absent_reason` says why the compiled paths are not
in use, in one line.
"""

from __future__ import annotations

import os
import sys
import sysconfig
import types

#: Must equal ``ACCEL_ABI`` in _accel.c: bumped whenever the module's interface changes.
ABI = 11
#: Set to 0 to run the pure-Python paths even where the accelerator is built.
ENV = "REACTOR_DASHBOARD_ACCEL"
#: The CPython versions the build makes the accelerator on (``hatch_build.SUPPORTED_VERSIONS``).
SUPPORTED_VERSIONS = ((3, 11), (3, 12), (3, 13))
#: Written from CPython's sources, never run here: built only on request
#: (``hatch_build.UNTESTED_VERSIONS``, ``REACTOR_DASHBOARD_ACCEL_UNTESTED=1``).
UNTESTED_VERSIONS = ((3, 14),)

built: types.ModuleType | None
#: The ABI of a stale build found instead of this one's (None: none found, or current).
_stale_abi: str | None = None
try:
    from dashboard import _accel as built
except ImportError:
    built = None
if built is not None and getattr(built, "ABI", None) != ABI:
    _stale_abi = repr(getattr(built, "ABI", None))
    built = None


def enabled() -> bool:
    """Whether the compiled paths are to be used: built, current, and not switched off."""
    return built is not None and os.environ.get(ENV, "1") != "0"


def expected() -> bool:
    """Whether an install on this interpreter builds the accelerator (without asking for an
    untested version): CPython, with the GIL, one of :data:`SUPPORTED_VERSIONS`."""
    return interpreter_reason() is None


def interpreter_reason() -> str | None:
    """Why this interpreter does not get the accelerator at install, or None if it does."""
    if sys.implementation.name != "cpython":
        return f"not CPython ({sys.implementation.name})"
    version = sys.version_info[:2]
    named = f"Python {version[0]}.{version[1]}"
    if sysconfig.get_config_var("Py_GIL_DISABLED"):
        return f"{named} is a free-threaded build (the accelerator assumes the GIL)"
    if version in UNTESTED_VERSIONS:
        return f"{named} support is written but untested, built only on request"
    if version not in SUPPORTED_VERSIONS:
        supported = ", ".join(f"{major}.{minor}" for major, minor in SUPPORTED_VERSIONS)
        return f"{named} is not supported (only {supported})"
    return None


def absent_reason() -> str | None:
    """Why the probes run their pure-Python paths here, in one line; None when the compiled
    paths are in use."""
    if built is not None:
        return None if enabled() else f"switched off ({ENV}=0)"
    if _stale_abi is not None:
        return f"a stale build (ABI {_stale_abi}, this code needs {ABI}): reinstall"
    return interpreter_reason() or "not built at install (no compiler or Python headers?)"


def hot_path_reason(
    accelerate: bool | None, accelerated: bool, *, unavailable: str | None = None
) -> str | None:
    """Why a probe runs its pure-Python hot path, in one line (a snapshot's
    ``hot_path_reason``); None when it runs the compiled one. ``accelerate`` is what the probe
    was asked (see :func:`resolve`); ``unavailable`` the probe's own reason when the extension
    is in use here but cannot feed this probe."""
    if accelerated:
        return None
    if accelerate is False:
        return "the pure-Python path was asked for (accelerate=False)"
    return absent_reason() or unavailable or "not available to this probe"


def resolve(accelerate: bool | None, *, available: bool | None = None) -> bool:
    """A probe's ``accelerate`` argument: None, the compiled path where it is ``available``
    (default: built) and not switched off; True, required (an error where not available);
    False, never."""
    if available is None:
        available = built is not None
    if accelerate is None:
        return available and enabled()
    if accelerate and not available:
        raise RuntimeError("dashboard._accel is not built here, or was switched off")
    return accelerate
