#!/usr/bin/env bash
# One TCP stream between two containers, run after run: how a single
# stream's rate spreads over runs, what the worker and the CPUs did
# meanwhile, and (with --peers) the same stream through the kernel bridge
# in alternation, for ratios taken minutes apart at most.
# The switch's TCP row of peers.sh was bimodal on this machine when the
# worker polled during a stream (bench/NOTES.md: "The switch's slow TCP
# mode"), and it depends on the sender's congestion control (peers.sh uses
# the system's; "The sender's congestion control"): one run says little.
#   usage: sudo [TAPNET=/path/to/tapnet] bench/tcpruns.sh [--runs N] [--secs N]
#          [--cc ALGO] [--app-cpus LIST] [--peers PEER[,PEER]]
#   --cc ALGO    every connection's congestion control: the machine's
#                default (net.ipv4.tcp_congestion_control) is ALGO while the
#                script runs, restored at its end (every namespace made
#                afterwards starts with it); without it, the system's
#   --app-cpus LIST  run both iperf3 ends on those CPUs only (taskset), as
#                bench/nat.sh --app-cpus does: with TAPNET_DAEMON_ARGS=
#                '--worker-cpus 0' on 2 CPUs the worker has CPU 0 to itself
#                and its busy share says whether it, or the ends, bound the
#                stream
#   --peers LIST tapnet (the default) and/or kernel-bridge (two namespaces
#                on a kernel bridge, veths, the bridge in a namespace of
#                its own); each run measures every peer listed, in turn
#   daemon flags: TAPNET_DAEMON_ARGS='--poll-switch-streams' TAPNET=bench/tapnet-args.sh
#   tools: apt-get install iperf3 iproute2 python3
# Each run and peer: the receiver's Gbit/s (tcp_gbps), the worker's busy and
# polling seconds a second over the run's middle second (busy_share,
# spin_share: tapnet stats, summed over workers; null for the kernel
# bridge), the sender's congestion window and packets in flight then (cwnd,
# unacked: ss -ti in the sender's namespace; a window-bound sender has
# unacked == cwnd), and each CPU's busy share over that second (cpuN_busy:
# bench/lib.sh's busy_shares). At the end, each peer's
# median rate over the runs (tcp_gbps_median, no "run").
# "The host" is a private network namespace made here (the daemon runs in
# it); the containers talk only to each other.
# stdout: one JSON object per line ({"peer","run","metric","value"});
# stderr: one line per run and peer.
set -u -o pipefail
cd "$(dirname "$0")/.."
RUNS=10 SECS=5 CC="" APP_CPUS="" APP=() PEERS=tapnet
usage() { echo "usage: [TAPNET=path] $0 [--runs N] [--secs N] [--cc ALGO] [--app-cpus LIST] [--peers tapnet,kernel-bridge]" >&2; }
while [ $# -gt 0 ]; do case $1 in
  --runs) RUNS=${2:?--runs needs a value}; shift 2;;
  --secs) SECS=${2:?--secs needs a value}; shift 2;;
  --cc) CC=${2:?--cc needs a value}; shift 2;;
  --app-cpus) APP_CPUS=${2:?--app-cpus needs a CPU list}; shift 2;;
  --peers) PEERS=${2:?--peers needs a value}; shift 2;;
  -h|--help) usage; exit 0;;
  *) usage; exit 2;;
esac; done
BENCH=tcpruns; . bench/lib.sh
[ -z "$APP_CPUS" ] || app_cpus "$APP_CPUS"
[[ $RUNS =~ ^[1-9][0-9]*$ && $SECS =~ ^[1-9][0-9]*$ ]] || { usage; exit 2; }
[ "$SECS" -ge 3 ] || { log "--secs at least 3 (the middle second is sampled)"; exit 2; }
for p in ${PEERS//,/ }; do
  case $p in tapnet|kernel-bridge) ;; *) log "--peers: tapnet and/or kernel-bridge, not $p"; exit 2;; esac
done
bench_setup iperf3 python3
[ -z "$CC" ] || cc_default "$CC"         # before any namespace is made

# Each peer's way into its client's and its server's namespace.
declare -A CLI SRV
if [[ ",$PEERS," == *,tapnet,* ]]; then
  start_daemon tr$$
  "$T" network create --subnet 10.194.0.0/24 trnet >/dev/null || { log "network create failed"; exit 1; }
  "$T" run -d --name srv --network trnet --ip 10.194.0.11 -- "${APP[@]}" iperf3 -s >/dev/null &&
  "$T" run -d --name cli --network trnet -- sleep 100000 >/dev/null || { log "run failed"; exit 1; }
  CLI[tapnet]="$T exec cli --" SRV[tapnet]="$T exec srv --"
