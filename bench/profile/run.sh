#!/usr/bin/env bash
# Fixed-count profiles of the proxy, stable on a loaded machine (bench/PROFILE.md).
#
#   bench/profile/run.sh calls   BIN OUT [N=2000] [C=4]  # Ir per W1 request: the proxy under callgrind,
#                                                        # counters zeroed after a warm-up, N tools/call
#   bench/profile/run.sh nginx   BIN OUT [N=2000] [C=4]  # the same for nginx (one process, the bench's
#                                                        # configuration), BIN only for the upstream
#   bench/profile/run.sh streams BIN [N=1000]            # KiB of proxy RSS per open SSE stream
#   bench/profile/run.sh relay   BIN OUT [N=50] [MS=100] [S=10]  # Ir per SSE event relayed: N
#                                                        # `/ticker` streams, one event every MS ms
#                                                        # each, counted for S seconds (relay-nginx:
#                                                        # the same for nginx)
#   bench/profile/run.sh moves   BIN OUT [N=10]          # mcpflip's copies of 100 bytes or more per
#                                                        # request, by size and place (gdb, c=1)
#
# BIN is an mcpflip binary (target/release/mcpflip: symbols are kept). The upstream is the
# built-in demo server (`mcpflip upstream`) run from the same binary; access log off
# (ACCESS_LOG=stderr turns it on), migration off (MIGRATE=replay turns it on). CACHE=1 adds
# callgrind's cache and branch simulation (L1 misses, mispredicted branches) to calls and nginx.
# UPSTREAM=1 runs the upstream under callgrind instead, with the proxy (calls: mcpflip, nginx:
# nginx) in front of it as is: the upstream's work per request behind each proxy.
# WRK=1 (calls, nginx) pins the proxy on CPU 1 and the upstream on CPU 0 as W1 does, drives it
# with wrk (C connections, on CPU 0) for N seconds, and prints the proxy's CPU per request, user
# and system apart, and its context switches per 1,000 requests, from /proc (OUT gets wrk's report),
# and wrk's own CPU and wake-ups per request (GNU time); with UPSTREAM=1, the upstream's instead
# of the proxy's: what CPU 0, which bounds W1 at c=64 here, spends behind each proxy (§47).
# KEEPALIVE=1 (calls, nginx): the client's requests say `Connection: keep-alive`, as the MCP
# SDKs' HTTP clients (httpx, undici) send them.
# SSE=1 (calls, nginx): the call is answered with an SSE stream (the demo's `slow` tool for 0
# seconds), as the Python SDK's server answers every POST.
# NSTAT=1 (with WRK=1) prints the machine's TCP counters per request over the measured run
# (segments, delayed and pure ACKs, autocorking, from nstat): what the kernel does for each
# proxy on either side of it.
# LIGHT=1 (calls, nginx) puts a static upstream (nginx answering every request with the demo's
# answer to the call) behind the proxy instead of `mcpflip upstream`: with WRK=1 and C=64, the
# proxy on CPU 1 becomes the bound on requests/s (§60).
# STRACE=1 (calls, nginx) counts the proxy's system calls per request with `strace -c` instead
# of callgrind (OUT is strace's table).
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
# The head of a one-process nginx config (NAME.pid, NAME-error.log in $dir), and the check.
nginx_head() {
    command -v nginx >/dev/null || { echo "nginx is not installed (apt-get install nginx)" >&2; exit 1; }
    cat <<CONF
daemon off;
master_process off;
worker_processes 1;
pid $dir/$1.pid;
error_log $dir/$1-error.log warn;
events { worker_connections 20000; }
CONF
}
sim=()
if [ -n "${CACHE:-}" ]; then sim=(--cache-sim=yes --branch-sim=yes); fi
# What runs under callgrind: the proxy, or (UPSTREAM=1) the upstream.
measured=(valgrind --tool=callgrind "${sim[@]}" --callgrind-out-file="$(realpath -m "${3:-$dir/none}")")
upstream=()
if [ -n "${UPSTREAM:-}" ]; then upstream=("${measured[@]}") measured=(); fi
# STRACE=1: no callgrind; strace -c counts the system calls instead, attached after the warm-up.
if [ -n "${STRACE:-}" ]; then upstream=() measured=(); fi
if [ -n "${WRK:-}" ]; then upstream=(taskset -c 0) measured=(taskset -c 1); fi
if [ -n "${LIGHT:-}" ]; then
    # LIGHT=1: a static upstream (nginx, one process) that answers every request with the
    # demo's answer to W1's call and a fixed session id: less work per request on CPU 0 than
    # the demo server, so that under WRK=1 the proxy, not CPU 0, bounds requests/s (§60).
    { nginx_head upstream; cat <<CONF
http {
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    server {
        listen 127.0.0.1:$up;
        location / {
            default_type application/json;
            add_header Mcp-Session-Id static-session always;
            add_header X-Served-By blue always;
            return 200 '{"jsonrpc":"2.0","id":2,"result":{"content":[{"type":"text","text":"ok"}],"isError":false}}';
        }
    }
}
CONF
    } >"$dir/upstream.conf"
    "${upstream[@]}" nginx -c "$dir/upstream.conf" -p "$dir" >"$dir/upstream.log" 2>&1 & upstream_pid=$!; pids+=($upstream_pid)
