#!/usr/bin/env bash
# Load comparison: slotd vs nginx vs haproxy vs a bare Pingora proxy, on one machine.
# See benches/load/README.md. `bash benches/load/compare.sh --help` for the options.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: bash benches/load/compare.sh [--no-build] [--swap-storm] [--rss] [--out DIR]

Fronts one fast nginx backend (return 200 "ok\n") with slotd, nginx, haproxy (if
installed) and a bare Pingora proxy, all on 127.0.0.1 with free ports, the proxies
pinned to one CPU and the load generator (wrk) plus backend pinned to another. Runs
wrk against each proxy in alternating rounds and prints, per proxy, the median over
rounds of req/s, p50/p99 latency, errors and proxy CPU time per request, then the
ratios slotd/nginx, slotd/haproxy, slotd/bare and bare/nginx (also as markdown).

Options:
  --no-build     use the binaries already in target/release (slotd, examples/bare-pingora)
  --swap-storm   per round, one more slotd run while staging and production are
                 swapped every 500 ms through the admin API; reports the throughput dip
  --rss          RSS of each proxy idle and holding RSS_CONNS idle keep-alive client
                 connections (benches/load/idle_conns.py); reports KiB per connection
  --out DIR      where the raw wrk outputs, logs and results go (default: a new
                 /tmp/slotd-load-results.XXXXXX, kept and printed at the end)
  -h, --help     this text

Environment:
  CONNS=50          wrk connections
  DURATION=10s      length of each measured run
  ROUNDS=3          alternating rounds (0: only the warm-up, e.g. with --rss)
  WARMUP=3s         warm-up run per proxy before the first round
  THREADS=1         worker threads (slotd, bare) / workers (nginx) / nbthread (haproxy)
  RSS_CONNS=10000   idle client connections held in --rss
  SWAP_INTERVAL=0.5 seconds between two swaps in --swap-storm
  PROXY_CPUS=0      CPU list the proxies are pinned to (taskset -c)
  LOAD_CPUS=1       CPU list of wrk, the backend, the swap loop and the idle clients
  SLOTD_LOG         passed to slotd (its log filter; slotd's default when unset)
  KEEP_TMP=1        keep the working folder (configs, logs of the proxies)

Requires: nginx, wrk, taskset, python3, curl (haproxy optional). On Debian/Ubuntu:
  apt-get install -y nginx haproxy wrk
EOF
}

BUILD=1
SWAP_STORM=0
RSS=0
OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --no-build) BUILD=0 ;;
        --swap-storm) SWAP_STORM=1 ;;
        --rss) RSS=1 ;;
        --out)
            [ $# -ge 2 ] || { echo "--out needs a folder" >&2; exit 2; }
            OUT="$2"
            shift
            ;;
        --out=*) OUT="${1#--out=}" ;;
        -h | --help) usage; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

CONNS=${CONNS:-50}
DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
WARMUP=${WARMUP:-3s}
THREADS=${THREADS:-1}
RSS_CONNS=${RSS_CONNS:-10000}
SWAP_INTERVAL=${SWAP_INTERVAL:-0.5}
PROXY_CPUS=${PROXY_CPUS:-0}
LOAD_CPUS=${LOAD_CPUS:-1}
HOST=bench.local

log() { printf '[compare] %s\n' "$*" >&2; }
die() { printf '[compare] error: %s\n' "$*" >&2; exit 1; }

# ---- requirements ----------------------------------------------------------------
missing=()
for tool in nginx wrk; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
    die "missing ${missing[*]}: install them with: apt-get install -y nginx haproxy wrk"
fi
for tool in taskset python3 curl getconf; do
    command -v "$tool" >/dev/null 2>&1 || die "missing $tool (taskset is in util-linux; apt-get install -y util-linux python3 curl)"
done
HAVE_HAPROXY=1
if ! command -v haproxy >/dev/null 2>&1; then
    HAVE_HAPROXY=0
    log "note: haproxy is not installed; skipping it (apt-get install -y haproxy)"
fi
NCPU=$(getconf _NPROCESSORS_ONLN)
if [ "$NCPU" -lt 2 ]; then
    log "warning: only $NCPU CPU; the proxy and the load generator share it, numbers are rough"
    PROXY_CPUS=0
    LOAD_CPUS=0
