#!/usr/bin/env bash
# What a wake-up costs on this machine, the floor under every latency figure
# of a switch or NAT that runs in threads of its own (ping RTT, connections
# per second): two processes pass a byte back and forth over two pipes, each
# pass waking the other, and the round trip is timed
#   cross_cpu   the two pinned to two different CPUs: each pass wakes a
#               sleeping CPU (in a VM an inter-processor interrupt through the
#               hypervisor); a packet a container sends to tapnet takes at
#               least one such wake-up when the worker sleeps elsewhere, and the
#               answer another when the sender sleeps; the kernel bridge runs
#               the whole path in the sender's system call, with none
#   one_cpu     both on one CPU: a plain context switch each way
# Nothing here touches the network.
#   usage: bench/wakeup.sh [--passes N]
#   tools: python3 (two or more CPUs for cross_cpu)
# stdout: one JSON object per line ({"case","metric":"pipe_rtt_us","value"});
# stderr: the figures.
set -u -o pipefail
PASSES=5000
usage() { echo "usage: $0 [--passes N]" >&2; }
while [ $# -gt 0 ]; do case $1 in
  --passes) PASSES=${2:?--passes needs a value}; shift 2;;
  -h|--help) usage; exit 0;;
  *) usage; exit 2;;
esac; done
[[ $PASSES =~ ^[1-9][0-9]*$ ]] || { usage; exit 2; }
command -v python3 >/dev/null || { echo "wakeup.sh: missing python3" >&2; exit 2; }
exec python3 - "$PASSES" <<'EOF'
import json, os, sys, time

def round_trip_us(cpu_a, cpu_b, n):
    """The mean of n round trips, after 100 unmeasured ones."""
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.sched_setaffinity(0, {cpu_b})
            for _ in range(n + 100):
                os.read(r1, 1)
                os.write(w2, b"x")
        finally:
            os._exit(0)
    os.sched_setaffinity(0, {cpu_a})
    for _ in range(100):
        os.write(w1, b"x")
        os.read(r2, 1)
    t = time.perf_counter()
    for _ in range(n):
        os.write(w1, b"x")
        os.read(r2, 1)
    dt = time.perf_counter() - t
    os.waitpid(pid, 0)
    for fd in (r1, w1, r2, w2):
        os.close(fd)
    return dt / n * 1e6

n = int(sys.argv[1])
cpus = sorted(os.sched_getaffinity(0))
cases = [("one_cpu", cpus[0], cpus[0])]
if len(cpus) > 1:
    cases.insert(0, ("cross_cpu", cpus[0], cpus[1]))
else:
    print("wakeup.sh: one CPU only: no cross_cpu figure", file=sys.stderr)
for name, a, b in cases:
    us = round_trip_us(a, b, n)
    print(f"wakeup.sh: {name}: {us:.1f} us per round trip (CPUs {a} and {b})", file=sys.stderr)
    print(json.dumps({"case": name, "metric": "pipe_rtt_us", "value": round(us, 1)}), flush=True)
EOF
