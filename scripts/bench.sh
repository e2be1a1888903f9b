#!/usr/bin/env bash
# Benchmarks the chat server with bench/loadgen (see docs/BENCHMARKS.md).
#
#   scripts/bench.sh [--backend sqlite|postgres|mongodb] [--transport ws|socketio]
#                    [--scenarios "startup baseline send history login connect pgbench
#                                 group-send group-fanout unread-list"]
#                    [--duration SECONDS] [--sockets K] [--rounds N] [--members N] [--perf]
#
# Builds release binaries, starts the server on a fresh database of the chosen backend
# (SQLite in a temporary folder; a new PostgreSQL database on 127.0.0.1:5432 as user
# postgres; a new database on the MongoDB-compatible server of scripts/start-mongodb.sh),
# with rate limits switched off and bcrypt cost 10, and runs the scenarios one after the
# other against that one server. For PostgreSQL, `pgbench` runs a single-row INSERT at the
# same concurrency (64) as the ceiling the send figure is compared with.
#
# The machine is shared and noisy, so the unpaced send, history and login scenarios run
# --rounds times (3 by default), for PostgreSQL each send round right after its own pgbench
# round; the summary quotes the median of each and the ratio of the medians.
#
# Groups: group-send alternates --rounds pairs of a 1:1 phase and a phase of sends into one
# group of --members (1,000) at the same concurrency, in one run on the same users, and
# quotes the median rates and their ratio; group-fanout holds every member of such a group
# online (one socket each) while 20 messages/s go into it; unread-list walks a list of
# 10,000 conversations, some unread, checking every unreadCount.
#
# Every loadgen JSON line goes to target/bench/<backend>-<transport>.jsonl, the human
# output to the terminal. With --perf, `perf record` samples the server during the
# unpaced send scenario (target/bench/perf-<backend>.data).
set -euo pipefail
cd "$(dirname "$0")/.."

BACKEND=sqlite
TRANSPORT=ws
SCENARIOS="startup baseline send history login connect pgbench group-send group-fanout unread-list"
DURATION=10
SOCKETS=10000
PAIRS=64
MEMBERS=1000
ROUNDS=3
PERF=0
PORT="${BENCH_PORT:-18080}"

while [ $# -gt 0 ]; do
  case "$1" in
    --backend) BACKEND="$2"; shift 2 ;;
    --transport) TRANSPORT="$2"; shift 2 ;;
    --scenarios) SCENARIOS="$2"; shift 2 ;;
    --duration) DURATION="$2"; shift 2 ;;
    --sockets) SOCKETS="$2"; shift 2 ;;
    --pairs) PAIRS="$2"; shift 2 ;;
    --rounds) ROUNDS="$2"; shift 2 ;;
    --members) MEMBERS="$2"; shift 2 ;;
    --perf) PERF=1; shift ;;
    -h|--help) sed -n '2,29p' "$0"; exit 0 ;;
    *) echo "bench: unknown argument $1" >&2; exit 2 ;;
  esac
done
case "$BACKEND" in sqlite|postgres|mongodb) ;; *) echo "bench: unknown backend $BACKEND" >&2; exit 2 ;; esac

has() { case " $SCENARIOS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

# 10,000 sockets need as many descriptors in the server and in the load generator.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
ulimit -n 65536 2>/dev/null || true
echo "bench: open files limit $(ulimit -n)"

cargo build --release -p server -p loadgen
SERVER_BIN="$PWD/target/release/server"
LOADGEN="$PWD/target/release/loadgen"
OUT="$PWD/target/bench"
mkdir -p "$OUT"
RESULTS="$OUT/$BACKEND-$TRANSPORT.jsonl"
: >"$RESULTS"
URL="http://127.0.0.1:$PORT"
NAME="bench_$(date +%s)_$$"
WORK="$(mktemp -d)"

echo "bench: $(date -u +%FT%TZ) backend=$BACKEND transport=$TRANSPORT duration=${DURATION}s"
echo "bench: $(nproc) cores, $(free -m | awk '/^Mem:/ {print $2}') MiB, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "bench: load $(cut -d' ' -f1-3 /proc/loadavg)"

PG_ADMIN="postgres://postgres@127.0.0.1:5432/postgres"
case "$BACKEND" in
  sqlite)
    STORE_URL="sqlite://$WORK/chat.db"
    ;;
  postgres)
    psql "$PG_ADMIN" -qc "CREATE DATABASE $NAME" >/dev/null
    STORE_URL="postgres://postgres@127.0.0.1:5432/$NAME"
    ;;
  mongodb)
    scripts/start-mongodb.sh
    STORE_URL="mongodb://127.0.0.1:27017/$NAME?retryWrites=false"
    ;;
