#!/usr/bin/env bash
# Do the protocol's round trips change while the HTTP port is attacked?
# For each model, one `concur serve --http` runs `concur bench pingpong
# -c 64` runs, alternately with the HTTP port only scraped (every 0.5 s)
# and scraped while tools/http-attack.py holds 3 dripping and 500 silent
# connections on it; pairs in ABBA order, so drift falls on both alike.
# Usage: tools/http-attack-pingpong.sh [PAIRS] [SECONDS] [MODELS...]
set -euo pipefail
cd "$(dirname "$0")/.."
pairs=${1:-5}
secs=${2:-3}
shift $(( $# > 2 ? 2 : $# ))
models=${*:-pool event}
bin=target/release/concur
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
grep -m1 'model name' /proc/cpuinfo
echo "pairs $pairs, $secs s per run: $bin bench pingpong -c 64 --secs $secs --repeat 1 --no-reference --addr ..."

run() { # model condition port http
    local drips=0 idle=0
    if [ "$2" = attacked ]; then drips=3 idle=500; fi
    python3 tools/http-attack.py "$4" --drips $drips --idle $idle \
        --secs "$(awk "BEGIN { print $secs + 1.5 }")" > "$work/attack" &
    local attacker=$!
    sleep 0.5 # the attack's connections in place before the clients
    "$bin" bench pingpong -c 64 --secs "$secs" --repeat 1 --no-reference \
        --addr "127.0.0.1:$3" -q --out "$work/bench" > /dev/null
    wait $attacker
    python3 - "$1" "$2" "$work/bench/results.json" "$(cat "$work/attack")" <<'EOF' | tee -a "$work/rows"
import json, sys
model, condition, path, attack = sys.argv[1:]
run = json.load(open(path))["runs"][0]
l = run["latency_us"]
print(f"{model:6} {condition:9} {run['throughput']:9.0f} {l['p50']:6} {l['p99']:6} "
      f"{l['p999']:6} {l['max']:6} {run['errors']:3}   {attack}")
EOF
}

printf '%-6s %-9s %9s %6s %6s %6s %6s %3s   %s\n' model http req/s p50µs p99µs p99.9µs maxµs err "the HTTP port meanwhile"
for model in $models; do
    "$bin" serve --model "$model" --port 0 --http 127.0.0.1:0 -q > "$work/serve" 2>&1 &
    server=$!
    for _ in $(seq 100); do
        grep -q "Metrics on" "$work/serve" && break
        sleep 0.05
    done
    port=$(sed -n 's/^Serving on 127.0.0.1:\([0-9]*\).*/\1/p' "$work/serve")
    http=$(sed -n 's|^Metrics on http://\(.*\)/metrics|\1|p' "$work/serve")
    for i in $(seq "$pairs"); do
        if [ $((i % 2)) = 1 ]; then order="scraped attacked"; else order="attacked scraped"; fi
        for condition in $order; do
            run "$model" "$condition" "$port" "$http"
        done
    done
    kill -TERM $server
    wait $server || true
done

echo
echo "medians over the runs (req/s min-max):"
python3 - "$work/rows" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
for key in dict.fromkeys((r[0], r[1]) for r in rows):
    mine = [r for r in rows if (r[0], r[1]) == key]
    col = lambda i: [float(r[i]) for r in mine]
    rps = col(2)
    print(f"{key[0]:6} {key[1]:9} req/s {statistics.median(rps):8.0f} ({min(rps):.0f}-{max(rps):.0f})"
          f"  p50 {statistics.median(col(3)):5.0f} µs  p99 {statistics.median(col(4)):5.0f} µs"
          f"  p99.9 {statistics.median(col(5)):5.0f} µs  runs {len(mine)}")
EOF
