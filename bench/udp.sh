#!/usr/bin/env bash
# UDP from the host to a container through the NAT (an outbound flow): a
# sender on "the host's" loopback answers a container's request with
# datagrams of 1400 bytes for --secs seconds (bench/udpsend.py), and a
# receiver in the container counts what arrives (bench/udprecv.py), four
# ways: the sender's writes 64 KiB `UDP_SEGMENT` runs (as QUIC servers
# send) or one datagram each, the receiver's socket with `UDP_GRO` (as
# QUIC clients read) or without. Two peers:
#   tapnet   the container's request to its gateway reaches the host's
#            loopback; the NAT's socket reads a run of datagrams at once
#            (`UDP_GRO`) and hands the container one frame, which the
#            container's kernel cuts up (or gives whole to a `UDP_GRO`
#            socket)
#   kernel   the rootful kernel path (`kernel_nat` in bench/lib.sh, for UDP):
#            a netns behind a veth, iptables DNAT of NET.1:PORT to the host's
#            127.0.0.1:PORT
# With --reverse the container sends (bench/udpsend.py --to) and a reader
# on the host's loopback counts (bench/udpsink.py): path "outbound-sends";
# `UDP_SEGMENT` runs from a container leave its TAP as one USO frame that
# the NAT sends as one `UDP_SEGMENT` message.
# "The host" is a private network namespace made here (the daemon runs in
# it); the datagrams go only to the receiver's namespace.
#   usage: sudo [TAPNET=/path/to/tapnet] bench/udp.sh [--secs N] [--reverse]
#   tools: apt-get install python3 iproute2 iptables
# stdout: one JSON object per line ({"peer","path":"outbound",
# "metric":"udp_gbps","sender":"gso|plain","receiver":"gro|plain","value"}),
# then the ratios tapnet/kernel; stderr: progress, the host's UDP counters
# per case (what the NAT's socket or the kernel path dropped), and `tapnet
# stats` and the NAT's drop reasons at the end. Processes are killed by the pids recorded here.
set -u -o pipefail
cd "$(dirname "$0")/.."
SECS=5 REVERSE=""
usage() { echo "usage: [TAPNET=path] $0 [--secs N] [--reverse]" >&2; }
while [ $# -gt 0 ]; do case $1 in
  --secs) SECS=${2:?--secs needs a value}; shift 2;;
  --reverse) REVERSE=1; shift;;
  -h|--help) usage; exit 0;;
  *) usage; exit 2;;
esac; done
BENCH=udp; . bench/lib.sh
[[ $SECS =~ ^[1-9][0-9]*$ ]] || { log "--secs must be a positive integer"; exit 2; }
[ "$(id -u)" = 0 ] || { log "run as root"; exit 2; }
for t in python3 ip ss iptables nstat; do
  command -v $t >/dev/null 2>&1 || { log "missing $t (apt-get install python3 iproute2 iptables)"; exit 2; }
done
T=${TAPNET:-$PWD/target/release/tapnet}
[ -x "$T" ] || { log "no binary at $T (cargo build --release, or set TAPNET)"; exit 2; }
W=$(mktemp -d /tmp/tapnet-udpbench.XXXXXX); chmod 755 "$W"
export TAPNET_HOST=unix://$W/tapnet.sock
NETNS=""; DAEMON=""
trap bench_cleanup EXIT
trap 'log interrupted; exit 130' INT TERM HUP
PORT=5400 GW=10.196.0.1 KNET=10.195.0
HOSTNS=ub$$ KNS=ubk$$
H=(ip netns exec "$HOSTNS")
RES=$W/results; : >"$RES"

start_daemon "$HOSTNS"
"${H[@]}" python3 bench/udpsend.py $PORT 2>"$W/sender.log" & track $!
waitfor eval '"${H[@]}" ss -Hlun "sport = :$PORT" | grep -q .' || { log "the sender did not start"; exit 1; }
# --reverse: the host's readers, with UDP_GRO on PORT+1, without on PORT+2.
if [ -n "$REVERSE" ]; then
  for rcv in gro plain; do
    p=$((PORT + 1)); [ $rcv = plain ] && p=$((PORT + 2))
    "${H[@]}" python3 bench/udpsink.py $p $rcv >"$W/sink-$rcv.log" 2>&1 & track $!
    waitfor eval '"${H[@]}" ss -Hlun "sport = :$p" | grep -q .' || { log "the $rcv reader did not start"; exit 1; }
  done
