"""What a test of a compiled path does where the accelerator is not in use (issue 14)."""

from __future__ import annotations

from types import ModuleType

import pytest

from dashboard import accel


def require_accelerator() -> ModuleType:
    """The built extension, for a test of a compiled path. Skipped, with the reason, only
    where an install cannot make it (another version, a free-threaded build, not CPython:
    ``accel.expected()`` False); a failure where it should be in use and is not, since a
    silent fallback there is a bug."""
    if accel.built is not None and accel.enabled():
        return accel.built  # in use: an untested version built on request is tested too
    if not accel.expected():
        pytest.skip(f"no compiled path on this interpreter: {accel.interpreter_reason()}")
    pytest.fail(
        f"dashboard._accel should be in use on this interpreter and is not: "
        f"{accel.absent_reason()}",
        pytrace=False,
    )
