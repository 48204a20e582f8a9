#!/usr/bin/env bash
# One TCP stream between two containers, run after run in one daemon: how a
# single stream's rate spreads over runs, and what the worker did meanwhile.
# The switch's TCP row of peers.sh is bimodal on this machine when the
# worker polls during a stream (about 16 Gbit/s, or 10-12 in a quarter to a
# third of the runs; README, Performance: "The switch's slow TCP mode"):
# one run says little, twenty say how often the slow mode comes.
#   usage: sudo [TAPNET=/path/to/tapnet] bench/tcpruns.sh [--runs N] [--secs N] [--cc ALGO]
#   --cc ALGO    the sender's congestion control (iperf3 -C; default: the
#                system's, net.ipv4.tcp_congestion_control)
#   daemon flags: TAPNET_DAEMON_ARGS='--poll-switch-streams' TAPNET=bench/tapnet-args.sh
#   tools: apt-get install iperf3 iproute2 python3
# Each run: the receiver's Gbit/s (tcp_gbps), the worker's busy and polling
# seconds a second over the run's middle (busy_share, spin_share: tapnet
# stats, summed over workers), and the sender's congestion window and
# packets in flight at that middle (cwnd, unacked: ss -ti in the sender's
# container; a window-bound sender has unacked == cwnd).
# "The host" is a private network namespace made here (the daemon runs in
# it); the containers talk only to each other.
# stdout: one JSON object per line ({"run","metric","value"}); stderr: one
# line per run.
set -u -o pipefail
cd "$(dirname "$0")/.."
RUNS=10 SECS=5 CC=""
usage() { echo "usage: [TAPNET=path] $0 [--runs N] [--secs N] [--cc ALGO]" >&2; }
while [ $# -gt 0 ]; do case $1 in
  --runs) RUNS=${2:?--runs needs a value}; shift 2;;
  --secs) SECS=${2:?--secs needs a value}; shift 2;;
  --cc) CC=${2:?--cc needs a value}; shift 2;;
  -h|--help) usage; exit 0;;
  *) usage; exit 2;;
esac; done
BENCH=tcpruns; . bench/lib.sh
[[ $RUNS =~ ^[1-9][0-9]*$ && $SECS =~ ^[1-9][0-9]*$ ]] || { usage; exit 2; }
[ "$SECS" -ge 3 ] || { log "--secs at least 3 (the middle second is sampled)"; exit 2; }
if [ -n "$CC" ] && ! grep -qw -- "$CC" /proc/sys/net/ipv4/tcp_available_congestion_control; then
  log "--cc $CC: not one of $(cat /proc/sys/net/ipv4/tcp_available_congestion_control)"; exit 2
fi
bench_setup iperf3 python3
start_daemon tr$$
"$T" network create --subnet 10.194.0.0/24 trnet >/dev/null || { log "network create failed"; exit 1; }
"$T" run -d --name srv --network trnet --ip 10.194.0.11 -- iperf3 -s >/dev/null &&
"$T" run -d --name cli --network trnet -- sleep 100000 >/dev/null || { log "run failed"; exit 1; }
listening() { "$T" exec srv -- ss -Hltn 'sport = :5201' 2>/dev/null | grep -q .; }
waitfor listening || { log "the server does not listen"; exit 1; }

emit() { echo "{\"run\":$1,\"metric\":\"$2\",\"value\":${3:-null}}"; }
# tapnet stats' workers, summed: "busy_seconds spin_seconds"
worker_s() { "$T" stats --format json | python3 -c '
import json, sys
w = json.load(sys.stdin)["workers"]
print(sum(x["busy_seconds"] for x in w), sum(x["spin_seconds"] for x in w))'; }
# the data connection's "cwnd unacked" (the one that moved the most)
window() { "$T" exec cli -- ss -tinH dst 10.194.0.11 | python3 -c '
import re, sys
best = None
for l in sys.stdin.read().split("\n"):
    a = re.search(r"bytes_acked:(\d+)", l)
    if a and (best is None or int(a.group(1)) > best[0]):
        c = re.search(r"cwnd:(\d+)", l); u = re.search(r"unacked:(\d+)", l)
        best = (int(a.group(1)), c.group(1) if c else "null", u.group(1) if u else "0")
print("%s %s" % best[1:] if best else "null null")'; }

for r in $(seq "$RUNS"); do
  out=$W/run$r.json
  timeout $((SECS + 30)) "$T" exec cli -- iperf3 -c 10.194.0.11 -t "$SECS" -J ${CC:+-C "$CC"} >"$out" 2>&1 &
  ip=$!
  sleep "$((SECS / 2 - 1)).5"
  read -r b0 s0 <<<"$(worker_s)"; t0=$(date +%s.%N)
  sleep 1
  read -r b1 s1 <<<"$(worker_s)"; t1=$(date +%s.%N)
  read -r cwnd unacked <<<"$(window)"
  wait "$ip"
  g=$(iperf3_gbps "$out") || { log "run $r failed: $(iperf3_failure "$out")"; g=""; }
  read -r busy spin <<<"$(awk -v b0="$b0" -v b1="$b1" -v s0="$s0" -v s1="$s1" -v t0="$t0" -v t1="$t1" \
    'BEGIN {d = t1 - t0; printf "%.2f %.2f", (b1 - b0) / d, (s1 - s0) / d}')"
  emit "$r" tcp_gbps "$g"; emit "$r" busy_share "$busy"; emit "$r" spin_share "$spin"
  emit "$r" cwnd "$cwnd"; emit "$r" unacked "$unacked"
  log "run $r: ${g:-failed} Gbit/s; worker busy $busy, polling $spin; sender's cwnd $cwnd, unacked $unacked"
done
