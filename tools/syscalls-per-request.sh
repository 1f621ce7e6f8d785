#!/usr/bin/env bash
# What one pingpong request costs each event-driven model in system calls,
# context switches and CPU (user and kernel), counted by `perf stat` over
# the server's whole life while `concur bench pingpong` drives it.
# Usage: tools/syscalls-per-request.sh [CONNECTIONS] [SECONDS] [MODELS...]
# Needs perf with access to tracepoints (root, or perf_event_paranoid <= -1).
set -eu
cd "$(dirname "$0")/.."
conns=${1:-64}
secs=${2:-3}
shift $(( $# > 2 ? 2 : $# ))
models=${*:-event async uring}
bin=target/release/concur
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
port=$(( 20000 + RANDOM % 20000 ))
printf '%-8s %8s %10s %12s %10s %12s %10s %10s\n' model conns req/s requests syscalls syscalls/req cs/req "user/sys ms"
for m in $models; do
    port=$((port + 1))
    perf stat -x, -o "$work/perf" \
        -e raw_syscalls:sys_enter,context-switches,user_time,system_time -- \
        "$bin" serve --model "$m" --port "$port" -q --max-conns 10000 --backlog 4096 \
        > "$work/summary" 2>&1 &
    perf=$!
    for _ in $(seq 100); do
        grep -q "Serving on" "$work/summary" && break
        sleep 0.05
    done
    "$bin" bench pingpong -c "$conns" --secs "$secs" --repeat 1 \
        --addr "127.0.0.1:$port" --no-reference -q > "$work/bench"
    pkill -INT -f "serve --model $m --port $port" || true
    wait "$perf"
    rate=$(awk '/^127\.0\.0\.1/ {print $3}' "$work/bench")
    # Each request is `^`, 16 bytes and `$` in; the summary counts them all.
    requests=$(sed -n 's/.*; \([0-9]*\) bytes in.*/\1/p' "$work/summary")
    requests=$((requests / 18))
    calls=$(awk -F, '/sys_enter/ {print $1}' "$work/perf")
    cs=$(awk -F, '/context-switches/ {print $1}' "$work/perf")
    user=$(awk -F, '/user_time/ {print int($1 / 1e6)}' "$work/perf")
    sys=$(awk -F, '/system_time/ {print int($1 / 1e6)}' "$work/perf")
    awk -v m="$m" -v c="$conns" -v r="$rate" -v n="$requests" -v s="$calls" -v x="$cs" -v u="$user" -v k="$sys" \
        'BEGIN { printf "%-8s %8d %10d %12d %10d %12.2f %10.3f %5d/%d\n", m, c, r, n, s, s / n, x / n, u, k }'
done
