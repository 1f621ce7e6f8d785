#!/usr/bin/env bash
# What one viewer of the live page costs, measured where it is paid: the
# CPU time of the HTTP port's thread (`http`, from the kernel's schedstat,
# in nanoseconds) and of the viewer (`curl -sN .../events`; with
# VIEWER=chromium, the page in headless Chromium, drawing: all of its
# processes, in the kernel's ticks), while `concur bench pingpong -c 64`
# runs against the same `concur serve --http`, and beside it the server's
# whole CPU time in that run.
# Usage: tools/live-thread-cpu.sh [SECONDS] [MODELS...]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
shift $(( $# > 1 ? 1 : $# ))
models=${*:-}
source tools/live-common.sh

oncpu_ns() { # pid [thread name]: nanoseconds on a CPU, of one thread
    # (schedstat), or of the whole process, its ended threads included
    # (utime + stime, in the kernel's ticks)
    if [ -n "${2:-}" ]; then
        for task in /proc/"$1"/task/*; do
            [ "$(cat "$task/comm")" = "$2" ] && { cut -d' ' -f1 "$task/schedstat"; return; }
        done
    else
        awk -v hz="$(getconf CLK_TCK)" '{ printf "%.0f\n", ($14 + $15) * 1e9 / hz }' /proc/"$1"/stat
    fi
}

viewer_ns() { # the viewer's nanoseconds on a CPU
    if [ "${VIEWER:-curl}" = chromium ]; then
        local total=0 pid
        for pid in $(pgrep -f -- "--user-data-dir=$work/profile"); do
            total=$((total + $(oncpu_ns "$pid" 2>/dev/null || echo 0)))
        done
        echo $total
    else
        oncpu_ns "$viewer" curl
    fi
}

echo "viewer: ${VIEWER:-curl}"
printf '%-10s %8s %14s %14s %14s %10s\n' model secs "http thread" viewer "whole server" frames
for model in $models; do
    "$bin" serve --model "$model" --port 0 -q --http 127.0.0.1:0 > "$work/serve" 2>&1 &
    server=$!
    for _ in $(seq 100); do grep -q "Watch it" "$work/serve" && break; sleep 0.05; done
    port=$(sed -n 's/^Serving on 127.0.0.1:\([0-9]*\).*/\1/p' "$work/serve")
    http=$(sed -n 's|^Watch it live at http://\(.*\)/$|\1|p' "$work/serve")
    if [ "${VIEWER:-curl}" = chromium ]; then
        rm -rf "$work/profile"
        : > "$work/events"
        chromium --headless --no-sandbox --disable-gpu --disable-background-networking \
            --disable-component-update --disable-sync --no-first-run \
            --user-data-dir="$work/profile" --window-size=1000,1000 \
            "http://$http/" > /dev/null 2>&1 &
        viewer=$!
        sleep 4 # started, and the page open
    else
        curl -sN "http://$http/events" > "$work/events" &
        viewer=$!
        sleep 0.5
    fi
    h0=$(oncpu_ns $server http); v0=$(viewer_ns); s0=$(oncpu_ns $server)
    "$bin" bench pingpong -c 64 --secs "$secs" --repeat 1 --no-reference \
        --addr "127.0.0.1:$port" -q > /dev/null
    h1=$(oncpu_ns $server http); v1=$(viewer_ns); s1=$(oncpu_ns $server)
    # The frames the viewer took (the browser's are not counted).
    frames=$(grep -c '^event: status' "$work/events" || true)
    [ "${VIEWER:-curl}" = chromium ] && frames=-
    awk -v m="$model" -v s="$secs" -v h=$((h1 - h0)) -v v=$((v1 - v0)) -v w=$((s1 - s0)) -v f="$frames" \
        'BEGIN { printf "%-10s %8s %11.1f ms %11.1f ms %11.1f ms %10s\n", m, s, h/1e6, v/1e6, w/1e6, f }'
    kill $viewer
    kill -TERM $server
    wait $server $viewer 2>/dev/null || true
done