fi
CLK_TCK=$(getconf CLK_TCK)
NOFILE=$(ulimit -Hn)
if [ "$NOFILE" = unlimited ] || [ "$NOFILE" -gt 65536 ]; then NOFILE=65536; fi

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
SLOTD_BIN=$TARGET_DIR/release/slotd
BARE_BIN=$TARGET_DIR/release/examples/bare-pingora

# ---- processes and cleanup ---------------------------------------------------------
TMP=$(mktemp -d /tmp/slotd-load.XXXXXX)
if [ -z "$OUT" ]; then
    OUT=$(mktemp -d /tmp/slotd-load-results.XXXXXX)
fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
declare -a KILL_PIDS=()
declare -A KILL_SIG=()

# Remembers a process to stop on exit, with the signal that stops it at once; a
# process that has been waited for is forgotten (its pid may be reused).
track() { KILL_PIDS+=("$1"); KILL_SIG[$1]=$2; }
untrack() { unset 'KILL_SIG[$1]'; }

stop_pid() {
    local pid=$1 sig=${2:-TERM} i
    kill -0 "$pid" 2>/dev/null || return 0
    kill "-$sig" "$pid" 2>/dev/null || true
    for i in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
    wait "$pid" 2>/dev/null || true
    untrack "$pid"
}

