#!/usr/bin/env bash
# Installs Schemathesis (the OpenAPI fuzzer of tests/tests/openapi.rs) into a virtual
# environment of the repository, `.venv/` (ignored by git), from PyPI, only when the pinned
# version is not there yet. Prints nothing when it has nothing to do.
# Safe to run any number of times, and from several test processes at once.
#
# The test finds it at .venv/bin/schemathesis, or wherever SCHEMATHESIS points.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
# Pinned: the flags of the run in tests/tests/openapi.rs are those of Schemathesis 4.
version="4.32.5"
# Written last, once the install is complete.
marker="$venv/.schemathesis-$version"

up_to_date() {
    [ -f "$marker" ] && [ -x "$venv/bin/schemathesis" ]
}

if up_to_date; then
    exit 0
fi

python="${PYTHON:-python3}"
command -v "$python" >/dev/null || { echo "python3 (3.9+) is required for the OpenAPI fuzz test" >&2; exit 1; }

mkdir -p "$venv"
# One install at a time; whoever waited finds it done.
exec 9>"$venv/.install.lock"
flock 9
if ! up_to_date; then
    echo "installing schemathesis $version into $venv"
    [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "schemathesis==$version"
    "$venv/bin/schemathesis" --version >/dev/null
    rm -f "$venv"/.schemathesis-*
    touch "$marker"
fi