fi
if [[ ",$PEERS," == *,kernel-bridge,* ]]; then   # the same two ends on a kernel bridge
  for n in trb$$ tra$$ trs$$; do
    ip netns add "$n" && NETNS+=" $n" && ip -n "$n" link set lo up || { log "ip netns add $n failed"; exit 1; }
  done
  ip -n trb$$ link add br0 type bridge && ip -n trb$$ link set br0 up || { log "bridge failed"; exit 1; }
  for e in "a tra$$ 10.194.0.2" "s trs$$ 10.194.0.11"; do
    set -- $e
    ip -n trb$$ link add "v$1" type veth peer name eth0 netns "$2" &&
    ip -n trb$$ link set "v$1" master br0 up && ip -n "$2" addr add "$3/24" dev eth0 &&
    ip -n "$2" link set eth0 up || { log "veth into $2 failed"; exit 1; }
  done
  ip netns exec trs$$ "${APP[@]}" iperf3 -s >"$W/iperf3-s.log" 2>&1 & track $!
  CLI[kernel-bridge]="ip netns exec tra$$" SRV[kernel-bridge]="ip netns exec trs$$"
fi
# ${CLI[p]} and ${SRV[p]} hold no quoted words (paths without spaces): split
# on purpose below.
for p in ${PEERS//,/ }; do
  # shellcheck disable=SC2086
  waitfor eval "${SRV[$p]} ss -Hltn 'sport = :5201' 2>/dev/null | grep -q ." ||
    { log "$p: the server does not listen"; exit 1; }
done

emit() { echo "{\"peer\":\"$1\",${2:+\"run\":$2,}\"metric\":\"$3\",\"value\":${4:-null}}"; }
# tapnet stats' workers, summed: "busy_seconds spin_seconds" (0 0 without tapnet)
worker_s() { [ -n "${CLI[tapnet]:-}" ] || { echo "0 0"; return; }; "$T" stats --format json | python3 -c '
import json, sys
w = json.load(sys.stdin)["workers"]
print(sum(x["busy_seconds"] for x in w), sum(x["spin_seconds"] for x in w))'; }
# the data connection's "cwnd unacked" (the one that moved the most)
window() { ${CLI[$1]} ss -tinH dst 10.194.0.11 | python3 -c '
import re, sys
best = None
for l in sys.stdin.read().split("\n"):
    a = re.search(r"bytes_acked:(\d+)", l)
    if a and (best is None or int(a.group(1)) > best[0]):
        c = re.search(r"cwnd:(\d+)", l); u = re.search(r"unacked:(\d+)", l)
        best = (int(a.group(1)), c.group(1) if c else "null", u.group(1) if u else "0")
print("%s %s" % best[1:] if best else "null null")'; }

declare -A RATES
for r in $(seq "$RUNS"); do for p in ${PEERS//,/ }; do
  out=$W/run$r-$p.json
  # shellcheck disable=SC2086
  timeout $((SECS + 30)) ${CLI[$p]} "${APP[@]}" iperf3 -c 10.194.0.11 -t "$SECS" -J >"$out" 2>&1 &
  ip=$!
  sleep "$((SECS / 2 - 1)).5"
  read -r b0 s0 <<<"$(worker_s)"; t0=$(date +%s.%N); grep '^cpu[0-9]' /proc/stat >"$W/stat.a"
  sleep 1
  read -r b1 s1 <<<"$(worker_s)"; t1=$(date +%s.%N); grep '^cpu[0-9]' /proc/stat >"$W/stat.b"
  read -r cwnd unacked <<<"$(window "$p")"
  wait "$ip"
  g=$(iperf3_gbps "$out") || { log "$p run $r failed: $(iperf3_failure "$out")"; g=""; }
  busy="" spin=""
  [ "$p" = tapnet ] && read -r busy spin <<<"$(awk -v b0="$b0" -v b1="$b1" -v s0="$s0" -v s1="$s1" \
    -v t0="$t0" -v t1="$t1" 'BEGIN {d = t1 - t0; printf "%.2f %.2f", (b1 - b0) / d, (s1 - s0) / d}')"
  emit "$p" "$r" tcp_gbps "$g"; emit "$p" "$r" busy_share "$busy"; emit "$p" "$r" spin_share "$spin"
  emit "$p" "$r" cwnd "$cwnd"; emit "$p" "$r" unacked "$unacked"
  cpus=""
  while read -r c v; do
    v=$(printf %.2f "$v"); emit "$p" "$r" "${c}_busy" "$v"; cpus+=" $c $v"
  done < <(busy_shares "$W/stat.a" "$W/stat.b")
  [ -z "$g" ] || RATES[$p]+=" $g"
  log "$p run $r: ${g:-failed} Gbit/s; worker busy ${busy:--}, polling ${spin:--}; sender's cwnd $cwnd, unacked $unacked; CPUs busy:$cpus"
done; done
for p in ${PEERS//,/ }; do
  m=$(python3 -c 'import statistics, sys; v = [float(x) for x in sys.argv[1:]]; print("%.2f" % statistics.median(v) if v else "")' ${RATES[$p]:-})
  emit "$p" "" tcp_gbps_median "$m"
  log "$p: median ${m:-none} Gbit/s over $RUNS run(s)"
done
