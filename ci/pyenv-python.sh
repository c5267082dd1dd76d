#!/usr/bin/env bash
# Prints the newest pyenv-installed Python of a minor version (`ci/pyenv-python.sh 3.13`), or
# says where it looked and exits 1. pyenv's root: `pyenv root`, else $PYENV_ROOT, else
# /root/.pyenv.
set -euo pipefail
want="${1:?usage: ci/pyenv-python.sh MAJOR.MINOR}"
root=""
if command -v pyenv >/dev/null 2>&1; then
  root="$(pyenv root 2>/dev/null || true)"
fi
root="${root:-${PYENV_ROOT:-/root/.pyenv}}"
found=""
for dir in "$root"/versions/"$want".*; do
  # 3.13.0, 3.13.1 ... but not 3.13.0t (free-threaded: the accelerator is not built there)
  [[ "$(basename "$dir")" =~ ^${want//./\\.}\.[0-9]+$ ]] || continue
  [[ -x "$dir/bin/python" ]] && found="$(printf '%s\n%s\n' "$found" "$dir" | sort -V | tail -n 1)"
done
if [[ -z "$found" ]]; then
  echo "ci: no Python $want under $root/versions (pyenv install $want, or set PYENV_ROOT)" >&2
  exit 1
fi
echo "$found/bin/python"
