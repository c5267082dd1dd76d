#!/usr/bin/env bash
# CI job: the whole suite on CPython 3.13 (pyenv's newest 3.13.x) with the oldest dependencies
# pyproject.toml allows, pinned exactly by ci/floor-constraints.txt, in its own venv
# (.venv-floor), on the default reactor. One job for both (the newest Python with the oldest
# releases): a fourth pass of the suite (3.13 on the newest releases, ~9 min) would take CI
# near its 40-minute limit. The 3.11 job (scripts/test.sh) runs the newest releases on both
# reactors.
set -euo pipefail
cd "$(dirname "$0")/.."

python="$(bash ci/pyenv-python.sh 3.13)"
"$python" -m venv .venv-floor
.venv-floor/bin/python -m pip install -q --upgrade pip
.venv-floor/bin/python -m pip install -q -c ci/floor-constraints.txt -e '.[test]'
# what the constraints asked for is what got installed
.venv-floor/bin/python - <<'PY'
from importlib.metadata import version
from pathlib import Path

pins = [
    line.split("==")
    for line in Path("ci/floor-constraints.txt").read_text().splitlines()
    if line and not line.startswith("#")
]
wrong = [(name, pinned, version(name)) for name, pinned in pins if version(name) != pinned]
if wrong:
    raise SystemExit(f"floor job: installed versions differ from the pins: {wrong}")
print("floor:", ", ".join(f"{name} {pinned}" for name, pinned in pins))
PY

mkdir -p test-artifacts
.venv-floor/bin/python -m pytest -p no:cacheprovider -q
