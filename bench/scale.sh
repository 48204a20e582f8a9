#!/usr/bin/env bash
# How tapnet's switch scales, in ONE run (one daemon, its default workers:
# one on a machine of two CPUs, so two_pairs share it there; for two, run
# with TAPNET_DAEMON_ARGS='--workers 2' TAPNET=bench/tapnet-args.sh):
#   one_pair     one iperf3 TCP stream between two containers of a network
#   two_pairs    two such streams at once on two pairs (aggregate): with two
#                workers, goal >= 1.7x one pair
#   kernel_one_pair, kernel_two_pairs
#                the same two measurements through a kernel bridge (veths,
#                namespaces made here): what this machine's CPUs allow two
#                pairs at all, beside tapnet's ratio
#   crowded      one pair again after IDLE more containers joined its network
#                and NETS more networks (one container each) exist: goal
#                within 10% of the empty network, for TCP and for 64-byte UDP
#   one_pair_after
#                the pair once more after the crowd is removed again
#   empty        the mean of one_pair and one_pair_after: the crowded case's
#                baseline, measured before and after it (A-B-A), so that a
#                drift over the run (the first measurement of a fresh daemon
#                was often the fastest) does not count as the crowd's cost
#   kernel_crowded, kernel_one_pair_after, kernel_empty
#                the same crowd on the kernel bridge (IDLE more namespaces on
#                the pair's bridge, NETS more bridges with one each, a
#                sleeping process in a session of its own in each; IPv6 off
#                on their interfaces, as on tapnet's IPv4-only networks), the
#                pair before, among and after it: what the crowd's namespaces
#                and interfaces cost this host when the switch is the
#                kernel's (context for the crowded goal, not a goal)
# "The host" is a private network namespace made here (the daemon runs in
# it); the containers talk only to each other.
#   usage: sudo [TAPNET=/path/to/tapnet] bench/scale.sh [--secs N] [--idle N] [--nets N] [--cc ALGO]
#   --cc ALGO: the machine's default congestion control for the run (every
#   stream's; bench/lib.sh's cc_default), restored at its end
#   tools: apt-get install iperf3 python3 iproute2 util-linux
# What each of one_pair, two_pairs and their kernel cases cost the machine
# (the CPUs busy in the middle of the load, bench/lib.sh's cpu_window; with
# --secs 3 or more): tcp_cpus_busy and tcp_cpu_s_per_gb (CPU-seconds per GB
# received), and for one pair's 64-byte UDP udp64_cpus_busy and
# udp64_cpu_us_per_pkt (CPU-microseconds per datagram received).
# stdout: one JSON object per line ({"case","metric","value"}), then the
# ratios; stderr: progress and tapnet stats at the end.
set -u -o pipefail
cd "$(dirname "$0")/.."
SECS=5 IDLE=252 NETS=63 CC=""
usage() { echo "usage: [TAPNET=path] $0 [--secs N] [--idle N] [--nets N] [--cc ALGO]" >&2; }
while [ $# -gt 0 ]; do case $1 in
  --secs) SECS=${2:?--secs needs a value}; shift 2;;
  --idle) IDLE=${2:?--idle needs a value}; shift 2;;
  --nets) NETS=${2:?--nets needs a value}; shift 2;;
  --cc) CC=${2:?--cc needs a value}; shift 2;;
  -h|--help) usage; exit 0;;
  *) usage; exit 2;;
esac; done
BENCH=scale; . bench/lib.sh
[[ $SECS =~ ^[1-9][0-9]*$ && $IDLE =~ ^[0-9]+$ && $NETS =~ ^[0-9]+$ ]] || { usage; exit 2; }
[ "$IDLE" -le 1000 ] && [ "$NETS" -le 200 ] || { log "--idle at most 1000, --nets at most 200"; exit 2; }
bench_setup iperf3 python3
[ -z "$CC" ] || cc_default "$CC"         # before any namespace is made
RES=$W/results; : >"$RES"
start_daemon sc$$
"$T" network create --subnet 10.192.0.0/16 scnet >/dev/null || { log "network create failed"; exit 1; }
for i in 1 2; do
  "$T" run -d --name "srv$i" --network scnet --ip "10.192.0.1$i" -- iperf3 -s >/dev/null &&
  "$T" run -d --name "cli$i" --network scnet -- sleep 100000 >/dev/null || { log "run pair $i failed"; exit 1; }
done
sleep 1

emit() { echo "{\"case\":\"$1\",\"metric\":\"$2\",\"value\":${3:-null}}"; echo "$1 $2 ${3:-null}" >>"$RES"
         log "$1 $2: ${3:-no data}"; }
# iperf3 client in cliN to srvN -> JSON file
iperf() { local n=$1 out=$2; shift 2
  timeout $((SECS + 30)) "$T" exec "cli$n" -- iperf3 -c "10.192.0.1$n" -t "$SECS" -J "$@" >"$out" 2>&1; }
