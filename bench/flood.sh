#!/usr/bin/env bash
# What forwarding costs the forwarder, in ONE run: a 64-byte UDP flood
# (`iperf3 -u -b 0 -l 18`), then one TCP stream (`iperf3`), from one
# namespace to another through
#   ovs          Open vSwitch's userspace datapath (netdev, TSO on) with two
#                TAP ports, as ../shared/bench/peers.sh sets it up
#   tapnet       tapnet's switch, two containers of one network
# and, for each, the forwarder's CPU time over the load (ovs-vswitchd, or
# the tapnet daemon: utime + stime from /proc/PID/stat) divided by what
# was received (packets of the flood, gigabytes of the stream): what a
# packet or a byte costs, apart from how much CPU the forwarder got (its
# share of a CPU over the load, also reported). tapnet's figure includes
# its workers' busy-polling (`tapnet stats`: SPIN). The sender and the
# receiver run as in peers.sh: for Open vSwitch both from this script's
# session, for tapnet the receiver is a container's process. Everything
# runs in namespaces made here; nothing leaves them.
#   usage: sudo [TAPNET=/path/to/tapnet] bench/flood.sh [--secs N]
#   tools: apt-get install iperf3 openvswitch-switch python3 iproute2
# stdout: one JSON object per line ({"peer","metric","value"}: rx_pps,
# tx_pps, cpu_share, cpu_us_per_pkt, ring_drop_pps (the sender's frames
# its TAP dropped at the full ring: what the forwarder did not read in
# time) for the flood; tcp_gbps,
# tcp_cpu_share, tcp_cpu_ms_per_gb for the stream), then the ratios
# tapnet/ovs; stderr: progress.
set -u -o pipefail
cd "$(dirname "$0")/.."
SECS=5
usage() { echo "usage: [TAPNET=path] $0 [--secs N]" >&2; }
while [ $# -gt 0 ]; do case $1 in
  --secs) SECS=${2:?--secs needs a value}; shift 2;;
  -h|--help) usage; exit 0;;
  *) usage; exit 2;;
esac; done
BENCH=flood; . bench/lib.sh
[[ $SECS =~ ^[1-9][0-9]*$ ]] || { log "--secs must be a positive integer"; exit 2; }
bench_setup iperf3 python3
RES=$W/results; : >"$RES"
P=fl$$

emit() { echo "{\"peer\":\"$1\",\"metric\":\"$2\",\"value\":${3:-null}}"; echo "$1 $2 ${3:-null}" >>"$RES"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null; }
UDP_METRICS="rx_pps tx_pps cpu_share cpu_us_per_pkt ring_drop_pps"
TCP_METRICS="tcp_gbps tcp_cpu_share tcp_cpu_ms_per_gb"

# The sender's interface's tx_dropped (`ip -s -j link show` from the
# sender's namespace; the command is "$@"): for a TAP, the frames the
# forwarder left in the ring until it was full (the kernel drops the rest)
tx_dropped() {
  "$@" 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["stats64"]["tx"]["dropped"])' 2>/dev/null || echo x
}

# PEER PID DROPS udp|tcp CMD...: runs the iperf3 client CMD (the flood's
# flags, or the stream's, are appended), emits the rates and the cost to
# the forwarder PID; DROPS is a command that prints the sender's
# interface's JSON (`ip -s -j link show`), for the flood's ring drops
flood() {
  local peer=$1 pid=$2 drops=$3 mode=$4 c0 c1 d0 d1 hz flags names=$TCP_METRICS; shift 4
  hz=$(getconf CLK_TCK)
  flags=(-t "$SECS" -J); [ "$mode" = udp ] && flags+=(-u -b 0 -l 18) && names=$UDP_METRICS
  c0=$(cpu_ticks "$pid"); d0=$(eval "tx_dropped $drops")
  timeout $((SECS + 30)) "$@" "${flags[@]}" >"$W/$peer.$mode.json" 2>&1 ||
    { log "$peer: iperf3 ($mode) failed: $(tail -1 "$W/$peer.$mode.json")"; }
  c1=$(cpu_ticks "$pid"); d1=$(eval "tx_dropped $drops")
  python3 - "$W/$peer.$mode.json" "${c0:-x}" "${c1:-x}" "$hz" "$mode" "$names" "$d0" "$d1" <<'PY' | while read -r m v; do emit "$peer" "$m" "$v"; done
import json, sys
path, c0, c1, hz, mode, names, d0, d1 = sys.argv[1:]
try:
    e = json.load(open(path))["end"]
    rx_bytes = e["sum_received"]["bytes"]
    tx_bytes = e["sum_sent"]["bytes"]
    secs = e["sum_received"]["seconds"]
    cpu = (int(c1) - int(c0)) / int(hz)
    share = cpu / secs
except (OSError, ValueError, KeyError, ZeroDivisionError):
    for m in names.split():
        print(m, "null")
    sys.exit(0)
if mode == "udp":
    rx, tx = rx_bytes / 18, tx_bytes / 18
    print("rx_pps", "%.0f" % (rx / secs))
    print("tx_pps", "%.0f" % (tx / secs))
    print("cpu_share", "%.2f" % share)
    print("cpu_us_per_pkt", "%.2f" % (cpu / rx * 1e6) if rx else "null")
    try:
        print("ring_drop_pps", "%.0f" % ((int(d1) - int(d0)) / secs))
    except ValueError:
        print("ring_drop_pps", "null")
else:
    print("tcp_gbps", "%.2f" % (rx_bytes * 8 / secs / 1e9))
    print("tcp_cpu_share", "%.2f" % share)
    print("tcp_cpu_ms_per_gb", "%.0f" % (cpu / rx_bytes * 1e12) if rx_bytes else "null")
PY
}

