#!/usr/bin/env bash
# CI job: the whole suite on CPython 3.13 (pyenv's), on the default reactor, in its own venv
# (.venv313). The 3.11 job (scripts/test.sh) has already run lint, types and both reactors.
set -euo pipefail
cd "$(dirname "$0")/.."

python="$(bash ci/pyenv-python.sh 3.13)"
"$python" -m venv .venv313
.venv313/bin/python -m pip install -q --upgrade pip
.venv313/bin/python -m pip install -q -e '.[test]'

mkdir -p test-artifacts
.venv313/bin/python -m pytest -p no:cacheprovider -q