field() {  # FILE EXPR over the iperf3 JSON's "end"
  python3 -c "import json,sys; e=json.load(open(sys.argv[1]))['end']; print($2)" "$1" 2>/dev/null; }
gbps_sum() {  # iperf3 JSON FILES -> their received Gbit/s, summed
  python3 -c "
import json,sys
s=sum(json.load(open(f))['end']['sum_received']['bits_per_second'] for f in sys.argv[1:])
print('%.2f' % (s / 1e9))" "$@" 2>/dev/null; }
tcp() { iperf "$1" "$W/tcp$1.json" && gbps_sum "$W/tcp$1.json"; }
pps() {  # iperf3 UDP JSON FILE -> datagrams received per second
  field "$1" "'%.0f' % ((e['sum']['packets'] - e['sum']['lost_packets']) / e['sum']['seconds'])"; }
udp() { iperf "$1" "$W/udp$1.json" -u -b 0 -l 18 && pps "$W/udp$1.json"; }
val() { awk -v c="$1" -v m="$2" '$1 == c && $2 == m {print $3}' "$RES"; }  # CASE METRIC
# costed CASE tcp|udp64 CMD...: CMD prints the case's rate (Gbit/s, or
# datagrams received per second); emits it, the CPUs the machine kept busy
# meanwhile and their cost per GB (tcp) or per datagram (udp64).
costed() {
  local c=$1 k=$2 v busy per sp; shift 2
  cpu_window "$SECS" & sp=$!
  v=$("$@"); wait "$sp" 2>/dev/null
  busy=$([ -n "$v" ] && cpus_busy)
  if [ "$k" = tcp ]; then emit "$c" tcp_gbps "$v"; per=$(cpu_s_per_gb "$busy" "$v")
    emit "$c" tcp_cpus_busy "$busy"; emit "$c" tcp_cpu_s_per_gb "$per"
  else emit "$c" udp64_pps "$v"
    per=$([ -n "$busy" ] && awk -v b="$busy" -v p="$v" 'BEGIN {if (p > 0) printf "%.2f", b / p * 1e6}')
    emit "$c" udp64_cpus_busy "$busy"; emit "$c" udp64_cpu_us_per_pkt "$per"
  fi
}
two() {  # RUN-ONE FILE-PREFIX: two pairs at once, their summed Gbit/s
  "$1" 1 "$W/${2}1.json" & local a=$!
  "$1" 2 "$W/${2}2.json" & local b=$!
  wait $a; wait $b
  gbps_sum "$W/${2}1.json" "$W/${2}2.json"
}

costed one_pair tcp tcp 1
costed one_pair udp64 udp 1
costed two_pairs tcp two iperf p

# The kernel bridge's pairs, in namespaces made here (no traffic leaves them).
kbr=sc$$k; NETNS+=" $kbr"
ip netns add "$kbr" && ip -n "$kbr" link add br0 type bridge && ip -n "$kbr" link set br0 up || {
  log "kernel bridge setup failed"; exit 1; }
for n in c1 s1 c2 s2; do
  ns=sc$$$n; NETNS+=" $ns"
  ip netns add "$ns" && ip -n "$ns" link set lo up &&
  ip -n "$kbr" link add "v$n" type veth peer name eth0 netns "$ns" &&
  ip -n "$kbr" link set "v$n" master br0 up && ip -n "$ns" link set eth0 up || { log "veth $n failed"; exit 1; }
done
for i in 1 2; do
  ip -n "sc$$c$i" addr add "10.190.0.2$i/24" dev eth0 && ip -n "sc$$s$i" addr add "10.190.0.1$i/24" dev eth0 || exit 1
  ip netns exec "sc$$s$i" iperf3 -s -B "10.190.0.1$i" >/dev/null 2>&1 & track $!
done
waitfor eval 'ip netns exec sc$$s2 ss -Hltn "sport = :5201" | grep -q .'
kiperf() { local n=$1 out=$2; shift 2
  timeout $((SECS + 30)) ip netns exec "sc$$c$n" iperf3 -c "10.190.0.1$n" -t "$SECS" -J "$@" >"$out" 2>&1; }
ktcp() { kiperf "$1" "$W/kt$1.json" && gbps_sum "$W/kt$1.json"; }
kudp() { kiperf "$1" "$W/ku$1.json" -u -b 0 -l 18 && pps "$W/ku$1.json"; }
costed kernel_one_pair tcp ktcp 1
costed kernel_one_pair udp64 kudp 1
costed kernel_two_pairs tcp two kiperf kp

log "adding $IDLE idle containers to the pair's network and $NETS networks with one each"
for i in $(seq "$IDLE"); do
  "$T" run -d --name "idle$i" --network scnet -- sleep 100000 >/dev/null || { log "run idle$i failed"; exit 1; }
done
for i in $(seq "$NETS"); do
  "$T" network create --subnet "10.191.$i.0/24" "scn$i" >/dev/null &&
  "$T" run -d --name "other$i" --network "scn$i" -- sleep 100000 >/dev/null || { log "network scn$i failed"; exit 1; }
done
# A moment for the crowd's start to pass (its interfaces send nothing by
# themselves: IPv6 is off on IPv4-only networks; waiting 20 s instead
# did not change the crowded figure).
sleep 2
emit crowded tcp_gbps "$(tcp 1)"
emit crowded udp64_pps "$(udp 1)"

log "removing the crowd"
idle=() other=() nets=()
for i in $(seq "$IDLE"); do idle+=("idle$i"); done
for i in $(seq "$NETS"); do other+=("other$i"); nets+=("scn$i"); done
{ [ "$IDLE" -eq 0 ] || "$T" rm -f "${idle[@]}" >/dev/null; } &&
{ [ "$NETS" -eq 0 ] || { "$T" rm -f "${other[@]}" >/dev/null && "$T" network rm "${nets[@]}" >/dev/null; }; } ||
  { log "removing the crowd failed"; exit 1; }
sleep 2
emit one_pair_after tcp_gbps "$(tcp 1)"
emit one_pair_after udp64_pps "$(udp 1)"
mean() {  # EMPTY-CASE BEFORE-CASE AFTER-CASE: their mean, per metric
  local m a b
  for m in tcp_gbps udp64_pps; do
    a=$(val "$2" $m) b=$(val "$3" $m)
    emit "$1" $m "$(awk -v a="${a:-null}" -v b="${b:-null}" -v m=$m 'BEGIN {
      if (a != "null" && b != "null") printf (m == "tcp_gbps" ? "%.2f" : "%.0f"), (a + b) / 2 }')"
  done
}
mean empty one_pair one_pair_after

