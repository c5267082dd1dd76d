#!/usr/bin/env bash
# Installs everything the tests need on a fresh machine, then runs lint, types and the
# whole suite on the default (epoll) and the asyncio reactor.
set -euo pipefail
cd "$(dirname "$0")/.."

# System tools the suite drives: wrk (HTTP benchmark smoke run), Debian's chromium (browser
# tests through Playwright, never a downloaded browser), prometheus and promtool.
missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
if ((${#missing[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'

.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy

mkdir -p test-artifacts
.venv/bin/python -m pytest -p no:cacheprovider --reactor=asyncio -q
.venv/bin/python -m pytest -p no:cacheprovider -q