else
    "${upstream[@]}" "$bin" upstream --port "$up" --slot blue >"$dir/upstream.log" 2>&1 & upstream_pid=$!; pids+=($upstream_pid)
fi
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
# The proxy under measurement ("${measured[@]}"): mcpflip, or with $1 = nginx the bench's
# nginx configuration (bench/src/targets.rs), one process.
start_proxy() {
    if [ "$1" = nginx ]; then
        { nginx_head nginx; cat <<CONF
http {
    access_log off;
    upstream mcp { server 127.0.0.1:$up; keepalive 1024; keepalive_requests 1000000; }
    server {
        listen 127.0.0.1:$port;
        keepalive_requests 1000000;
        location / {
            proxy_pass http://mcp;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-Host \$http_host;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_buffering off;
            proxy_cache off;
            proxy_read_timeout 1h;
        }
    }
}
CONF
        } >"$dir/nginx.conf"
        "${measured[@]}" nginx -c "$dir/nginx.conf" -p "$dir" \
            >"$dir/proxy.log" 2>&1 & proxy=$!; pids+=($proxy)
    else
        "${measured[@]}" "$bin" run --config "$dir/mcpflip.toml" \
            >"$dir/proxy.log" 2>&1 & proxy=$!; pids+=($proxy)
    fi
    wait_port "$port"
}
case $mode in
calls|nginx)
    out=$(realpath -m "$3") n=${4:-2000} c=${5:-4}
    start_proxy "$mode"
    python3 "$here/client.py" calls "127.0.0.1:$port" 200 "$c"       # warm-up: pools, allocator
    target=$proxy
    if [ -n "${UPSTREAM:-}" ]; then target=$upstream_pid; fi
    if [ -n "${WRK:-}" ]; then
        command -v wrk >/dev/null || { echo "wrk is not installed (sudo bench/setup.sh)" >&2; exit 1; }
        python3 "$here/client.py" wrk "127.0.0.1:$port" "$dir/call.lua"
        taskset -c 0 wrk -t1 -c"$c" -d1s -s "$dir/call.lua" "http://127.0.0.1:$port/mcp" >/dev/null
        ticks=$(getconf CLK_TCK)
        switches() { cat /proc/"$target"/task/*/status | awk '/^voluntary_ctxt_switches/ {v += $2} /^nonvoluntary_ctxt_switches/ {n += $2} END {print v, n}'; }
        if [ -n "${NSTAT:-}" ]; then nstat -n; fi
        before=$(cut -d' ' -f14,15 "/proc/$target/stat") sw0=$(switches)
        # wrk's own CPU and wake-ups (GNU time: its rusage from wait4, nothing attached).
        timed=()
        if [ -x /usr/bin/time ]; then timed=(/usr/bin/time -o "$dir/wrk.time" -f "%U %S %w %c"); fi
        "${timed[@]}" taskset -c 0 wrk -t1 -c"$c" -d"${n}s" --latency -s "$dir/call.lua" "http://127.0.0.1:$port/mcp" >"$out"
        after=$(cut -d' ' -f14,15 "/proc/$target/stat") sw1=$(switches)
        reqs=$(awk '/requests in/ {print $1}' "$out")
        if [ -n "${NSTAT:-}" ]; then
            # The machine's TCP counters over the measured run (loopback: every segment is
            # sent once and received once), per request.
            nstat | awk -v n="$reqs" '$1 ~ /^(TcpOutSegs|TcpExtDelayedACKs|TcpExtTCPPureAcks|TcpExtTCPHPAcks|TcpExtTCPHPHits|TcpExtTCPAutoCorking|TcpExtTCPOrigDataSent|TcpExtTCPBacklogCoalesce)$/ { printf "  %-26s %6.3f per request\n", $1, $2 / n }'
        fi
        grep -E "Requests/sec| 50%| 99%" "$out"
        who=proxy
        if [ -n "${UPSTREAM:-}" ]; then who=upstream; fi
        echo "$before $after" | awk -v n="$reqs" -v t="$ticks" -v who="$who" '{ printf "%s CPU per request over %d requests: user %.2f µs, system %.2f µs\n", who, n, ($3-$1)*1e6/t/n, ($4-$2)*1e6/t/n }'
        echo "$sw0 $sw1" | awk -v n="$reqs" '{ printf "context switches per 1,000 requests: voluntary %.1f, involuntary %.1f\n", ($3-$1)*1000/n, ($4-$2)*1000/n }'
        if [ -s "$dir/wrk.time" ]; then
            awk -v n="$reqs" '{ printf "wrk per request: user %.2f µs, system %.2f µs; wake-ups per 1,000 requests %.1f (involuntary switches %.1f)\n", $1*1e6/n, $2*1e6/n, $3*1000/n, $4*1000/n }' "$dir/wrk.time"
        else
            echo "wrk's own CPU not measured: GNU time is not installed (apt-get install time)"
        fi
        exit 0
    fi
    if [ -n "${STRACE:-}" ]; then
        strace -f -c -p "$target" -o "$out" 2>/dev/null & tracer=$!
        sleep 1
        python3 "$here/client.py" calls "127.0.0.1:$port" "$n" "$c"
        kill -INT "$tracer"; wait "$tracer" 2>/dev/null || true
        echo "system calls per request over $n requests (+1 session), $out:"
        awk -v n="$n" '$1 ~ /^[0-9.]+$/ && NF >= 5 { printf "  %-16s %6.2f\n", $NF, $4 / n }' "$out"
        exit 0
    fi
    callgrind_control -z "$target" >/dev/null
    python3 "$here/client.py" calls "127.0.0.1:$port" "$n" "$c"
    callgrind_control -d "$target" >/dev/null
    kill "$target"; wait "$target" 2>/dev/null || true
    dump=$(ls -t "$out".* 2>/dev/null | head -1)
    ir=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",","",$1); print $1; exit}')
    echo "Ir total $ir over $n requests (+1 session): $((ir / n)) Ir per request  ($dump)"
    if [ -n "${CACHE:-}" ]; then
        # events: Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw Bc Bcm Bi Bim
        awk -v n="$n" '/^summary:/ { printf "per request: L1 data misses %.0f (reads %.0f, writes %.0f), L1 instruction misses %.0f, indirect branches %.0f (%.0f mispredicted), conditional branches %.0f (%.0f mispredicted)\n", ($6+$7)/n, $6/n, $7/n, $5/n, $13/n, $14/n, $11/n, $12/n }' "$dump"
    fi
    ;;
relay|relay-nginx)
    out=$(realpath -m "$3") n=${4:-50} ms=${5:-100} secs=${6:-10}
    proxy_kind=mcpflip
    if [ "$mode" = relay-nginx ]; then proxy_kind=nginx; fi
    if [ -n "${WRK:-}" ] || [ -n "${UPSTREAM:-}" ]; then
        echo "relay: WRK and UPSTREAM are for calls and nginx" >&2; exit 1
    fi
    start_proxy "$proxy_kind"
    coproc TICK { python3 "$here/client.py" ticker "127.0.0.1:$port" "$n" "$ms"; }
    pids+=($TICK_PID)
    read -r line <&"${TICK[0]}"
    [ "$line" = open ] || { echo "the ticker client said: $line" >&2; exit 1; }
    echo 1 >&"${TICK[1]}"; read -r warm <&"${TICK[0]}"    # warm-up: buffers, allocator
    if [ -n "${STRACE:-}" ]; then
        strace -f -c -p "$proxy" -o "$out" 2>/dev/null & tracer=$!
        sleep 1
        echo "$secs" >&"${TICK[1]}"; read -r events <&"${TICK[0]}"
        kill -INT "$tracer"; wait "$tracer" 2>/dev/null || true
        echo "system calls per event over $events events on $n streams, $out:"
        awk -v n="$events" '$1 ~ /^[0-9.]+$/ && NF >= 5 { printf "  %-16s %6.2f\n", $NF, $4 / n }' "$out"
        exit 0
    fi
    callgrind_control -z "$proxy" >/dev/null 2>&1
    echo "$secs" >&"${TICK[1]}"; read -r events <&"${TICK[0]}"
    callgrind_control -d "$proxy" >/dev/null 2>&1
    kill "$TICK_PID" "$proxy" 2>/dev/null || true; wait "$proxy" 2>/dev/null || true
    dump=$(ls -t "$out".* 2>/dev/null | head -1)
    ir=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",","",$1); print $1; exit}')
    echo "Ir total $ir over $events events relayed on $n streams ($warm in the 1 s warm-up): $((ir / events)) Ir per event  ($dump)"
    ;;
moves)
    command -v gdb >/dev/null || { echo "gdb is not installed (apt-get install gdb)" >&2; exit 1; }
    out=$(realpath -m "$3") n=${4:-10}
    "$bin" run --config "$dir/mcpflip.toml" >"$dir/proxy.log" 2>&1 & proxy=$!; pids+=($proxy)
    wait_port "$port"
    python3 "$here/client.py" calls "127.0.0.1:$port" 200 1       # warm-up: pools, allocator
    # Every libc memmove/memcpy entry of this CPU's kind (the one glibc picked is among them).
    {
        echo "set pagination off"
        echo "set print frame-arguments none"
        echo "set breakpoint pending on"
        # A CPU without ERMS (some VMs) gets the variants without the suffix.
        for f in __memmove_avx512_unaligned_erms __memmove_evex_unaligned_erms \
                 __memmove_avx_unaligned_erms __memmove_sse2_unaligned_erms \
                 __memmove_avx512_unaligned __memmove_evex_unaligned \
                 __memmove_avx_unaligned __memmove_sse2_unaligned; do
            printf 'break %s if $rdx >= 100\ncommands\nsilent\nprintf "SIZE %%d\\n", $rdx\nbt 2\ncontinue\nend\n' "$f"
        done
        echo "continue"
    } >"$dir/moves.gdb"
    gdb -p "$proxy" -batch -x "$dir/moves.gdb" >"$dir/gdb.log" 2>&1 & gdb=$!
    for _ in $(seq 100); do grep -q "^Continuing" "$dir/gdb.log" 2>/dev/null && break; sleep 0.2; done
    python3 "$here/client.py" calls "127.0.0.1:$port" "$n" 1
    kill -INT "$gdb" 2>/dev/null || true; sleep 1; kill "$gdb" 2>/dev/null || true; wait "$gdb" 2>/dev/null || true
    # One line per place: copies per request, size, the function that copied and its line.
    grep -A2 '^SIZE' "$dir/gdb.log" | grep -v '^--' | paste - - - |
        sed -E 's/#0 .*#1 +(0x[0-9a-f]+ in )?/| /; s/\([^)]*\)//g; s| at ([^ ]*/)?src/| @ |' |
        awk '{$1=$1}; 1' | sort | uniq -c | sort -k1,1nr |
        awk -v n="$n" '{ c=$1; $1=""; printf "%5.1f %s\n", c / (n + 2), $0 }' >"$out"
    awk -v n="$n" '/^SIZE/ { k++; b += $2 } END { printf "%d copies of 100 bytes or more, %d bytes, over %d calls and the 2 requests that open the session: %.1f copies, %.0f bytes per request\n", k, b, n, k / (n + 2), b / (n + 2) }' "$dir/gdb.log"
    echo "by place: $out"
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
