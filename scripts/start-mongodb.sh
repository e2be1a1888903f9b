#!/usr/bin/env bash
# Starts a MongoDB-wire-compatible server for the tests on 127.0.0.1:27017, unless something
# already listens there. SecantusDB (from PyPI) stands in for mongod, which Debian does not
# package; point CHAT_TEST_MONGODB_URL at a real mongod or Atlas to test against that instead.
#
# Idempotent: installs SecantusDB only if missing, starts it only if the port is free, and
# returns once the server answers. Exits non-zero with a message when it cannot.
set -euo pipefail

HOST=127.0.0.1
PORT="${MONGODB_PORT:-27017}"
LOG="${MONGODB_LOG:-${TMPDIR:-/tmp}/secantusdb-${PORT}.log}"
WAIT_SECONDS="${MONGODB_WAIT_SECONDS:-60}"

fail() {
    echo "start-mongodb: $*" >&2
    exit 1
}

PYTHON="$(command -v python3 || command -v python || true)"
[ -n "$PYTHON" ] || fail "python3 is required to run SecantusDB"

# True when a MongoDB server on HOST:PORT answers a hello command.
answers() {
    "$PYTHON" - "$HOST" "$PORT" <<'PY' >/dev/null 2>&1
import socket, struct, sys
host, port = sys.argv[1], int(sys.argv[2])
# OP_MSG {hello: 1, $db: "admin"}, built by hand so that no driver is needed.
def cstring(s): return s.encode() + b"\0"
body = b"\x10" + cstring("hello") + struct.pack("<i", 1) + b"\x02" + cstring("$db") \
    + struct.pack("<i", len("admin") + 1) + cstring("admin")
doc = struct.pack("<i", len(body) + 5) + body + b"\0"
payload = struct.pack("<I", 0) + b"\0" + doc
msg = struct.pack("<iiii", 16 + len(payload), 1, 0, 2013) + payload
with socket.create_connection((host, port), timeout=2) as s:
    s.settimeout(2)
    s.sendall(msg)
    head = s.recv(16)
    if len(head) < 16:
        sys.exit(1)
    length, _, _, opcode = struct.unpack("<iiii", head)
    sys.exit(0 if opcode == 2013 and length > 16 else 1)
PY
}

listening() {
    "$PYTHON" - "$HOST" "$PORT" <<'PY' >/dev/null 2>&1
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1):
    pass
PY
}

if answers; then
    echo "start-mongodb: a MongoDB server already answers on $HOST:$PORT"
    exit 0
fi
if listening; then
    fail "something listens on $HOST:$PORT but does not answer as MongoDB; stop it or set MONGODB_PORT"
fi

if ! command -v secantusd-py >/dev/null 2>&1; then
    echo "start-mongodb: installing SecantusDB"
    "$PYTHON" -m pip install --quiet SecantusDB || fail "pip install SecantusDB failed"
    hash -r
fi
SERVER="$(command -v secantusd-py || true)"
[ -n "$SERVER" ] || fail "secantusd-py is not on PATH after installing SecantusDB"

echo "start-mongodb: starting SecantusDB on $HOST:$PORT (log: $LOG)"
nohup "$SERVER" --host "$HOST" --port "$PORT" --storage-path :memory: >"$LOG" 2>&1 &
PID=$!
disown "$PID" 2>/dev/null || true

for _ in $(seq 1 "$WAIT_SECONDS"); do
    if answers; then
        echo "start-mongodb: ready on $HOST:$PORT (pid $PID)"
        exit 0
    fi
    if ! kill -0 "$PID" 2>/dev/null; then
        tail -n 20 "$LOG" >&2 || true
        fail "SecantusDB exited before answering; see $LOG"
    fi
    sleep 1
done
tail -n 20 "$LOG" >&2 || true
fail "SecantusDB did not answer on $HOST:$PORT within ${WAIT_SECONDS}s; see $LOG"
