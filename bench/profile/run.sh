#!/usr/bin/env bash
# Fixed-count profiles of the proxy, stable on a loaded machine (bench/PROFILE.md).
#
#   bench/profile/run.sh calls   BIN OUT [N=2000] [C=4]  # Ir per W1 request: the proxy under callgrind,
#                                                        # counters zeroed after a warm-up, N tools/call
#   bench/profile/run.sh streams BIN [N=1000]            # KiB of proxy RSS per open SSE stream
#
# BIN is an mcpflip binary (target/release/mcpflip: symbols are kept). The upstream is the
# built-in demo server (`mcpflip upstream`) run from the same binary; access log off
# (ACCESS_LOG=stderr turns it on), migration off (MIGRATE=replay turns it on).
set -euo pipefail
mode=$1 bin=$(realpath "$2")
here=$(cd "$(dirname "$0")" && pwd)
dir=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 600); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }
up=$(free_port) port=$(free_port)
"$bin" upstream --port "$up" --slot blue >"$dir/upstream.log" 2>&1 & pids+=($!)
cat >"$dir/mcpflip.toml" <<TOML
[listen]
addr = "127.0.0.1:$port"
[admin]
addr = "127.0.0.1:0"
[control]
socket = "$dir/control.sock"
state_file = "$dir/state.json"
[proxy]
workers = 1
[log]
level = "warn"
access_log = "${ACCESS_LOG:-off}"
[drain]
migrate = "${MIGRATE:-off}"
[[slot]]
name = "blue"
upstream = "http://127.0.0.1:$up"
weight = 100
TOML
wait_port "$up"
case $mode in
calls)
    out=$(realpath -m "$3") n=${4:-2000} c=${5:-4}
    valgrind --tool=callgrind --callgrind-out-file="$out" "$bin" run --config "$dir/mcpflip.toml" \
        >"$dir/proxy.log" 2>&1 & proxy=$!; pids+=($proxy)
    wait_port "$port"
    python3 "$here/client.py" calls "127.0.0.1:$port" 200 "$c"       # warm-up: pools, allocator
    callgrind_control -z "$proxy" >/dev/null
    python3 "$here/client.py" calls "127.0.0.1:$port" "$n" "$c"
    callgrind_control -d "$proxy" >/dev/null
    kill "$proxy"; wait "$proxy" 2>/dev/null || true
    dump=$(ls -t "$out".* 2>/dev/null | head -1)
    ir=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",","",$1); print $1; exit}')
    echo "Ir total $ir over $n requests (+1 session): $((ir / n)) Ir per request  ($dump)"
    ;;
streams)
    n=${3:-1000}
    "$bin" run --config "$dir/mcpflip.toml" >"$dir/proxy.log" 2>&1 & proxy=$!; pids+=($proxy)
    wait_port "$port"
    python3 "$here/client.py" calls "127.0.0.1:$port" 50 2 # warm-up
    rss() { awk '/VmRSS/ {print $2}' /proc/$proxy/status; }
    before=$(rss)
    coproc HOLD { python3 "$here/client.py" streams "127.0.0.1:$port" "$n"; }
    read -r line <&"${HOLD[0]}"
    sleep 2
    after=$(rss)
    echo "RSS before $before KiB, with $n streams $after KiB: $(( (after - before) * 1000 / n )) / 1000 KiB per stream"
    kill "$HOLD_PID" 2>/dev/null || true
    ;;
esac