esac

SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  case "$BACKEND" in
    postgres)
      psql "$PG_ADMIN" -qc "DROP DATABASE IF EXISTS $NAME WITH (FORCE)" >/dev/null 2>&1 || true
      psql "$PG_ADMIN" -qc "DROP DATABASE IF EXISTS ${NAME}_pgbench WITH (FORCE)" >/dev/null 2>&1 || true
      ;;
  esac
  rm -rf "$WORK"
}
trap cleanup EXIT

export CHAT__SERVER__HOST=127.0.0.1
export CHAT__SERVER__PORT="$PORT"
export CHAT__STORAGE__BACKEND="$BACKEND"
export CHAT__STORAGE__URL="$STORE_URL"
export CHAT__AUTH__JWT_SECRET="bench-secret-bench-secret-bench-secret-0123"
# Cost 10 as in production; BENCH_BCRYPT_COST=4 makes setup quick for profiling runs.
export CHAT__AUTH__BCRYPT_COST="${BENCH_BCRYPT_COST:-10}"
export CHAT__LOG__LEVEL=warn
# Rate limits off (0): the load generator is one client address hammering a few users.
export CHAT__LIMITS__LOGIN_PER_MINUTE_PER_IP=0
export CHAT__LIMITS__LOGIN_PER_MINUTE_PER_USERNAME=0
export CHAT__LIMITS__REGISTER_PER_HOUR_PER_IP=0
export CHAT__LIMITS__SENDS_PER_SECOND_PER_USER=0
export CHAT__LIMITS__SOCKET_CONNECTS_PER_MINUTE_PER_USER=0
export CHAT__LIMITS__SOCKETS_PER_USER=0
export CHAT__LIMITS__SOCKET_FRAMES_PER_SECOND=0
# The idle-sockets scenario holds thousands of connections from 127.0.0.1.
export CHAT__SERVER__MAX_CONNECTIONS_PER_ADDRESS=0
export CHAT__LIMITS__SOCKETIO_SESSIONS_PER_IP=0
export CHAT__LIMITS__SOCKETIO_HANDSHAKES_PER_MINUTE_PER_IP=0
# Groups as large as the group scenarios make them.
export CHAT__GROUPS__MAX_MEMBERS="$MEMBERS"
export CHAT_CONFIG_DIR="$PWD/config"

record() { # scenario output -> terminal, JSON line -> results
  local line
  tee "$OUT/last.txt"
  line="$(grep '^{' "$OUT/last.txt" | tail -n1 || true)"
  [ -n "$line" ] && echo "{\"backend\":\"$BACKEND\",${line#\{}" >>"$RESULTS"
  return 0
}

# Starts the server; READY_MS gets the milliseconds from exec to the first 200 of /readyz.
start_server() {
  local begun now
  begun=$(date +%s%N)
  "$SERVER_BIN" 2>"$OUT/server-$BACKEND.log" &
  SERVER_PID=$!
  for _ in $(seq 1 3000); do
    if curl -fs -o /dev/null "$URL/readyz" 2>/dev/null; then
      now=$(date +%s%N)
      READY_MS=$(((now - begun) / 1000000))
      return 0
    fi
    kill -0 "$SERVER_PID" 2>/dev/null || { tail -n 20 "$OUT/server-$BACKEND.log" >&2; return 1; }
    sleep 0.005
  done
  echo "bench: the server did not become ready within 15 s" >&2
  return 1
}

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

