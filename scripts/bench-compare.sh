#!/usr/bin/env bash
# Coffer against a bare TLS 1.3 nginx on the same machine, measured by the same wrk: an
# audited secret read (GET /v1/projects/P/envs/E/params/NAME with an API key as
# `Authorization: Bearer`, keep-alive) against nginx returning a JSON body of the same size.
#
#   bash scripts/bench-compare.sh [DURATION]
#
# DURATION is seconds per measurement (default 10). For each connection count (1, 16, 64)
# nginx is measured, then Coffer, in the same sitting; the table gives both rates and
# latencies and Coffer's share of nginx's. Targets: Coffer >= 35 % of nginx's rate at 16
# connections, Coffer's median at 1 connection within 1.8x of nginx's.
#
# COFFER_BIN measures another build (e.g. an older commit's) with the same procedure;
# without it the release binary is built first. The server inherits this script's
# environment, so server settings (COFFER_* variables) pass straight through, e.g.
#   COFFER_BIN=/tmp/base/target/release/coffer bash scripts/bench-compare.sh 10
# COFFER_SERVER_ARGS adds arguments to `coffer server`. Also: COFFER_BENCH_DIR (work
# directory, recreated), COFFER_BENCH_PORT / COFFER_BENCH_NGINX_PORT (127.0.0.1 ports),
# COFFER_BENCH_CONNECTIONS ("1 16 64"), COFFER_BENCH_WRK_THREADS (1).
#
# Needs nginx (Debian: nginx-light), wrk, curl and openssl; as root, missing nginx-light and
# wrk are installed with apt-get. Any non-2xx answer or socket error fails the script.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-10}
WORK=${COFFER_BENCH_DIR:-/tmp/coffer-bench-compare}
PORT=${COFFER_BENCH_PORT:-8320}
NGINX_PORT=${COFFER_BENCH_NGINX_PORT:-8321}
read -ra CONNS <<<"${COFFER_BENCH_CONNECTIONS:-1 16 64}"
THREADS=${COFFER_BENCH_WRK_THREADS:-1}
read -ra SERVER_ARGS <<<"${COFFER_SERVER_ARGS:-}"
PROJECT=bench ENV=default PARAM=BENCH_SECRET

die() { echo "bench-compare: $*" >&2; exit 1; }
find_nginx() { command -v nginx || { [ -x /usr/sbin/nginx ] && echo /usr/sbin/nginx; } || true; }

# --- tools -------------------------------------------------------------------------------
NGINX=$(find_nginx)
if [ -z "$NGINX" ] || ! command -v wrk >/dev/null; then
  [ "$(id -u)" = 0 ] || die "needs nginx and wrk: sudo apt-get install nginx-light wrk"
  echo "installing nginx-light and wrk..." >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq nginx-light wrk >/dev/null 2>&1 ||
    { apt-get update -qq >/dev/null && apt-get install -y -qq nginx-light wrk >/dev/null; }
  NGINX=$(find_nginx)
  [ -n "$NGINX" ] || die "nginx is still missing after apt-get install"
fi
for t in wrk curl openssl awk; do command -v "$t" >/dev/null || die "needs $t"; done

if [ -z "${COFFER_BIN:-}" ]; then
  cargo build --release --locked -p coffer-cli
fi
BIN=${COFFER_BIN:-$PWD/target/release/coffer}
[ -x "$BIN" ] || die "no coffer binary at $BIN"

# --- fresh work directory; servers of an earlier run of this script are stopped ----------
for f in "$WORK/coffer.pid" "$WORK/nginx/nginx.pid"; do
  pid=$(cat "$f" 2>/dev/null) || continue
  if grep -qF "$WORK" "/proc/$pid/cmdline" 2>/dev/null; then kill "$pid" 2>/dev/null || true; fi