cleanup() {
    local rc=$? pid i
    trap - EXIT INT TERM
    # newest first: clients and load before the proxies, the backend last
    for ((i = ${#KILL_PIDS[@]} - 1; i >= 0; i--)); do
        pid=${KILL_PIDS[$i]}
        [ -n "${KILL_SIG[$pid]:-}" ] || continue
        stop_pid "$pid" "${KILL_SIG[$pid]}"
    done
    if [ "${KEEP_TMP:-0}" = 1 ]; then
        log "working folder kept: $TMP"
    else
        rm -rf "$TMP"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- python helpers (wrk parsing, report) ------------------------------------------
cat >"$TMP/helper.py" <<'PY'
import json, re, statistics, sys

UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}

def ms(v):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", v)
    if not m:
        raise ValueError(f"latency {v!r}")
    return float(m.group(1)) * UNITS[m.group(2)]

def parse(path):
    text = open(path).read()
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m|h)", text)
    if not m:
        print(f"cannot parse wrk output {path}:\n{text}", file=sys.stderr)
        sys.exit(1)
    requests, secs = int(m.group(1)), ms(m.group(2) + m.group(3)) / 1000
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    p50 = re.search(r"^\s+50%\s+(\S+)", text, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", text, re.M)
    p50 = ms(p50.group(1)) if p50 else float("nan")
    p99 = ms(p99.group(1)) if p99 else float("nan")
    errors = 0
    s = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if s:
        errors += sum(int(x) for x in s.groups())
    n = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if n:
        errors += int(n.group(1))
    print(requests, rps, p50, p99, errors, secs)

def swaps(path):
    done = failed = other = 0
    try:
        lines = open(path).read().splitlines()
    except FileNotFoundError:
        lines = []
    for line in lines:
        body, _, code = line.rpartition("\t")
        try:
            state = json.loads(body).get("state")
        except ValueError:
            state = None
        if code == "200" and state == "completed":
            done += 1
        elif code == "200" and state == "failed":
            failed += 1
        else:
            other += 1
    print(done, failed, other)

def med(xs):
    return statistics.median(xs) if xs else float("nan")

def fmt(v, nd=1):
    return "-" if v != v else f"{v:,.{nd}f}"

def ratio(a, b):
    return float("nan") if not b or a != a or b != b else a / b

def table(headers, rows, md):
    cells = [headers] + rows
    if md:
        out = ["| " + " | ".join(headers) + " |",
               "|" + "|".join("---" if i == 0 else "---:" for i in range(len(headers))) + "|"]
        out += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(out)
    w = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "  ".join(c.ljust(w[i]) if i == 0 else c.rjust(w[i]) for i, c in enumerate(r))
    return "\n".join([line(headers)] + [line(r) for r in rows])

def report(tsv, clk_tck, meta):
    clk = float(clk_tck)
    runs = {}
    for line in open(tsv):
        f = line.rstrip("\n").split("\t")
        proxy, kind, rnd, req, rps, p50, p99, err, ticks, secs = f[:10]
        extra = f[10:]
        req = int(req)
        cpu_us = float(ticks) / clk * 1e6
        r = dict(rps=float(rps), p50=float(p50), p99=float(p99), err=int(err),
                 cpu=cpu_us / req if req else float("nan"),
                 cpupct=100 * cpu_us / 1e6 / float(secs) if float(secs) else float("nan"),
                 extra=extra)
        runs.setdefault((proxy, kind), []).append(r)
    order = [p for p in ("slotd", "nginx", "haproxy", "bare") if (p, "steady") in runs]
    m = {p: {k: med([r[k] for r in runs[(p, "steady")]]) for k in ("rps", "p50", "p99", "err", "cpu", "cpupct")}
         for p in order}
    tot_err = {p: sum(r["err"] for r in runs[(p, "steady")]) for p in order}
    n_rounds = {p: len(runs[(p, "steady")]) for p in order}
    print()
    print(f"== Steady load ({meta}); median of {max(n_rounds.values()) if n_rounds else 0} round(s) ==")
    headers = ["proxy", "req/s", "p50 ms", "p99 ms", "errors", "errors (all rounds)", "CPU µs/req", "proxy CPU %"]
    rows = [[p, fmt(m[p]["rps"], 0), fmt(m[p]["p50"], 3), fmt(m[p]["p99"], 3), fmt(m[p]["err"], 0),
             str(tot_err[p]), fmt(m[p]["cpu"], 2), fmt(m[p]["cpupct"], 0)] for p in order]
    for md in (False, True):
        print()
        print(table(headers, rows, md))
    pairs = [("slotd", "nginx"), ("slotd", "haproxy"), ("slotd", "bare"), ("bare", "nginx"), ("bare", "haproxy")]
    pairs = [(a, b) for a, b in pairs if a in m and b in m]
    print()
    print("== Ratios of the medians (req/s: higher is better for the first; CPU µs/req and p99: lower is better) ==")
    rheaders = ["ratio", "req/s", "CPU µs/req", "p99"]
    rrows = [[f"{a}/{b}", fmt(ratio(m[a]["rps"], m[b]["rps"]), 2), fmt(ratio(m[a]["cpu"], m[b]["cpu"]), 2),
              fmt(ratio(m[a]["p99"], m[b]["p99"]), 2)] for a, b in pairs]
    for md in (False, True):
        print()
        print(table(rheaders, rrows, md))
    storm = runs.get(("slotd", "storm"))
    if storm and "slotd" in m:
        s = {k: med([r[k] for r in storm]) for k in ("rps", "p50", "p99", "err", "cpu", "cpupct")}
        done = sum(int(r["extra"][0]) for r in storm)
        failed = sum(int(r["extra"][1]) for r in storm)
        other = sum(int(r["extra"][2]) for r in storm)
        errs = sum(r["err"] for r in storm)
        rr = ratio(s["rps"], m["slotd"]["rps"])
        print()
        print(f"== Swap storm: slotd while staging<->production swap continuously; median of {len(storm)} run(s) ==")
        sh = ["slotd", "req/s", "p50 ms", "p99 ms", "errors (all runs)", "CPU µs/req", "swaps completed", "swaps failed", "swap calls not 200"]
        srows = [["steady", fmt(m["slotd"]["rps"], 0), fmt(m["slotd"]["p50"], 3), fmt(m["slotd"]["p99"], 3),
                  str(tot_err["slotd"]), fmt(m["slotd"]["cpu"], 2), "-", "-", "-"],
                 ["swap storm", fmt(s["rps"], 0), fmt(s["p50"], 3), fmt(s["p99"], 3), str(errs), fmt(s["cpu"], 2),
                  str(done), str(failed), str(other)]]
        for md in (False, True):
            print()
            print(table(sh, srows, md))
        print()
        print(f"storm/steady req/s = {fmt(rr, 3)} (throughput dip {fmt((1 - rr) * 100, 1)}%), "
              f"p99 storm/steady = {fmt(ratio(s['p99'], m['slotd']['p99']), 2)}, "
              f"{done} swap(s) completed in {len(storm)} run(s)")

def rss(tsv, conns):
    rows = []
    for line in open(tsv):
        proxy, idle, loaded, held, opened, failed, after = line.rstrip("\n").split("\t")
        idle, loaded, held, after = int(idle), int(loaded), int(held), int(after)
        per = (loaded - idle) / held if held else float("nan")
        rows.append([proxy, fmt(idle / 1024, 1), fmt(loaded / 1024, 1), opened, failed, str(held), fmt(per, 2),
                     fmt(after / 1024, 1)])
    print()
    print(f"== Memory: RSS idle and holding up to {conns} idle keep-alive client connections ==")
    print("(held = connections the proxy still had open when RSS was read; KiB/conn = (loaded - idle) / held)")
    headers = ["proxy", "RSS idle MiB", "RSS loaded MiB", "client conns opened", "failed", "held", "KiB/conn", "RSS after close MiB"]
    for md in (False, True):
        print()
        print(table(headers, rows, md))

cmd = sys.argv[1]
if cmd == "parse":
    parse(sys.argv[2])
elif cmd == "swaps":
    swaps(sys.argv[2])
elif cmd == "report":
    report(sys.argv[2], sys.argv[3], sys.argv[4])
elif cmd == "rss":
    rss(sys.argv[2], sys.argv[3])
PY
helper() { python3 "$TMP/helper.py" "$@"; }

free_ports() {
    python3 -c '
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
' "$1"
}

# pid and its descendants
proc_tree() {
    local pid=$1 child
    [ -d "/proc/$pid" ] || return 0
    echo "$pid"
    for child in $(cat /proc/"$pid"/task/*/children 2>/dev/null); do
        proc_tree "$child"
    done
}

# utime+stime (clock ticks) of a process tree, all threads
cpu_ticks() {
    local total=0 p stat rest
    for p in $(proc_tree "$1"); do
        stat=$(cat "/proc/$p/stat" 2>/dev/null) || continue
        rest=${stat##*) }          # fields from 3 (state) on; comm may hold spaces
        # shellcheck disable=SC2086
        set -- $rest
        total=$((total + ${12} + ${13}))   # fields 14 and 15
    done
    echo "$total"
}

# VmRSS (KiB) of a process tree
rss_kib() {
    local total=0 p v
    for p in $(proc_tree "$1"); do
        v=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || true)
        total=$((total + ${v:-0}))
    done
    echo "$total"
}

# Polls until http://127.0.0.1:$port/ answers 200 for Host $HOST, or fails.
wait_ready() {
    local name=$1 port=$2 pid=$3 deadline=$((SECONDS + ${4:-30})) code
    while :; do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$TMP/$name.log" >&2 || true
            die "$name exited during start-up (log: $TMP/$name.log)"
        fi
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 -H "Host: $HOST" "http://127.0.0.1:$port/" || true)
        [ "$code" = 200 ] && return 0
        if [ "$SECONDS" -ge "$deadline" ]; then
            tail -n 20 "$TMP/$name.log" >&2 || true
            die "$name did not answer 200 on port $port in time (last status: ${code:-none}; log: $TMP/$name.log)"
        fi
        sleep 0.1
    done
}

# ---- build ---------------------------------------------------------------------------
if [ "$BUILD" = 1 ]; then
    log "building slotd and the bare-pingora example (release) ..."
    (cd "$ROOT" && cargo build --release --bin slotd --example bare-pingora)
fi
[ -x "$SLOTD_BIN" ] || die "no $SLOTD_BIN: build it (cargo build --release) or drop --no-build"
[ -x "$BARE_BIN" ] || die "no $BARE_BIN: build it (cargo build --release --example bare-pingora) or drop --no-build"

read -r P_BACKEND P_SLOTD P_ADMIN P_NGINX P_HAPROXY P_BARE <<<"$(free_ports 6)"
declare -A PORT=([slotd]=$P_SLOTD [nginx]=$P_NGINX [haproxy]=$P_HAPROXY [bare]=$P_BARE)
declare -A PID=()
PROXIES=(slotd nginx)
[ "$HAVE_HAPROXY" = 1 ] && PROXIES+=(haproxy)
PROXIES+=(bare)

nginx_common() { # $1: prefix folder
    cat <<EOF
daemon off;
master_process on;
pid $1/nginx.pid;
error_log $1/error.log warn;
worker_rlimit_nofile $NOFILE;
EOF
}
nginx_http_common() {
    cat <<EOF
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path $1/body;
    proxy_temp_path $1/proxy;
    fastcgi_temp_path $1/fastcgi;
    uwsgi_temp_path $1/uwsgi;
    scgi_temp_path $1/scgi;
EOF
}

# ---- backend ---------------------------------------------------------------------------
mkdir -p "$TMP/backend"
{
    nginx_common "$TMP/backend"
    echo "worker_processes 1;"
    echo "events { worker_connections 4096; }"
    echo "http {"
    nginx_http_common "$TMP/backend"
    cat <<EOF
    server {
        listen 127.0.0.1:$P_BACKEND backlog=4096;
        location / { return 200 "ok\n"; }
    }
}
EOF
} >"$TMP/backend/nginx.conf"
(ulimit -n "$NOFILE"; exec taskset -c "$LOAD_CPUS" nginx -p "$TMP/backend" -c "$TMP/backend/nginx.conf" -e "$TMP/backend/error.log") \
    >"$TMP/backend.log" 2>&1 &
PID[backend]=$!
track "${PID[backend]}" TERM
wait_ready backend "$P_BACKEND" "${PID[backend]}"
log "backend nginx on 127.0.0.1:$P_BACKEND (CPU $LOAD_CPUS)"

# ---- slotd -----------------------------------------------------------------------------
mkdir -p "$TMP/slotd/state"
cat >"$TMP/slotd/slotd.toml" <<EOF
[proxy]
listen = ["127.0.0.1:$P_SLOTD"]
threads = $THREADS

[admin]
listen = "127.0.0.1:$P_ADMIN"
insecure_no_auth = true

[state]
backend = "file"
path = "state/slotd-state.json"

[[app]]
name = "bench"

[app.warmup]
path = "/"
statuses = [200]
timeout = "2s"
requests = 1
request_timeout = "1s"
retry_interval = "50ms"

[[app.slot]]
name = "production"
hosts = ["$HOST"]
instances = ["127.0.0.1:$P_BACKEND"]
version = "v1"

[[app.slot]]
name = "staging"
hosts = ["staging.$HOST"]
instances = ["127.0.0.1:$P_BACKEND"]
version = "v2"
EOF
"$SLOTD_BIN" check --config "$TMP/slotd/slotd.toml" >"$TMP/slotd-check.log" 2>&1 ||
    { cat "$TMP/slotd-check.log" >&2; die "slotd check rejected the generated config"; }
(
    ulimit -n "$NOFILE"
    if [ -n "${SLOTD_LOG:-}" ]; then export SLOTD_LOG; fi
    exec taskset -c "$PROXY_CPUS" "$SLOTD_BIN" serve --config "$TMP/slotd/slotd.toml"
) >"$TMP/slotd.log" 2>&1 &
PID[slotd]=$!
track "${PID[slotd]}" INT

# ---- nginx as a proxy --------------------------------------------------------------------
mkdir -p "$TMP/nginx"
{
    nginx_common "$TMP/nginx"
    echo "worker_processes $THREADS;"
    echo "events { worker_connections $((NOFILE - 100)); }"
    echo "http {"
    nginx_http_common "$TMP/nginx"
    cat <<EOF
    upstream backend {
        server 127.0.0.1:$P_BACKEND;
        keepalive 64;
    }
    server {
        listen 127.0.0.1:$P_NGINX backlog=4096;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
} >"$TMP/nginx/nginx.conf"
(ulimit -n "$NOFILE"; exec taskset -c "$PROXY_CPUS" nginx -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" -e "$TMP/nginx/error.log") \
    >"$TMP/nginx.log" 2>&1 &
PID[nginx]=$!
track "${PID[nginx]}" TERM

# ---- haproxy -----------------------------------------------------------------------------
# haproxy needs two descriptors per connection and refuses a maxconn the open-files
# limit cannot cover.
HAPROXY_MAXCONN=$(((NOFILE - 200) / 2))
if [ "$HAVE_HAPROXY" = 1 ]; then
    cat >"$TMP/haproxy.cfg" <<EOF
global
    nbthread $THREADS
    maxconn $HAPROXY_MAXCONN

defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    http-reuse always

frontend fe
    bind 127.0.0.1:$P_HAPROXY
    default_backend be

backend be
    server s1 127.0.0.1:$P_BACKEND
EOF
    haproxy -c -f "$TMP/haproxy.cfg" >"$TMP/haproxy-check.log" 2>&1 ||
        { cat "$TMP/haproxy-check.log" >&2; die "haproxy rejected the generated config"; }
    (ulimit -n "$NOFILE"; exec taskset -c "$PROXY_CPUS" haproxy -db -f "$TMP/haproxy.cfg") >"$TMP/haproxy.log" 2>&1 &
    PID[haproxy]=$!
    track "${PID[haproxy]}" TERM
fi

# ---- bare Pingora ---------------------------------------------------------------------------
mkdir -p "$TMP/bare"
(
    ulimit -n "$NOFILE"
    exec taskset -c "$PROXY_CPUS" "$BARE_BIN" --listen "127.0.0.1:$P_BARE" \
        --upstream "127.0.0.1:$P_BACKEND" --threads "$THREADS" --runtime-dir "$TMP/bare"
) >"$TMP/bare.log" 2>&1 &
PID[bare]=$!
track "${PID[bare]}" INT

for p in "${PROXIES[@]}"; do
    wait_ready "$p" "${PORT[$p]}" "${PID[$p]}"
    log "$p on 127.0.0.1:${PORT[$p]} (pid ${PID[$p]}, CPU $PROXY_CPUS)"
done
# slotd really routes: its answers carry x-slot
curl -s -D - -o /dev/null -H "Host: $HOST" "http://127.0.0.1:$P_SLOTD/" | grep -qi '^x-slot: production' ||
    die "slotd's answer has no x-slot: production header"

# ---- runs ----------------------------------------------------------------------------------
RESULTS=$OUT/results.tsv
: >"$RESULTS"
SWAP_URL="http://127.0.0.1:$P_ADMIN/v1/apps/bench/swap"

cat >"$TMP/swap_loop.sh" <<'EOF'
# swap_loop.sh URL STOPFILE LOG INTERVAL: POST a swap until STOPFILE exists
url=$1 stop=$2 out=$3 interval=$4
while [ ! -e "$stop" ]; do
    body=$(curl -s --max-time 10 -X POST "$url" -H 'content-type: application/json' \
        -d '{"source":"staging","target":"production"}' -w '\t%{http_code}' || true)
    printf '%s\n' "${body//$'\n'/ }" >>"$out"
    sleep "$interval"
done
EOF

# run_wrk PROXY KIND ROUND DURATION: one wrk run; appends a result row unless KIND=warmup
run_wrk() {
    local proxy=$1 kind=$2 round=$3 dur=$4 file before after parsed extra=""
    local pid=${PID[$proxy]} port=${PORT[$proxy]} loop_pid="" stop wrk_pid
    file=$OUT/wrk-$proxy-$kind-r$round.txt
    kill -0 "$pid" 2>/dev/null || die "$proxy (pid $pid) is gone; see $TMP/$proxy.log"
    if [ "$kind" = storm ]; then
        stop=$TMP/swap-stop-r$round
        rm -f "$stop"
        : >"$OUT/swaps-r$round.log"
        taskset -c "$LOAD_CPUS" bash "$TMP/swap_loop.sh" "$SWAP_URL" "$stop" "$OUT/swaps-r$round.log" "$SWAP_INTERVAL" &
        loop_pid=$!
        track "$loop_pid" TERM
    fi
    before=$(cpu_ticks "$pid")
    # in the background, so that a signal to this script is handled at once
    taskset -c "$LOAD_CPUS" wrk -t1 -c"$CONNS" -d"$dur" --latency -H "Host: $HOST" \
        "http://127.0.0.1:$port/" >"$file" 2>&1 &
    wrk_pid=$!
    track "$wrk_pid" TERM
    wait "$wrk_pid" || true
    untrack "$wrk_pid"
    after=$(cpu_ticks "$pid")
    if [ -n "$loop_pid" ]; then
        touch "$stop"
        wait "$loop_pid" 2>/dev/null || true
        untrack "$loop_pid"
        extra=$'\t'$(helper swaps "$OUT/swaps-r$round.log" | tr ' ' '\t')
    fi
    kill -0 "$pid" 2>/dev/null || die "$proxy (pid $pid) died during the run; see $TMP/$proxy.log and $file"
    parsed=$(helper parse "$file")
    # shellcheck disable=SC2086
    set -- $parsed
    log "$(printf '%-8s %-6s r%s: %10.0f req/s  p50 %7.3f ms  p99 %7.3f ms  errors %s  CPU %s ticks' \
        "$proxy" "$kind" "$round" "$2" "$3" "$4" "$5" "$((after - before))")${extra:+  swaps(ok failed other):${extra//$'\t'/ }}"
    if [ "$kind" != warmup ]; then
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s%s\n' "$proxy" "$kind" "$round" "$1" "$2" "$3" "$4" "$5" \
            "$((after - before))" "$6" "$extra" >>"$RESULTS"
    fi
}

log "warm-up: $WARMUP per proxy"
for p in "${PROXIES[@]}"; do
    run_wrk "$p" warmup 0 "$WARMUP"
done
for r in $(seq "$ROUNDS"); do
    log "round $r of $ROUNDS ($DURATION per run, $CONNS connections)"
    for p in "${PROXIES[@]}"; do
        run_wrk "$p" steady "$r" "$DURATION"
    done
    if [ "$SWAP_STORM" = 1 ]; then
        run_wrk slotd storm "$r" "$DURATION"
    fi
done

if [ "$ROUNDS" -gt 0 ]; then
    META="CONNS=$CONNS DURATION=$DURATION THREADS=$THREADS; proxies on CPU $PROXY_CPUS, wrk and backend on CPU $LOAD_CPUS"
    helper report "$RESULTS" "$CLK_TCK" "$META" | tee "$OUT/report.txt"
fi

# ---- memory ---------------------------------------------------------------------------------
if [ "$RSS" = 1 ]; then
    RSS_TSV=$OUT/rss.tsv
    : >"$RSS_TSV"
    want=$RSS_CONNS
    if [ $((want + 200)) -gt "$NOFILE" ]; then
        want=$((NOFILE - 200))
        log "note: the open-files limit is $NOFILE; holding $want connections instead of $RSS_CONNS"
    fi
    for p in "${PROXIES[@]}"; do
        pid=${PID[$p]}
        n=$want
        if [ "$p" = haproxy ] && [ "$n" -gt $((HAPROXY_MAXCONN - 100)) ]; then
            n=$((HAPROXY_MAXCONN - 100))
            log "note: haproxy's maxconn is $HAPROXY_MAXCONN (open-files limit $NOFILE); holding $n connections"
        fi
        idle=$(rss_kib "$pid")
        out=$TMP/idle-$p.out
        taskset -c "$LOAD_CPUS" python3 "$HERE/idle_conns.py" --port "${PORT[$p]}" --conns "$n" \
            --host "$HOST" --until-signal >"$out" 2>&1 &
        cpid=$!
        track "$cpid" TERM
        deadline=$((SECONDS + 120))
        until grep -q '^ready' "$out"; do
            kill -0 "$cpid" 2>/dev/null || { cat "$out" >&2; die "idle_conns.py against $p exited early"; }
            [ "$SECONDS" -lt "$deadline" ] || die "idle_conns.py against $p not ready after 120 s"
            sleep 0.2
        done
        sleep 1 # let the proxy settle after the last response
        loaded=$(rss_kib "$pid")
        held=$(ss -Htn state established "( sport = :${PORT[$p]} )" 2>/dev/null | wc -l || echo 0)
        ready=$(grep '^ready' "$out" | head -n1)
        log "$p: RSS idle $idle KiB, with connections $loaded KiB, established $held (client: $ready)"
        opened=$(awk '{print $2}' <<<"$ready")
        failed=$(sed -n 's/.*failed=\([0-9]*\).*/\1/p' <<<"$ready")
        printf '%s\t%s\t%s\t%s\t%s\t%s' "$p" "$idle" "$loaded" "$held" "$opened" "${failed:-?}" >>"$RSS_TSV"
        stop_pid "$cpid" TERM
        kill -0 "$pid" 2>/dev/null || die "$p died holding idle connections; see $TMP/$p.log"
        # RSS once the proxy has closed them again: does the memory come back?
        deadline=$((SECONDS + 15))
        while [ "$(ss -Htn state established "( sport = :${PORT[$p]} )" 2>/dev/null | wc -l)" -gt 0 ] &&
            [ "$SECONDS" -lt "$deadline" ]; do
            sleep 0.2
        done
        sleep 1
        after=$(rss_kib "$pid")
        log "$p: RSS after the clients closed: $after KiB"
        printf '\t%s\n' "$after" >>"$RSS_TSV"
    done
    helper rss "$RSS_TSV" "$want" | tee -a "$OUT/report.txt"
fi

echo
log "raw wrk outputs, results.tsv and report.txt are in $OUT"