# ---- Open vSwitch ------------------------------------------------------------------------
ovs() {
  local O=$W/ovs VS s
  for s in ovs-vsctl ovs-vswitchd ovsdb-server ovsdb-tool; do
    command -v $s >/dev/null || { log "ovs: $s not installed (apt-get install openvswitch-switch)"; return 1; }
  done
  mkdir -p "$O"
  export OVS_RUNDIR=$O OVS_LOGDIR=$O OVS_DBDIR=$O OVS_SYSCONFDIR=$O
  for s in a b o; do ip netns add "$P$s" && NETNS+=" $P$s" && ip -n "$P$s" link set lo up || return 1; done
  ovsdb-tool create "$O/conf.db" /usr/share/openvswitch/vswitch.ovsschema || return 1
  ovsdb-server "$O/conf.db" --remote="punix:$O/db.sock" --pidfile="$O/ovsdb.pid" \
    --unixctl="$O/ovsdb.ctl" -vconsole:off --log-file="$O/ovsdb.log" --detach || return 1
  track "$(cat "$O/ovsdb.pid")"
  VS=(ovs-vsctl --db="unix:$O/db.sock" --timeout=30)
  "${VS[@]}" --no-wait init &&
  "${VS[@]}" --no-wait set Open_vSwitch . other_config:userspace-tso-enable=true || return 1
  # its own netns: its fixed-name "ovs-netdev" tap cannot collide
  ip netns exec "${P}o" ovs-vswitchd "unix:$O/db.sock" --pidfile="$O/vswitchd.pid" \
    --unixctl="$O/vswitchd.ctl" -vconsole:off --log-file="$O/vswitchd.log" --detach || return 1
  track "$(cat "$O/vswitchd.pid")"
  "${VS[@]}" add-br "${P}br" -- set bridge "${P}br" datapath_type=netdev || return 1
  for s in a b; do
    "${VS[@]}" add-port "${P}br" "${P}t$s" -- set interface "${P}t$s" type=tap &&
    ip -n "${P}o" link set "${P}t$s" netns "$P$s" || return 1
  done
  ip -n "${P}a" addr add 10.188.0.2/24 dev "${P}ta" && ip -n "${P}a" link set "${P}ta" up &&
  ip -n "${P}b" addr add 10.188.0.3/24 dev "${P}tb" && ip -n "${P}b" link set "${P}tb" up || return 1
  ip netns exec "${P}b" iperf3 -s -B 10.188.0.3 >/dev/null 2>&1 & track $!
  waitfor eval 'ip netns exec ${P}b ss -Hltn "sport = :5201" | grep -q .' || return 1
  ip netns exec "${P}a" ping -c 1 -w 10 -q 10.188.0.3 >/dev/null || { log "ovs: no ping through"; return 1; }
  for mode in udp tcp; do
    flood ovs "$(cat "$O/vswitchd.pid")" 'ip -n "${P}a" -s -j link show "${P}ta"' $mode \
      ip netns exec "${P}a" iperf3 -c 10.188.0.3
  done
  # Stopped before tapnet's flood (tracked: cleanup would end them too).
  kill "$(cat "$O/vswitchd.pid")" "$(cat "$O/ovsdb.pid")" 2>/dev/null
}
ovs || { log "ovs: setup failed (see above)"; for m in $UDP_METRICS $TCP_METRICS; do emit ovs $m ""; done; }

# ---- tapnet ------------------------------------------------------------------------------
start_daemon "${P}d"
"$T" network create --subnet 10.187.0.0/24 flnet >/dev/null &&
"$T" run -d --name flsrv --network flnet --ip 10.187.0.3 -- iperf3 -s >/dev/null &&
"$T" run -d --name flcli --network flnet --ip 10.187.0.2 -- sleep 100000 >/dev/null || { log "tapnet: setup failed"; exit 1; }
waitfor "$T" exec flcli -- ping -c 1 -w 1 -q 10.187.0.3 >/dev/null || { log "tapnet: no ping through"; exit 1; }
for mode in udp tcp; do
  flood tapnet "$DAEMON" '"$T" exec flcli -- ip -s -j link show eth0' $mode \
    "$T" exec flcli -- iperf3 -c 10.187.0.3
done
log "tapnet stats:"; timeout 10 "$T" stats >&2 || true

val() { awk -v p="$1" -v m="$2" '$1 == p && $2 == m {print $3}' "$RES"; }
for m in rx_pps cpu_share cpu_us_per_pkt $TCP_METRICS; do
  a=$(val tapnet $m) b=$(val ovs $m)
  echo "{\"ratio\":\"tapnet/ovs\",\"metric\":\"$m\",\"value\":$(awk -v a="${a:-null}" -v b="${b:-null}" \
    'BEGIN {if (a != "null" && b != "null" && b + 0 > 0) printf "%.3f", a / b; else printf "null"}')}"
done
