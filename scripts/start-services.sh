#!/usr/bin/env bash
# Makes sure every service the test suites talk to is up, starting what is missing:
# PostgreSQL (127.0.0.1:5432), Redis (127.0.0.1:6379), a MongoDB-compatible server
# (127.0.0.1:27017), the Node packages of the client tests, Chromium for the browser
# tests and Schemathesis for the OpenAPI fuzz test. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # port name
  for _ in $(seq 1 60); do
    port_open "$1" && return 0
    sleep 0.5
  done
  echo "error: $2 did not come up on 127.0.0.1:$1" >&2
  return 1
}

if ! port_open 5432; then
  echo "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
  wait_port 5432 PostgreSQL
fi

if ! port_open 6379; then
  echo "starting Redis"
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no
  wait_port 6379 Redis
fi

scripts/start-mongodb.sh

scripts/install-test-deps.sh
scripts/install-browser-deps.sh
scripts/install-schemathesis.sh
