#!/usr/bin/env bash
# Overlay throughput between containers on two "hosts", in ONE run, on the same
# topology built twice (network namespaces; the hosts joined by a veth pair as
# the underlay, MTU 1500; containers with a 1450-byte MTU on the overlay):
#   tapnet      two tapnet dataplanes (examples/overlay_pair: the daemon's overlay
#               wiring is the control plane's), VXLAN over their UDP sockets
#   tapnet-esp  the same, ESP-encrypted (AES-GCM-128); no kernel peer (this
#               kernel has no CONFIG_INET_ESP), shown for its cost
#   kernel      a Linux vxlan device (nolearning, static flood entry) and a kernel
#               bridge on each host, the container on a veth
# Metrics: one TCP stream (iperf3, receiver Gbit/s) and 64-byte UDP (iperf3 -u
# -l 64 -b 0, packets per second received).
#   usage: sudo bench/overlay.sh [--secs N]        (WORKERS=N: tapnet workers, 1)
#   tools: iperf3 iproute2 python3
# stdout: one JSON object per line ({"peer","metric","value"}), then the ratios
# tapnet/kernel; stderr: progress and a table. Everything lives in namespaces made
# here (removed in a trap); processes are killed by the PIDs recorded here.
set -u -o pipefail
cd "$(dirname "$0")/.."
SECS=5
while [ $# -gt 0 ]; do case $1 in
  --secs) SECS=${2:?--secs needs a value}; shift 2;;
  -h|--help) echo "usage: $0 [--secs N]" >&2; exit 0;;
  *) echo "usage: $0 [--secs N]" >&2; exit 2;;
esac; done
log() { echo "overlay.sh: $*" >&2; }
[ "$(id -u)" = 0 ] || { log "run as root"; exit 2; }
for t in iperf3 ip bridge python3 timeout; do
  command -v $t >/dev/null || { log "missing $t"; exit 2; }; done
cargo build --release --quiet --bin tapnet --example overlay_pair || exit 1
EX=$PWD/target/release/examples/overlay_pair
export TAPNET=$PWD/target/release/tapnet
P=ob$$
W=$(mktemp -d /tmp/tapnet-overlaybench.XXXXXX); chmod 755 "$W"
RES=$W/results; : >"$RES"
NSS="" PIDS=""
cleanup() {
  set +e
  exec 9>&- 2>/dev/null
  for p in $PIDS; do kill "$p" 2>/dev/null; done
  sleep 0.3
  for p in $PIDS; do kill -KILL "$p" 2>/dev/null; done
  wait 2>/dev/null
  for n in $NSS; do ip netns del "$n" 2>/dev/null; done
  rm -rf "$W"
}
trap cleanup EXIT
trap 'log interrupted; exit 130' INT TERM HUP
mkns() { ip netns add "$1" && ip -n "$1" link set lo up && NSS="$1 $NSS"; }
waitfor() { local i; for i in $(seq 100); do "$@" && return 0; sleep 0.1; done; return 1; }

# Two hosts $1h1/$1h2 with underlay 10.$2.0.1/.2 and empty containers $1c1/$1c2.
hosts() {
  local p=$1 u=$2
  mkns ${p}h1 && mkns ${p}h2 && mkns ${p}c1 && mkns ${p}c2 &&
  ip -n ${p}h1 link add u1 type veth peer name u2 netns ${p}h2 &&
  ip -n ${p}h1 addr add 10.$u.0.1/24 dev u1 && ip -n ${p}h1 link set u1 up &&
  ip -n ${p}h2 addr add 10.$u.0.2/24 dev u2 && ip -n ${p}h2 link set u2 up
}

emit() {  # PEER METRIC VALUE|""
  echo "{\"peer\":\"$1\",\"metric\":\"$2\",\"value\":${3:-null}}"
  echo "$1 $2 ${3:-null}" >>"$RES"
  log "$1 $2: ${3:-no data}"
}
parse() {  # tcp|udp FILE: Gbit/s received, or packets/s received
  python3 - "$1" "$2" <<'PY'
import json, sys
try:
    e = json.load(open(sys.argv[2]))["end"]
    if sys.argv[1] == "tcp":
        print("%.3f" % (e["sum_received"]["bits_per_second"] / 1e9))
    else:
        s = e.get("sum_received") or e["sum"]
        got = s["packets"] - s.get("lost_packets", 0)
        print("%.0f" % (got / s["seconds"]))
except Exception:
    pass
PY
}
measure() {  # PEER CLIENT_NS SERVER_IP
  local peer=$1 c=$2 ip=$3 out
  out=$W/$peer.tcp
  timeout $((SECS + 20)) ip netns exec "$c" iperf3 -c "$ip" -t "$SECS" -J >"$out" 2>&1
  emit "$peer" tcp_gbps "$(parse tcp "$out")"
  out=$W/$peer.udp
  timeout $((SECS + 20)) ip netns exec "$c" iperf3 -c "$ip" -u -l 64 -b 0 -t "$SECS" -J >"$out" 2>&1
  emit "$peer" udp64_pps "$(parse udp "$out")"
}
server() {  # NS IP: an iperf3 server, tracked
  ip netns exec "$1" iperf3 -s -B "$2" >/dev/null 2>&1 & PIDS="$PIDS $!"
  waitfor eval "ip netns exec $1 ss -Hltn 'sport = :5201' | grep -q ."
}

