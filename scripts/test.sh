#!/usr/bin/env bash
# Checks formatting and lints, then runs every test of the project: unit tests, the storage contract suite on SQLite,
# PostgreSQL and MongoDB, and the black-box suites (API, sync stress) against the real server
# on each backend.
# Starts the services it needs first (see scripts/start-services.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/start-services.sh

# The gate first: formatting (rustfmt.toml) and lints (clippy's defaults plus the workspace's
# own in Cargo.toml), warnings refused. Both fail in seconds to minutes, before any test runs.
echo "== rustfmt"
cargo fmt --all --check
echo "== clippy"
cargo clippy --workspace --all-targets -- -D warnings

# Every target once, with one feature set; the black-box tests then run these executables
# instead of building the server and the load generator again with another one (which would
# rebuild the workspace back and forth).
cargo build --workspace --all-targets
export CHAT_SERVER_BIN="$PWD/target/debug/server" CHAT_LOADGEN_BIN="$PWD/target/debug/loadgen"

# Everything once, black-box suites on the default backend (SQLite).
cargo test --workspace --all-targets

# The black-box HTTP/WebSocket suite and the sync stress test again on the other backends.
for backend in postgres mongodb; do
  echo "== black-box suites on $backend"
  # --workspace keeps the feature selection, and so the build, of the run above.
  CHAT_TEST_BACKEND=$backend cargo test --workspace --test api --test sync
done
# The API suite on the in-memory reference store (single instance: no sync across instances).
echo "== black-box API suite on memory"
CHAT_TEST_BACKEND=memory cargo test --workspace --test api