start_server
sleep 2
IDLE_RSS="$(rss_kib "$SERVER_PID")"
if has startup; then
  echo "== startup: exec -> /readyz 200 in ${READY_MS} ms; idle RSS ${IDLE_RSS} KiB"
  echo "{\"backend\":\"$BACKEND\",\"scenario\":\"startup\",\"ready_ms\":$READY_MS,\"idle_rss_kib\":$IDLE_RSS}" >>"$RESULTS"
fi

LG=("$LOADGEN" --url "$URL" --transport "$TRANSPORT")

if has baseline; then
  "${LG[@]}" bcrypt-baseline --cost 10 | record
fi

# The median of the numbers given as arguments.
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
# The value of a numeric field of the last JSON line recorded.
last_field() { tail -n1 "$RESULTS" | sed -n "s/.*\"$1\":\([0-9.]*\).*/\1/p"; }

PGBENCH_READY=0
pgbench_round() {
  if [ "$PGBENCH_READY" = 0 ]; then
    # A table shaped like the messages table, on its own database of the same server.
    psql "$PG_ADMIN" -qc "CREATE DATABASE ${NAME}_pgbench" >/dev/null
    psql "postgres://postgres@127.0.0.1:5432/${NAME}_pgbench" -q <<'SQL' >/dev/null
CREATE TABLE messages (
  id text PRIMARY KEY,
  conversation_id text NOT NULL,
  sender_id text NOT NULL,
  receiver_id text NOT NULL,
  body text NOT NULL,
  created_at timestamptz NOT NULL
);
CREATE INDEX messages_conversation ON messages (conversation_id, id);
SQL
    cat >"$WORK/insert.sql" <<'SQL'
INSERT INTO messages VALUES (gen_random_uuid()::text, 'c-' || (random() * 64)::int, 's', 'r', 'pgbench single-row insert of a load test message', now());
SQL
    PGBENCH_READY=1
  fi
  echo "== pgbench: single-row INSERT, 64 clients, ${DURATION} s"
  pgbench -n -h 127.0.0.1 -U postgres -c 64 -j 2 -T "$DURATION" -f "$WORK/insert.sql" "${NAME}_pgbench" | tee "$OUT/pgbench.txt"
  local tps
  tps="$(awk '/^tps = / {print $3; exit}' "$OUT/pgbench.txt")"
  echo "{\"backend\":\"$BACKEND\",\"scenario\":\"pgbench\",\"clients\":64,\"tps\":$tps}" >>"$RESULTS"
  TPS_ROUNDS+=("$tps")
}

TPS_ROUNDS=()
SEND_ROUNDS=()
HISTORY_ROUNDS=()
WITH_PGBENCH=0
if has pgbench && [ "$BACKEND" = postgres ]; then WITH_PGBENCH=1; fi

if has send; then
  for round in $(seq 1 "$ROUNDS"); do
    [ "$WITH_PGBENCH" = 1 ] && pgbench_round
    echo "== send round $round of $ROUNDS (unpaced)"
    if [ "$PERF" = 1 ] && [ "$round" = 1 ] && command -v perf >/dev/null; then
      perf record -F 499 -g -p "$SERVER_PID" -o "$OUT/perf-$BACKEND.data" -- sleep "$((DURATION + 8))" 2>/dev/null &
      PERF_PID=$!
    fi
    "${LG[@]}" send --pairs "$PAIRS" --duration "$DURATION" --server-pid "$SERVER_PID" | record
    SEND_ROUNDS+=("$(last_field sends_per_s)")
    if [ -n "${PERF_PID:-}" ]; then
      wait "$PERF_PID" || true
      perf report -i "$OUT/perf-$BACKEND.data" --stdio --no-children -g none --sort dso,symbol 2>/dev/null \
        | grep -v '^#' | grep '%' | cut -c1-160 | head -40 >"$OUT/perf-$BACKEND.txt" || true
      echo "bench: perf summary in $OUT/perf-$BACKEND.txt"
      PERF_PID=""
    fi
  done
  # Delivery latency at half the median unpaced rate.
  RATE="$(median "${SEND_ROUNDS[@]}")"
  HALF="$(awk -v r="${RATE:-0}" 'BEGIN { h = r / 2; if (h < 1) h = 1; printf "%.0f", h }')"
  echo "== send at half the median unpaced rate: $HALF/s"
  "${LG[@]}" send --pairs "$PAIRS" --duration "$DURATION" --rate "$HALF" --server-pid "$SERVER_PID" | record