done
sleep 0.2
for p in "$PORT" "$NGINX_PORT"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then die "127.0.0.1:$p is in use"; fi
done
rm -rf "$WORK" && mkdir -p "$WORK/nginx" "$WORK/home"

pids=()
cleanup() {
  [ ${#pids[@]} -gt 0 ] && kill "${pids[@]}" 2>/dev/null
  wait 2>/dev/null
  true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- Coffer ------------------------------------------------------------------------------
"$BIN" server --dev --data-dir "$WORK/data" --listen "127.0.0.1:$PORT" "${SERVER_ARGS[@]}" \
  >"$WORK/server.log" 2>&1 &
pids+=($!)
echo $! >"$WORK/coffer.pid"
for _ in $(seq 1 150); do
  grep -q "listening" "$WORK/server.log" 2>/dev/null && break
  kill -0 "${pids[0]}" 2>/dev/null || { cat "$WORK/server.log" >&2; die "coffer server exited"; }
  sleep 0.2
done
grep -q "listening" "$WORK/server.log" || { cat "$WORK/server.log" >&2; die "coffer server did not start"; }
password=$(awk '$1 == "password:" {print $2; exit}' "$WORK/server.log")
[ -n "$password" ] || die "no bootstrap password in $WORK/server.log"
TLS=$WORK/data/tls # the dev server's own CA and certificate, also nginx's
if [ -f "$TLS/ca.pem" ]; then CA=$TLS/ca.pem; else CA=${COFFER_CACERT:?the server has its own certificate: set COFFER_CACERT}; fi
export COFFER_ADDR=https://127.0.0.1:$PORT COFFER_CACERT=$CA HOME=$WORK/home
"$BIN" login -u admin --password-stdin <<<"$password" >/dev/null
"$BIN" project create "$PROJECT" >/dev/null
"$BIN" param set "$PARAM" "$(printf 'x%.0s' $(seq 1 64))" --secret -p "$PROJECT" -e "$ENV" >/dev/null
KEY=$("$BIN" apikey create bench-compare --role contributor --read-only --project "$PROJECT" \
  --expires-in 1d 2>"$WORK/apikey.log" | tail -n1) || true
[ -n "$KEY" ] || { cat "$WORK/apikey.log" >&2; die "no API key"; }
AUTH="Authorization: Bearer $KEY"
PATH_=/v1/projects/$PROJECT/envs/$ENV/params/$PARAM
COFFER_URL=https://127.0.0.1:$PORT$PATH_
NGINX_URL=https://127.0.0.1:$NGINX_PORT$PATH_

code=$(curl -sS --cacert "$CA" -H "$AUTH" -D "$WORK/coffer.headers" -o "$WORK/body.json" \
  -w '%{http_code}' "$COFFER_URL")
[ "$code" = 200 ] || { cat "$WORK/body.json" >&2; die "Coffer answered $code to the read"; }
BODY_BYTES=$(wc -c <"$WORK/body.json")
CTYPE=$(awk -F': *' 'tolower($1) == "content-type" {sub(/\r$/, "", $2); print $2}' "$WORK/coffer.headers")

# --- nginx: same certificate, same body size, 2 workers, TLS 1.3 only ------------------
NG=$WORK/nginx
CERT=$TLS/server.pem CERT_KEY=$TLS/server-key.pem NGINX_CA=$TLS/ca.pem
if [ ! -f "$CERT" ] || [ ! -f "$CERT_KEY" ]; then
  CERT=$NG/cert.pem CERT_KEY=$NG/key.pem NGINX_CA=$NG/cert.pem
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=bench \
    -addext subjectAltName=IP:127.0.0.1 -keyout "$CERT_KEY" -out "$CERT" 2>/dev/null
fi
if grep -q "[\$'\\\\]" "$WORK/body.json"; then
  # Characters nginx would interpolate or unescape in `return`: serve the file instead.
  mkdir -p "$NG/html" && cp "$WORK/body.json" "$NG/html/body.json"
  ANSWER="root $NG/html; open_file_cache max=16; etag off; rewrite ^ /body.json break;"
else
  ANSWER="return 200 '$(cat "$WORK/body.json")';"
fi
cat >"$NG/nginx.conf" <<EOF
worker_processes 2;
daemon off;
pid $NG/nginx.pid;
error_log $NG/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $NG/body;
  proxy_temp_path $NG/proxy;
  fastcgi_temp_path $NG/fastcgi;
  uwsgi_temp_path $NG/uwsgi;
  scgi_temp_path $NG/scgi;
  default_type ${CTYPE:-application/json};
  keepalive_timeout 75s;
  keepalive_requests 100000000;
  server {
    listen 127.0.0.1:$NGINX_PORT ssl;
    ssl_certificate $CERT;
    ssl_certificate_key $CERT_KEY;
    ssl_protocols TLSv1.3;
    location / { $ANSWER }
  }
}
EOF
"$NGINX" -q -t -c "$NG/nginx.conf" -p "$NG" 2>"$NG/test.log" || { cat "$NG/test.log" >&2; die "bad nginx config"; }
"$NGINX" -c "$NG/nginx.conf" -p "$NG" 2>>"$NG/error.log" &
pids+=($!)
for _ in $(seq 1 50); do
  curl -s -o /dev/null --cacert "$NGINX_CA" "$NGINX_URL" && break
  kill -0 "${pids[1]}" 2>/dev/null || { cat "$NG/error.log" >&2; die "nginx exited"; }
  sleep 0.1
done
code=$(curl -sS --cacert "$NGINX_CA" -D "$WORK/nginx.headers" -o "$WORK/nginx-body.json" \
  -w '%{http_code}' "$NGINX_URL")
[ "$code" = 200 ] || die "nginx answered $code"
cmp -s "$WORK/body.json" "$WORK/nginx-body.json" || die "nginx's body differs from Coffer's"

# --- facts -------------------------------------------------------------------------------
commit=$(git -C "$(dirname "$BIN")" describe --always --dirty 2>/dev/null || echo unknown)
cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo 2>/dev/null || true)
echo "machine: $(nproc) CPUs${cpu:+ ($cpu)}, $(uname -sr), $(date -u '+%Y-%m-%d %H:%M UTC');" \
  "$("$BIN" --version) ($commit); $("$NGINX" -v 2>&1 | sed 's/.*version: //'), 2 workers;" \
  "$(wrk -v 2>&1 | awk 'NR == 1 {print $1, $2}'), -t$THREADS, ${DURATION}s per run;" \
  "$(openssl version | awk '{print $1, $2}')"
cipher() {
  openssl s_client -connect "127.0.0.1:$1" -tls1_3 </dev/null 2>/dev/null |
    awk '/^New, / {sub(",", "", $2); print $2, $NF; exit}'
}
hdr() { awk 'NR > 1 && /^\r?$/ {exit} {n += length($0) + 1} END {print n}' "$1"; }
echo "request: GET $PATH_ (audited secret read, API key), keep-alive;" \
  "answers: Coffer $(hdr "$WORK/coffer.headers")+$BODY_BYTES bytes, nginx" \
  "$(hdr "$WORK/nginx.headers")+$(wc -c <"$WORK/nginx-body.json") bytes (headers+body);" \
  "TLS: Coffer $(cipher "$PORT"), nginx $(cipher "$NGINX_PORT")"
[ -n "${COFFER_SERVER_ARGS:-}" ] && echo "coffer server args: $COFFER_SERVER_ARGS"
# The server's COFFER_ settings (values that may be secret are hidden).
env | grep -E '^COFFER_' | grep -vE '^COFFER_(ADDR|CACERT|BIN|SERVER_ARGS|BENCH_[A-Z_]*)=' |
  sed -E 's/^([A-Z0-9_]*(KEY|PASSWORD|SECRET|TOKEN|URL|PIN)[A-Z0-9_]*)=.*/\1=(hidden)/; s/^/server env: /' || true

# --- measurements ------------------------------------------------------------------------
# One wrk run; prints "req/s p50_ms p99_ms requests errors" and keeps wrk's output.
run_wrk() {
  local name=$1 url=$2 conns=$3 secs=$4 out
  out=$WORK/wrk-$name-$conns.txt
  wrk -t"$THREADS" -c"$conns" -d"${secs}s" --latency -H "$AUTH" "$url" >"$out" 2>&1 ||
    { cat "$out" >&2; die "wrk failed against $name"; }
  awk '
    function ms(v) {
      if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0
      if (v ~ /m$/) return v * 60000; if (v ~ /s$/) return v * 1000; return v + 0
    }
    $1 == "50%" {p50 = ms($2)} $1 == "99%" {p99 = ms($2)}
    / requests in / {n = $1}
    /^Requests\/sec:/ {rps = $2}
    /Non-2xx or 3xx responses:/ {err += $NF}
    /Socket errors:/ {gsub(",", ""); err += $4 + $6 + $8 + $10}
    END {printf "%.0f %.3f %.3f %d %d\n", rps, p50, p99, n, err}
  ' "$out"
}

# Warm up both (connections, the server's caches); not reported.
run_wrk nginx-warmup "$NGINX_URL" 4 2 >/dev/null
run_wrk coffer-warmup "$COFFER_URL" 4 2 >/dev/null

rows=() failed=0
for c in "${CONNS[@]}"; do
  run_wrk nginx "$NGINX_URL" "$c" "$DURATION" >"$WORK/result"
  read -r n_rps n_p50 n_p99 n_req n_err <"$WORK/result"
  run_wrk coffer "$COFFER_URL" "$c" "$DURATION" >"$WORK/result"
  read -r c_rps c_p50 c_p99 c_req c_err <"$WORK/result"
  for r in "nginx $n_req $n_err" "coffer $c_req $c_err"; do
    read -r name req err <<<"$r"
    if [ "$err" -gt 0 ] || [ "$req" -eq 0 ]; then
      echo "!!! $name at $c connections: $req requests, $err failed (non-2xx or socket" \
        "errors); see $WORK/wrk-$name-$c.txt" >&2
      failed=1
    fi
  done
  rows+=("$c $n_rps $c_rps $n_p50 $c_p50 $n_p99 $c_p99")
done

printf '%s\n' "${rows[@]}" | awk '
  function r(a, b) { return a > 0 ? b / a : 0 }
  BEGIN {
    printf "%-11s | %11s | %12s | %7s | %9s | %10s | %9s | %9s | %10s\n", "connections",
      "nginx req/s", "coffer req/s", "ratio %", "nginx p50", "coffer p50", "p50 ratio",
      "nginx p99", "coffer p99"
    printf "%s\n", "------------|-------------|--------------|---------|-----------|------------|-----------|-----------|-----------"
  }
  {
    printf "%-11s | %11d | %12d | %7.1f | %7.3fms | %8.3fms | %8.2fx | %7.3fms | %8.3fms\n",
      $1, $2, $3, 100 * r($2, $3), $4, $5, r($4, $5), $6, $7
    if ($1 == 16) rate = sprintf("rate at 16 connections %.1f %% of nginx (target >= 35 %%): %s",
      100 * r($2, $3), 100 * r($2, $3) >= 35 ? "met" : "MISSED")
    if ($1 == 1) p50 = sprintf("median at 1 connection %.2fx nginx'"'"'s (target <= 1.8x): %s",
      r($4, $5), r($4, $5) <= 1.8 ? "met" : "MISSED")
  }
  END { if (rate != "") print rate; if (p50 != "") print p50 }'
if [ "$failed" = 1 ]; then
  die "FAILED: some requests did not succeed; the numbers above are not valid"
fi
