"""The optional compiled part of the probes (``dashboard/_accel.c``), or its absence.

Built at install time on CPython 3.11 and 3.12 (``hatch_build.py``); everywhere else, and
when ``REACTOR_DASHBOARD_ACCEL=0`` is set, the probes use their pure-Python paths, which
have the same semantics and tests. A stale build (an ``ABI`` other than this one's) counts as
absent, never as an import error.
"""

from __future__ import annotations

import os
import types

#: Must equal ``ACCEL_ABI`` in _accel.c: bumped whenever the module's interface changes.
ABI = 9
#: Set to 0 to run the pure-Python paths even where the accelerator is built.
ENV = "REACTOR_DASHBOARD_ACCEL"

built: types.ModuleType | None
try:
    from dashboard import _accel as built
except ImportError:
    built = None
if built is not None and getattr(built, "ABI", None) != ABI:
    built = None


def enabled() -> bool:
    """Whether the compiled paths are to be used: built, current, and not switched off."""
    return built is not None and os.environ.get(ENV, "1") != "0"


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
