# Sourced by tools/live-overhead.sh and tools/live-thread-cpu.sh: the
# models, the binary, a scratch directory removed at the end with whatever
# the script left running, and what the machine is and how busy.
models=${models:-sequential thread pool event async uring}
bin=target/release/concur
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
grep -m1 'model name' /proc/cpuinfo
uptime