fi

# The kernel path, for UDP: DNAT of $KNET.1:PORT to the host's loopback.
ip netns add "$KNS" && NETNS+=" $KNS" && ip -n "$KNS" link set lo up &&
ip -n "$HOSTNS" link add ubv0 type veth peer name eth0 netns "$KNS" &&
ip -n "$HOSTNS" addr add "$KNET.1/24" dev ubv0 && ip -n "$HOSTNS" link set ubv0 up &&
ip -n "$KNS" addr add "$KNET.2/24" dev eth0 && ip -n "$KNS" link set eth0 up &&
ip -n "$KNS" route add default via "$KNET.1" &&
"${H[@]}" sysctl -qw net.ipv4.conf.ubv0.route_localnet=1 net.ipv4.conf.all.route_localnet=1 &&
"${H[@]}" iptables -t nat -A PREROUTING -i ubv0 -d "$KNET.1" -p udp --dport $PORT:$((PORT + 2)) -j DNAT --to-destination 127.0.0.1 ||
  { log "the kernel path's setup failed"; exit 1; }

"$T" network create --subnet 10.196.0.0/24 --gateway $GW udpbench >/dev/null || { log "network create failed"; exit 1; }

# case PEER SENDER RECEIVER: one measurement, its JSON line, the host's counters.
case_() {
  local peer=$1 sender=$2 receiver=$3 mode=go v path=outbound
  [ "$sender" = plain ] && mode=go1
  "${H[@]}" nstat -n
  if [ -n "$REVERSE" ]; then
    local p=$((PORT + 1)) to=$GW sink=$W/sink-$receiver.log lines
    [ "$receiver" = plain ] && p=$((PORT + 2))
    [ "$peer" = kernel ] && to=$KNET.1
    path=outbound-sends
    lines=$(wc -l <"$sink")
    if [ "$peer" = tapnet ]; then
      "$T" run --rm --network udpbench -- python3 "$PWD/bench/udpsend.py" --to $to $p "$SECS" "$sender" 2>/dev/null
    else
      ip netns exec "$KNS" python3 "$PWD/bench/udpsend.py" --to $to $p "$SECS" "$sender" 2>/dev/null
    fi
    # The reader reports a burst 2 s after its last datagram.
    waitfor eval '[ "$(wc -l <"$sink")" -gt "$lines" ]' || sleep 5
    v=$(tail -n1 "$sink")
    [ "$(wc -l <"$sink")" -gt "$lines" ] || v=""
  elif [ "$peer" = tapnet ]; then
    v=$("$T" run --rm --network udpbench -- python3 "$PWD/bench/udprecv.py" $GW $PORT "$SECS" $mode "$receiver")
  else
    v=$(ip netns exec "$KNS" python3 "$PWD/bench/udprecv.py" "$KNET.1" $PORT "$SECS" $mode "$receiver")
  fi
  v=$(awk '/Gbit/{print $1}' <<<"$v")
  printf '{"peer":"%s","path":"%s","metric":"udp_gbps","sender":"%s","receiver":"%s","value":%s}\n' \
    "$peer" "$path" "$sender" "$receiver" "${v:-null}" | tee -a "$RES"
  log "$peer, sender $sender, receiver $receiver: ${v:-no data} Gbit/s; the host's UDP counters: $("${H[@]}" nstat | awk '/Udp(InDatagrams|RcvbufErrors)/{printf "%s %s ", $1, $2}')"
  sleep 1
}
for sender in gso plain; do
  for receiver in gro plain; do
    case_ tapnet $sender $receiver
    case_ kernel $sender $receiver
  done
done
python3 - "$RES" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
v = {(r["peer"], r["path"], r["sender"], r["receiver"]): r["value"] for r in rows}
for (p, path, s, r), x in v.items():
    k = v.get(("kernel", path, s, r))
    if p == "tapnet" and x and k:
        print(json.dumps({"ratio": "tapnet/kernel", "path": path, "of": "udp_gbps",
                          "sender": s, "receiver": r, "value": round(x / k, 2)}))
PY
log "tapnet stats at the end:"; "$T" stats >&2 || true
log "the NAT's drops at the end (tapnet conntrack stats; host_rcvbuf: what its sockets' full buffers lost):"
"$T" conntrack stats --format json | python3 -c '
import json, sys
d = json.load(sys.stdin)["drop_reasons"]
print(" ".join(f"{k} {v}" for k, v in d.items() if v) or "none")' >&2 || true
