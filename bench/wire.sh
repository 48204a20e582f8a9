#!/bin/bash
# wire.sh - what the port kind alone costs: two namespaces joined by the
# kernel bridge, by a minimal forwarder on TAPs, or by the same forwarder
# on AF_PACKET sockets over veth pairs (bench/wire.c; no switching, no
# tapnet), with peers.sh's three measurements (one iperf3 TCP stream,
# a 64-byte UDP flood counted at the receiver and the sender, ping RTT).
# It asks whether a veth port read with AF_PACKET would lift what a TAP
# port bounds (bench/NOTES.md: "A veth port instead of a TAP").
#   usage: sudo bench/wire.sh [--rounds N] [--secs S]
#   tools: apt-get install gcc iperf3 iputils-ping python3 iproute2
# Output: one JSON object per measurement on stdout
#   {"group":"wire","peer":"bridge|tap|pkt","round":R,"metric":M,"value":V}
# Everything runs in namespaces made here (deleted at the end); the
# forwarder is killed by its PID.
set -u
cd "$(dirname "$0")/.." || exit 2
BENCH=wire; . bench/lib.sh
ROUNDS=3 SECS=4
while [ $# -gt 0 ]; do
  case $1 in
    --rounds) ROUNDS=$2; shift 2;;
    --secs) SECS=$2; shift 2;;
    *) log "unknown argument $1"; exit 2;;
  esac
done
bench_setup gcc iperf3 ping python3
gcc -O2 -Wall -o "$W/wire" bench/wire.c || { log "cannot build bench/wire.c"; exit 1; }
A=tnwa$$ B=tnwb$$ F=tnwf$$

topology() {  # MODE: A and B joined through F; sets FWD (the forwarder's pid, or "")
  local m=$1 n i
  for n in $A $B $F; do ip netns add $n && ip -n $n link set lo up || exit 1; NETNS+=" $n"; done
  FWD=""
  if [ "$m" = tap ]; then
    ip netns exec $F "$W/wire" tap ta tb >"$W/wire.out" 2>&1 & FWD=$!; track $FWD
    waitfor grep -q ready "$W/wire.out" || { log "the forwarder did not start: $(cat "$W/wire.out")"; exit 1; }
    ip -n $F link set ta netns $A; ip -n $F link set tb netns $B
    IA=ta IB=tb
  else
    ip link add va netns $A type veth peer name ha netns $F
    ip link add vb netns $B type veth peer name hb netns $F
    ip -n $F link set ha up; ip -n $F link set hb up
    IA=va IB=vb
    if [ "$m" = bridge ]; then
      ip -n $F link add br0 type bridge
      for i in ha hb; do ip -n $F link set $i master br0; done
      ip -n $F link set br0 up
    else
      ip netns exec $F "$W/wire" pkt ha hb >"$W/wire.out" 2>&1 & FWD=$!; track $FWD
      waitfor grep -q ready "$W/wire.out" || { log "the forwarder did not start: $(cat "$W/wire.out")"; exit 1; }
    fi
  fi
  ip -n $A addr add 10.198.0.2/24 dev $IA; ip -n $A link set $IA up
  ip -n $B addr add 10.198.0.3/24 dev $IB; ip -n $B link set $IB up
}

teardown() {
  local n
  [ -n "$FWD" ] && { kill -TERM "$FWD" 2>/dev/null; wait "$FWD" 2>/dev/null; }
  for n in $A $B $F; do ip netns del $n 2>/dev/null; done
  NETNS=""
}

emit() { echo "{\"group\":\"wire\",\"peer\":\"$1\",\"round\":$2,\"metric\":\"$3\",\"value\":${4:-null}}"; }

measure() {  # MODE ROUND
  local srv t u r
  topology "$1"
  ip netns exec $A ping -c 3 -w 5 -q 10.198.0.3 >/dev/null || log "$1: no ping"
  ip netns exec $B iperf3 -s -B 10.198.0.3 >"$W/iperf3-srv.log" 2>&1 & srv=$!; track $srv
  waitfor eval 'ip netns exec $B ss -Hltn "sport = :5201" | grep -q .' || log "$1: no iperf3 server"
  t=$(ip netns exec $A iperf3 -c 10.198.0.3 -t "$SECS" -J 2>/dev/null | python3 -c \
    'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"] / 1e9))' 2>/dev/null)
  u=$(ip netns exec $A iperf3 -c 10.198.0.3 -t "$SECS" -u -b 0 -l 18 -J 2>/dev/null | python3 -c \
    'import json,sys; e = json.load(sys.stdin)["end"]; r, s = e["sum_received"], e["sum_sent"]
print("%.0f %.0f" % (r["bytes"] / 18 / r["seconds"], s["bytes"] / 18 / s["seconds"]))' 2>/dev/null)
  r=$(ip netns exec $A ping -c 200 -i 0.005 -q 10.198.0.3 | awk -F' = ' '/^rtt/ {split($2, a, "/"); printf "%.1f", a[2] * 1000}')
  kill -TERM $srv 2>/dev/null; wait $srv 2>/dev/null
  emit "$1" "$2" tcp_gbps "$t"; emit "$1" "$2" udp64_pps "${u% *}"; emit "$1" "$2" udp64_tx_pps "${u#* }"
  emit "$1" "$2" rtt_avg_us "$r"
  log "round $2 $1: TCP ${t:-?} Gbit/s, 64 B received/sent ${u:-?} pkt/s, RTT ${r:-?} µs"
  teardown
}

for round in $(seq "$ROUNDS"); do
  for mode in bridge tap pkt; do measure $mode "$round"; done
done
