#!/usr/bin/env bash
# Installs the Node packages of the Socket.IO client tests (tests/js) from the committed
# package-lock.json, only when node_modules is missing or older than the lock file.
# Safe to run any number of times, and from several test processes at once.
set -euo pipefail

dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/../tests/js" && pwd)"
lock="$dir/package-lock.json"
# npm writes this copy of the lock file last, once the install is complete.
installed="$dir/node_modules/.package-lock.json"

up_to_date() {
    [ -f "$installed" ] && [ ! "$lock" -nt "$installed" ]
}

if up_to_date; then
    exit 0
fi

command -v npm >/dev/null || { echo "npm is required for the Socket.IO client tests (Node 18+)" >&2; exit 1; }

# One install at a time; whoever waited finds it done.
exec 9>"$dir/.install.lock"  # ignored by tests/js/.gitignore
flock 9
if ! up_to_date; then
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
    touch "$installed"
fi
