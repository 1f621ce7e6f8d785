#!/usr/bin/env bash
# What does the live page cost the protocol's clients? For each model,
# three `concur serve` processes side by side: without --http ("off"),
# with --http and nobody watching ("port"), and with --http and one
# viewer ("viewer": `curl -sN .../events`, which reads every frame as the
# page does; with VIEWER=chromium, the page itself in headless Chromium on
# this machine, drawing); a fourth condition ("viewer+drips") adds 50
# connections dripping a request head on that port (tools/http-attack.py
# --drips 50 --idle 0), pingpong only. Each round runs `concur bench
# pingpong -c 64` and `stream -c 4` against each, in an order that turns
# round by round, so drift falls on all alike.
# Usage: tools/live-overhead.sh [ROUNDS] [SECONDS] [MODELS...]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-4}
secs=${2:-3}
shift $(( $# > 2 ? 2 : $# ))
models=${*:-}
source tools/live-common.sh
echo "viewer: ${VIEWER:-curl}; $rounds rounds, $secs s per run: $bin bench {pingpong -c 64, stream -c 4} --secs $secs --repeat 1 --no-reference --addr ..."

start() { # name model [--http]: starts a server, sets pid_NAME, port_NAME and http_NAME
    "$bin" serve --model "$2" --port 0 -q ${3:+--http 127.0.0.1:0} > "$work/serve-$1" 2>&1 &
    printf -v "pid_$1" '%s' $!
    for _ in $(seq 100); do
        grep -q "Serving on" "$work/serve-$1" && { [ -z "${3:-}" ] || grep -q "Watch it" "$work/serve-$1"; } && break
        sleep 0.05
    done
    printf -v "port_$1" '%s' "$(sed -n 's/^Serving on 127.0.0.1:\([0-9]*\).*/\1/p' "$work/serve-$1")"
    printf -v "http_$1" '%s' "$(sed -n 's|^Watch it live at http://\(.*\)/$|\1|p' "$work/serve-$1")"
}

run() { # model condition scenario port
    local args=(-c 64)
    [ "$3" = stream ] && args=(-c 4)
    "$bin" bench "$3" "${args[@]}" --secs "$secs" --repeat 1 --no-reference \
        --addr "127.0.0.1:$4" -q --out "$work/bench" > /dev/null
    python3 - "$1" "$2" "$3" "$work/bench/results.json" <<'EOF' | tee -a "$work/rows"
import json, sys
model, condition, scenario, path = sys.argv[1:]
run = json.load(open(path))["runs"][0]
l = run["latency_us"] or {}
print(f"{model:10} {scenario:8} {condition:12} {run['throughput']:10.1f} "
      f"{l.get('p50', '-'):>6} {l.get('p99', '-'):>6} {run['server_cpu_s']:6.2f} {run['errors']:3}")
EOF
}

printf '%-10s %-8s %-12s %10s %6s %6s %6s %3s\n' model scenario condition "req/s|MB/s" p50µs p99µs srvCPU err
for model in $models; do
    start off "$model"
    start port "$model" http
    start viewer "$model" http
    if [ "${VIEWER:-curl}" = chromium ]; then
        rm -rf "$work/profile"
        chromium --headless --no-sandbox --disable-gpu --disable-background-networking \
            --disable-component-update --disable-sync --no-first-run \
            --user-data-dir="$work/profile" --window-size=1000,1000 \
            "http://$http_viewer/" > /dev/null 2>&1 &
    else
        curl -sN "http://$http_viewer/events" -o /dev/null &
    fi
    viewer=$!
    sleep 2 # the viewer watching before the first run
    conditions=(off port viewer)
    for i in $(seq "$rounds"); do
        # Turn the order each round: off port viewer, port viewer off, ...
        shift_by=$(( (i - 1) % 3 ))
        order=("${conditions[@]:$shift_by}" "${conditions[@]:0:$shift_by}")
        for scenario in pingpong stream; do
            for condition in "${order[@]}"; do
                port_var="port_$condition"
                run "$model" "$condition" "$scenario" "${!port_var}"
            done
        done
        python3 tools/http-attack.py "$http_viewer" --drips 50 --idle 0 \
            --secs "$(awk "BEGIN { print $secs + 1.5 }")" > "$work/attack" &
        attacker=$!
        sleep 0.5
        run "$model" viewer+drips pingpong "$port_viewer"
        wait $attacker
        echo "    drips meanwhile: $(cat "$work/attack")"
    done
    kill $viewer 2>/dev/null || true
    kill -TERM "$pid_off" "$pid_port" "$pid_viewer"
    wait "$pid_off" "$pid_port" "$pid_viewer" "$viewer" 2>/dev/null || true
done

echo
echo "medians over the rounds (min-max), and the change against off:"
python3 - "$work/rows" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
base = {}
for key in dict.fromkeys((r[0], r[1], r[2]) for r in rows):
    mine = [float(r[3]) for r in rows if (r[0], r[1], r[2]) == key]
    p99 = [r[5] for r in rows if (r[0], r[1], r[2]) == key]
    m = statistics.median(mine)
    if key[2] == "off":
        base[key[:2]] = m
    change = (m / base[key[:2]] - 1) * 100 if key[:2] in base else float("nan")
    p99s = [float(p) for p in p99 if p != "-"]
    p99m = f"{statistics.median(p99s):6.0f}" if p99s else "     -"
    print(f"{key[0]:10} {key[1]:8} {key[2]:12} {m:10.1f} ({min(mine):.1f}-{max(mine):.1f})"
          f"  {change:+5.1f}%  p99 µs {p99m}  runs {len(mine)}")
EOF