elif [ "$WITH_PGBENCH" = 1 ]; then
  pgbench_round
fi

if has history; then
  for round in $(seq 1 "$ROUNDS"); do
    echo "== history round $round of $ROUNDS"
    "${LG[@]}" history --messages 2000 --concurrency 16 --duration "$DURATION" --server-pid "$SERVER_PID" | record
    HISTORY_ROUNDS+=("$(last_field pages_per_s)")
  done
fi

LOGIN_ROUNDS=()
if has login; then
  for round in $(seq 1 "$ROUNDS"); do
    echo "== login round $round of $ROUNDS"
    "${LG[@]}" login --concurrency 8 --duration "$DURATION" --cost 10 --server-pid "$SERVER_PID" | record
    LOGIN_ROUNDS+=("$(last_field ratio_to_ceiling)")
  done
fi

if has connect; then
  "${LG[@]}" connect --sockets "$SOCKETS" --users 100 --live-pairs 4 --rate 100 --duration "$DURATION" \
    --server-pid "$SERVER_PID" | record
fi

GROUP_RATIOS=()
if has group-send; then
  echo "== group-send: $ROUNDS rounds of 1:1 then group ($MEMBERS members), $PAIRS concurrent senders"
  "${LG[@]}" group-send --members "$MEMBERS" --concurrency "$PAIRS" --rounds "$ROUNDS" --duration "$DURATION" \
    --server-pid "$SERVER_PID" | record
  GROUP_RATIOS+=("$(last_field ratio_percent)")
fi

if has group-fanout; then
  echo "== group-fanout: $MEMBERS members online, 20 messages/s"
  "${LG[@]}" group-fanout --members "$MEMBERS" --rate 20 --duration "$((DURATION * 2))" \
    --server-pid "$SERVER_PID" | record
fi

if has unread-list; then
  echo "== unread-list: 10,000 conversations, pages of 200"
  "${LG[@]}" unread-list --conversations 10000 --page 200 --walks 5 --server-pid "$SERVER_PID" | record
fi

summary() { # label values...
  local label="$1"; shift
  [ $# -gt 0 ] && echo "bench: $label rounds: $* -> median $(median "$@")"
  return 0
}
summary "pgbench TPS" "${TPS_ROUNDS[@]}"
summary "unpaced sends/s" "${SEND_ROUNDS[@]}"
summary "history pages/s" "${HISTORY_ROUNDS[@]}"
summary "login ratio to the bcrypt ceiling" "${LOGIN_ROUNDS[@]}"
summary "group / 1:1 sends (% of the medians)" "${GROUP_RATIOS[@]}"
if [ "${#TPS_ROUNDS[@]}" -gt 0 ] && [ "${#SEND_ROUNDS[@]}" -gt 0 ]; then
  RATIO="$(awk -v s="$(median "${SEND_ROUNDS[@]}")" -v t="$(median "${TPS_ROUNDS[@]}")" 'BEGIN { printf "%.1f", 100 * s / t }')"
  echo "bench: median sends/s = ${RATIO} % of median pgbench TPS"
  echo "{\"backend\":\"$BACKEND\",\"scenario\":\"summary\",\"pgbench_tps_median\":$(median "${TPS_ROUNDS[@]}"),\"sends_per_s_median\":$(median "${SEND_ROUNDS[@]}"),\"ratio_percent\":$RATIO}" >>"$RESULTS"
fi
echo "bench: results in $RESULTS"
