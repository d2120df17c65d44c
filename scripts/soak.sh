#!/usr/bin/env bash
# Soak run (not part of the test suite): one release `coffer server --dev` on SQLite under
# mixed load — secret reads, writes (1 in 5) and two password logins a second — for MINUTES
# (default 30) at half the peak the same server reaches with that mix, measured first.
# Samples the server's resident memory and open files every 10 s and reports the slope of
# each, and of the per-minute p99 latencies, over the run.
#
#   bash scripts/soak.sh [MINUTES]
#
# COFFER_BIN: the binary to run (default: build the release binary). COFFER_SOAK_RATE:
# force a rate instead of measuring. Work directory COFFER_BENCH_DIR (default
# /tmp/coffer-soak), port COFFER_BENCH_PORT (8330).
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${1:-30}
WORK=${COFFER_BENCH_DIR:-/tmp/coffer-soak}
PORT=${COFFER_BENCH_PORT:-8330}
if [ -z "${COFFER_BIN:-}" ]; then
  cargo build --release --locked -p coffer-cli
fi
BIN=${COFFER_BIN:-$PWD/target/release/coffer}
pkill -f "coffer server --dev --data-dir $WORK" 2>/dev/null || true
rm -rf "$WORK" && mkdir -p "$WORK"
# Two logins a second from one address is more than the default per-address throttle.
COFFER_AUTH__LOGIN_RATE_PER_MINUTE=100000 \
  "$BIN" server --dev --data-dir "$WORK/data" --listen "127.0.0.1:$PORT" >"$WORK/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  grep -q "listening" "$WORK/server.log" 2>/dev/null && break
  sleep 0.2
done
password=$(awk '$1 == "password:" {print $2; exit}' "$WORK/server.log")
export COFFER_ADDR=https://127.0.0.1:$PORT COFFER_CACERT=$WORK/data/tls/ca.pem HOME=$WORK/home
"$BIN" login -u admin --password-stdin <<<"$password" >/dev/null

if [ -n "${COFFER_SOAK_RATE:-}" ]; then
  rate=$COFFER_SOAK_RATE
else
  # The mix's peak from the read and write peaks at 16 connections: 1 / (0.8/R + 0.2/W).
  "$BIN" --json bench --duration 10 --connections 16 --writers 16 >"$WORK/peak.json"
  rate=$(python3 - "$WORK/peak.json" <<'PY'
import json, sys
m = {r["kind"]: r["requests_per_second"] for r in json.load(open(sys.argv[1]))}
peak = 1 / (0.8 / m["read"] + 0.2 / m["write"])
print(int(peak / 2))
PY
)
fi
echo "soak: $MINUTES min at $rate req/s (half the measured peak of the mix)"

( while kill -0 $server 2>/dev/null; do
    rss=$(awk '/^VmRSS/ {print $2}' /proc/$server/status)
    fds=$(ls /proc/$server/fd | wc -l)
    echo "$SECONDS $rss $fds"
    sleep 10
  done ) >"$WORK/samples.txt" &
sampler=$!
COFFER_SOAK_PASSWORD=$password "$BIN" bench --soak-minutes "$MINUTES" --rate "$rate" \
  | tee "$WORK/minutes.jsonl"
kill $sampler 2>/dev/null || true

python3 - "$WORK/samples.txt" "$WORK/minutes.jsonl" "$rate" <<'PY'
import json, sys
def slope(xs, ys):
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else 0.0
samples = [tuple(map(float, l.split())) for l in open(sys.argv[1]) if l.strip()]
minutes = [json.loads(l) for l in open(sys.argv[2]) if l.strip()]
# Slopes after the warm-up (connections opening, caches filling): from minute 2, or the
# last two thirds of a shorter run.
warm = min(2.0, len(minutes) / 3)
start = samples[0][0]
samples = [(s[0] - start, s[1], s[2]) for s in samples if (s[0] - start) / 60 >= warm] or samples
minutes = [m for m in minutes if m["minute"] > warm] or minutes
t = [s[0] / 60 for s in samples]
rss = [s[1] / 1024 for s in samples]
fds = [s[2] for s in samples]
mins = [m["minute"] for m in minutes]
print(f"\nrate asked {sys.argv[3]} req/s; achieved {sum(m['requests_per_second'] for m in minutes)/len(minutes):.0f} req/s on average; "
      f"errors {sum(m['errors'] for m in minutes)}; logins {sum(m['logins'] for m in minutes)}")
print(f"(slopes and figures from minute {warm:g} on)")
print("| measure | first | last | min | max | slope per minute |")
print("|---|---|---|---|---|---|")
print(f"| server RSS (MiB) | {rss[0]:.1f} | {rss[-1]:.1f} | {min(rss):.1f} | {max(rss):.1f} | {slope(t, rss):+.3f} |")
print(f"| open files | {fds[0]:.0f} | {fds[-1]:.0f} | {min(fds):.0f} | {max(fds):.0f} | {slope(t, fds):+.3f} |")
for k in ["read_p99_ms", "write_p99_ms", "login_p99_ms"]:
    v = [m[k] for m in minutes]
    print(f"| {k.replace('_ms','')} (ms) | {v[0]:.2f} | {v[-1]:.2f} | {min(v):.2f} | {max(v):.2f} | {slope(mins, v):+.4f} |")
PY