tapnet_row() {  # PEER [--encrypted]
  local peer=$1 p=$P${1##*-}; p=${p:0:10}
  hosts "$p" 203 || { emit "$peer" tcp_gbps ""; emit "$peer" udp64_pps ""; return; }
  rm -f "$W/ctl"; mkfifo "$W/ctl"
  "$EX" ${p}h1 10.203.0.1:4789 ${p}h2 10.203.0.2:4789 ${p}c1 ${p}c2 ${2:-} \
    <"$W/ctl" >"$W/$peer.ready" 2>"$W/$peer.stats" & local ex=$!; PIDS="$PIDS $ex"
  exec 9>"$W/ctl"
  if ! waitfor grep -q ready "$W/$peer.ready"; then
    log "$peer: $(tail -n2 "$W/$peer.stats")"; emit "$peer" tcp_gbps ""; emit "$peer" udp64_pps ""
    exec 9>&-; return
  fi
  server ${p}c2 10.210.0.3
  ip netns exec ${p}c1 ping -c 1 -W 2 10.210.0.3 >/dev/null || log "$peer: no ping"
  measure "$peer" ${p}c1 10.210.0.3
  exec 9>&-                              # the example prints its counters and exits
  waitfor eval "! kill -0 $ex 2>/dev/null"
  log "$peer counters: $(tr '\n' ' ' <"$W/$peer.stats")"
}

kernel_row() {
  local p=${P}k i
  hosts "$p" 204 || { emit kernel tcp_gbps ""; emit kernel udp64_pps ""; return; }
  for i in 1 2; do
    local h=${p}h$i o=$((3 - i))
    ip -n $h link add vx0 type vxlan id 4242 dstport 4789 local 10.204.0.$i nolearning &&
    bridge -n $h fdb append 00:00:00:00:00:00 dev vx0 dst 10.204.0.$o &&
    ip -n $h link set vx0 mtu 1450 &&
    ip -n $h link add br0 type bridge && ip -n $h link set vx0 master br0 &&
    ip -n $h link add kv type veth peer name eth0 netns ${p}c$i &&
    ip -n $h link set kv mtu 1450 master br0 && ip -n $h link set kv up &&
    ip -n $h link set vx0 up && ip -n $h link set br0 up &&
    ip -n ${p}c$i link set eth0 mtu 1450 &&
    ip -n ${p}c$i addr add 10.210.0.$((i + 1))/24 dev eth0 && ip -n ${p}c$i link set eth0 up ||
      { emit kernel tcp_gbps ""; emit kernel udp64_pps ""; return; }
  done
  server ${p}c2 10.210.0.3
  ip netns exec ${p}c1 ping -c 1 -W 2 10.210.0.3 >/dev/null || log "kernel: no ping"
  measure kernel ${p}c1 10.210.0.3
}

log "${SECS}s per test; tapnet workers: ${WORKERS:-1} per host"
tapnet_row tapnet
tapnet_row tapnet-esp --encrypted
kernel_row

val() { awk -v p="$1" -v m="$2" '$1 == p && $2 == m {print $3}' "$RES"; }
{ printf '%-12s %-10s %s\n' peer metric value
  while read -r p m v; do printf '%-12s %-10s %s\n' "$p" "$m" "$v"; done <"$RES"; } >&2
for peer in tapnet tapnet-esp; do for m in tcp_gbps udp64_pps; do
  a=$(val $peer $m); b=$(val kernel $m)
  r=$(awk -v a="${a:-null}" -v b="${b:-null}" \
    'BEGIN {if (a != "null" && b != "null" && b + 0 > 0) printf "%.3f", a / b; else printf "null"}')
  echo "{\"ratio\":\"$peer/kernel\",\"metric\":\"$m\",\"value\":$r}"
  log "ratio $peer/kernel ($m): $r"
done; done