# The same crowd on the kernel bridge: namespaces with a veth each and a
# sleeping process in a session of its own, as tapnet's containers (and
# Docker's) are: the scheduler gives each session its own group. No
# address; neither crowd sends anything.
log "adding the crowd to the kernel bridge"
crowd=() sleepers=()
noipv6() { ip netns exec "$1" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1; }
noipv6 "$kbr" || { log "kernel crowd: sysctl failed"; exit 1; }
kcrowd() {  # NS BRIDGE
  ip netns add "$1" && NETNS+=" $1" && crowd+=("$1") && noipv6 "$1" &&
  ip -n "$kbr" link add "v$1" type veth peer name eth0 netns "$1" &&
  ip -n "$kbr" link set "v$1" master "$2" up && ip -n "$1" link set eth0 up || return 1
  # (ip netns exec and setsid exec in place: $! is the sleep.)
  ip netns exec "$1" setsid sleep 100000 </dev/null >/dev/null 2>&1 &
  track $! && sleepers+=($!)
}
for i in $(seq "$IDLE"); do kcrowd "sc$$i$i" br0 || { log "kernel crowd $i failed"; exit 1; }; done
for i in $(seq "$NETS"); do
  ip -n "$kbr" link add "br$i" type bridge && ip -n "$kbr" link set "br$i" up &&
  kcrowd "sc$$o$i" "br$i" || { log "kernel crowd network $i failed"; exit 1; }
done
sleep 2
emit kernel_crowded tcp_gbps "$(ktcp 1)"
emit kernel_crowded udp64_pps "$(kudp 1)"
log "removing the kernel bridge's crowd"
# (wait with no pid would wait for every child: with --idle 0 --nets 0
# there are no sleepers)
if [ ${#sleepers[@]} -gt 0 ]; then kill "${sleepers[@]}" 2>/dev/null; wait "${sleepers[@]}" 2>/dev/null; fi
for n in "${crowd[@]}"; do ip netns del "$n" || { log "ip netns del $n failed"; exit 1; }; done
for i in $(seq "$NETS"); do ip -n "$kbr" link del "br$i"; done
sleep 2
emit kernel_one_pair_after tcp_gbps "$(ktcp 1)"
emit kernel_one_pair_after udp64_pps "$(kudp 1)"
mean kernel_empty kernel_one_pair kernel_one_pair_after

log "tapnet stats (workers):"; timeout 20 "$T" stats | sed -n '/^WORKER/,/^$/p' >&2

ratio() {  # NAME CASE_A CASE_B METRIC
  local a b; a=$(val "$2" "$4") b=$(val "$3" "$4")
  echo "{\"ratio\":\"$1\",\"metric\":\"$4\",\"value\":$(awk -v a="${a:-null}" -v b="${b:-null}" \
    'BEGIN {if (a != "null" && b != "null" && b + 0 > 0) printf "%.3f", a / b; else printf "null"}')}"
}
ratio two_pairs/one_pair two_pairs one_pair tcp_gbps
ratio kernel_two_pairs/kernel_one_pair kernel_two_pairs kernel_one_pair tcp_gbps
ratio crowded/empty crowded empty tcp_gbps
ratio crowded/empty crowded empty udp64_pps
ratio kernel_crowded/kernel_empty kernel_crowded kernel_empty tcp_gbps
ratio kernel_crowded/kernel_empty kernel_crowded kernel_empty udp64_pps
