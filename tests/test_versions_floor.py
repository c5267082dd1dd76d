"""The floor CI installs (ci/floor-constraints.txt) is the floor pyproject.toml declares, for
every runtime dependency (issue 14): a raised floor without a raised pin, or the reverse,
would leave the floor job testing versions no user can get, or miss the ones they can."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent


def pins() -> dict[str, Version]:
    found: dict[str, Version] = {}
    for line in (ROOT / "ci" / "floor-constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, pinned = line.partition("==")
            found[name.strip().lower()] = Version(pinned.strip())
    return found


def floors() -> dict[str, Version]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    found: dict[str, Version] = {}
    for text in project["dependencies"]:
        requirement = Requirement(text)
        [lowest] = [Version(s.version) for s in requirement.specifier if s.operator == ">="]
        found[requirement.name.lower()] = lowest
    return found


#: Pins of packages the dashboard does not depend on, each for a reason given in the file.
TEST_ONLY_PINS = {"pyopenssl"}


def test_every_dependency_is_pinned_at_its_declared_floor() -> None:
    pinned = pins()
    assert set(pinned) - set(floors()) == TEST_ONLY_PINS
    assert {name: pinned[name] for name in floors()} == floors()


def test_the_twisted_floor_names_the_callback_list_as_the_probes_read_it() -> None:
    """Twisted 25.5.0 is the first with ``Deferred._callbacks`` (24.x: ``callbacks``)."""
    assert floors()["twisted"] == Version("25.5")
