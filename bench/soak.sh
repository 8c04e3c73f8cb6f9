#!/usr/bin/env bash
# soak.sh — long mixed load through pgshift while a replica restarts every few minutes; reports
# client errors and the proxy's memory over time, and appends a dated section to bench/RESULTS.md.
#
#   usage: bench/soak.sh            (30 minutes, a replica restart every 5 minutes)
#   knobs: DURATION=1800 RESTART_EVERY=300 CLIENTS=16 SCALE=10 SAMPLE=10 PGSHIFT_BIN=path
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DURATION=${DURATION:-1800}
RESTART_EVERY=${RESTART_EVERY:-300}
CLIENTS=${CLIENTS:-16}
SCALE=${SCALE:-10}
SAMPLE=${SAMPLE:-10}
PGBED="$ROOT/scripts/pgbed.sh"
say() { printf '[soak] %s\n' "$*"; }

if [[ -z "${PGSHIFT_BIN:-}" ]]; then
    (cd "$ROOT" && cargo build --release --quiet)
    PGSHIFT_BIN="$ROOT/target/release/pgshift"
fi
WORK="$(mktemp -d "${TMPDIR:-/tmp}/pgshift-soak.XXXXXX")"
chmod 0755 "$WORK"
PROXY_PID=""
cleanup() {
    if [[ -n "$PROXY_PID" ]]; then kill "$PROXY_PID" 2>/dev/null || true; wait "$PROXY_PID" 2>/dev/null || true; fi
    if [[ -f "$WORK/bed/.pgbed" ]]; then "$PGBED" destroy "$WORK/bed" >/dev/null 2>&1 || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

"$PGBED" start "$WORK/bed" --replicas 2 >/dev/null
PRIMARY_PORT="" REPLICA_PORTS=""
# shellcheck source=/dev/null
source "$WORK/bed/ports.env"
read -r R1 R2 <<<"$REPLICA_PORTS"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$WORK/proxy.toml" <<TOML
[proxy]
listen = "127.0.0.1:$PORT"
default_pool_size = 10
[auth]
[[auth.users]]
name = "app"
password = "app"
[primary]
port = $PRIMARY_PORT
[[replicas]]
port = $R1
[[replicas]]
port = $R2
[admin]
listen = ""
TOML
export PGPASSWORD=app
pgbench -i -q -s "$SCALE" -h 127.0.0.1 -p "$PRIMARY_PORT" -U app app >/dev/null 2>&1
PGSHIFT_LOG=info "$PGSHIFT_BIN" --config "$WORK/proxy.toml" 2>"$WORK/pgshift.log" &
PROXY_PID=$!
sleep 1
say "pgshift pid $PROXY_PID on $PORT; primary $PRIMARY_PORT, replicas $R1 $R2; ${DURATION}s, a replica restart every ${RESTART_EVERY}s"

pgbench -n -c "$CLIENTS" -j 2 -T "$DURATION" -P "$SAMPLE" -b select-only@9 -b tpcb-like@1 \
    -h 127.0.0.1 -p "$PORT" -U app app >"$WORK/pgbench.out" 2>&1 &
BENCH=$!
start=$(date +%s)
next_restart=$((start + RESTART_EVERY))
restarts=0
echo "elapsed_s rss_kb" >"$WORK/rss.tsv"
while kill -0 "$BENCH" 2>/dev/null; do
    now=$(date +%s)
    rss=$(awk '/^VmRSS/{print $2}' "/proc/$PROXY_PID/status" 2>/dev/null || echo -1)
    echo "$((now - start)) $rss" >>"$WORK/rss.tsv"
    if ((now >= next_restart)); then
        node=$(( (restarts % 2) + 1 ))
        say "restarting replica node$node at $((now - start))s"
        "$PGBED" node "$WORK/bed" "$node" stop >/dev/null
        sleep 3
        "$PGBED" node "$WORK/bed" "$node" start >/dev/null
        restarts=$((restarts + 1))
        next_restart=$((next_restart + RESTART_EVERY))
    fi
    sleep "$SAMPLE"
done
wait "$BENCH" || true
tps=$(grep -oP 'tps = \K[0-9.]+(?= \(without)' "$WORK/pgbench.out" || echo "?")
failed=$(grep -oP 'number of failed transactions: \K[0-9]+' "$WORK/pgbench.out" | head -1 || echo "?")
aborted=$(grep -c 'aborted' "$WORK/pgbench.out" || true)
errors=$(grep -ciE 'error|fatal' "$WORK/pgbench.out" || true)
rss_first=$(awk 'NR==2{print $2}' "$WORK/rss.tsv")
rss_last=$(awk 'END{print $2}' "$WORK/rss.tsv")
rss_max=$(awk 'NR>1 && $2>m{m=$2} END{print m}' "$WORK/rss.tsv")
say "tps $tps, failed $failed, aborted-client lines $aborted, error lines $errors, RSS $rss_first -> $rss_last kB (max $rss_max)"

{
    echo
    echo "## Soak $(date -u +%Y-%m-%dT%H:%MZ) ($(nproc) cores, $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'))"
    echo
    echo "bench/soak.sh: ${DURATION}s of pgbench (select-only 9 : TPC-B 1, $CLIENTS clients, scale $SCALE) through pgshift"
    echo "(pool 10, primary + 2 replicas); a replica stopped for 3 s every ${RESTART_EVERY}s ($restarts restarts)."
    echo
    echo "| tps | failed transactions | aborted clients | error lines | RSS start / end / max (kB) |"
    echo "|---|---|---|---|---|"
    echo "| $tps | $failed | $aborted | $errors | $rss_first / $rss_last / $rss_max |"
    echo
    echo "RSS over time (s, kB), every $((DURATION / 10))s:"
    echo
    echo '```'
    awk -v step="$((DURATION / 10 / SAMPLE + 1))" 'NR==1 || (NR-2) % step == 0' "$WORK/rss.tsv"
    echo '```'
    grep -E 'error|FATAL' "$WORK/pgbench.out" | head -5 | sed 's/^/    /' || true
} >>"$ROOT/bench/RESULTS.md"
say "appended to bench/RESULTS.md"
