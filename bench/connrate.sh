#!/usr/bin/env bash
# New TCP connections per second through the NAT, in ONE run: one client
# connects, sends a byte, reads it back and closes, again and again, for
# SECS seconds (the same small Python client everywhere), against:
#   outbound   a container to an echo server on "the host's" loopback, through
#              its gateway: tapnet vs the rootful kernel path (a netns behind a
#              veth, iptables DNAT to 127.0.0.1 with route_localnet).
#   published  a client on the host to 127.0.0.1:PORT, an echo server in the
#              container: tapnet `-p` vs the kernel path (DNAT in OUTPUT,
#              MASQUERADE on the veth: Docker without its userland proxy).
#   pasta      both paths through Debian's pasta (passt), run as nobody, as in
#              bench/nat.sh.
# "The host" is a private network namespace made here (the daemon, the
# iptables rules and the servers live in namespaces made here).
#   usage: sudo [TAPNET=/path/to/tapnet] bench/connrate.sh [--secs N]
#   tools: apt-get install python3 iptables iproute2 util-linux passt
# stdout: one JSON object per line ({"peer","path","metric":"conn_per_s",
# "value"}), then the ratios tapnet/kernel and tapnet/pasta; stderr: progress.
set -u -o pipefail
cd "$(dirname "$0")/.."
SECS=5
usage() { echo "usage: [TAPNET=path] $0 [--secs N]" >&2; }
while [ $# -gt 0 ]; do case $1 in
  --secs) SECS=${2:?--secs needs a value}; shift 2;;
  -h|--help) usage; exit 0;;
  *) usage; exit 2;;
esac; done
BENCH=connrate; . bench/lib.sh
[[ $SECS =~ ^[1-9][0-9]*$ ]] || { log "--secs must be a positive integer"; exit 2; }
bench_setup python3 iptables nsenter
HOSTNS=cr$$d KNS=cr$$k
RES=$W/results; : >"$RES"

cp bench/echo.py "$W/echo.py" && cp bench/connclient.py "$W/client.py" || exit 1
emit() {  # PEER PATH VALUE|""
  echo "{\"peer\":\"$1\",\"path\":\"$2\",\"metric\":\"conn_per_s\",\"value\":${3:-null}}"
  echo "$1 $2 ${3:-null}" >>"$RES"; log "$1 ($2): ${3:-no data} connections/s"
}
# The rows are measured in one-second slices, every row in turn, SECS
# rounds of them: a drift of the shared machine over the run then weighs on
# every peer alike (measured one after the other, the kernel's rate moved
# by 1.2k-2.4k connections/s between runs minutes apart).
ROWS=() SLICES=$W/slices; : >"$SLICES"
row() {  # PEER PATH CMD-PREFIX... (the client's arguments follow: HOST PORT)
  local peer=$1 path=$2; shift 2
  ROWS+=("$peer $path"); printf '%s\0' "$@" >"$W/cmd-$peer-$path"
}
slice() {  # PEER PATH: one slice of the row's client
  local peer=$1 path=$2 out cmd=()
  mapfile -d '' cmd <"$W/cmd-$peer-$path"
  out=$(timeout 30 "${cmd[@]}" 1 2>"$W/client.err") || { log "$peer ($path): client failed: $(tail -1 "$W/client.err")"; echo "$peer $path fail" >>"$SLICES"; return; }
  [ "${out#* }" = 0 ] || log "$peer ($path): ${out#* } failed connections"
  echo "$peer $path ${out% *}" >>"$SLICES"
}
# tapnet, its daemon in "the host"
start_daemon "$HOSTNS"
H=(ip netns exec "$HOSTNS")
"${H[@]}" python3 "$W/echo.py" 127.0.0.1 7001 >"$W/echo-host.log" 2>&1 & track $!
waitfor eval '"${H[@]}" ss -Hltn "sport = :7001" | grep -q .' || { log "echo server did not start"; exit 1; }
"$T" network create --subnet 10.195.0.0/24 --gateway 10.195.0.1 crnet >/dev/null
"$T" run -d --name crsrv --network crnet -p 17002:7002 -- python3 "$W/echo.py" 0.0.0.0 7002 >/dev/null
"$T" run -d --name crcli --network crnet -- sleep 100000 >/dev/null
waitfor eval '"${H[@]}" ss -Hltn "sport = :17002" | grep -q .'
row tapnet outbound "$T" exec crcli -- python3 "$W/client.py" 10.195.0.1 7001
row tapnet published "${H[@]}" python3 "$W/client.py" 127.0.0.1 17002
# the kernel path
kernel_nat "$HOSTNS" "$KNS" crk0 10.194.0 7001 17003 7002 || { log "kernel path setup failed"; exit 1; }
ip netns exec "$KNS" python3 "$W/echo.py" 10.194.0.2 7002 >"$W/echo-kernel.log" 2>&1 & track $!
waitfor eval 'ip netns exec $KNS ss -Hltn "sport = :7002" | grep -q .'
row kernel outbound ip netns exec "$KNS" python3 "$W/client.py" 10.194.0.1 7001
row kernel published "${H[@]}" python3 "$W/client.py" 127.0.0.1 17003
# pasta (Debian's passt), run as nobody in "the host", as bench/nat.sh runs
# it: outbound to the gateway address it maps to the host's loopback (a
# default route via a veth to an empty namespace gives it a gateway to
# copy; the other rows reach only 127.0.0.1 and their own namespaces),
# published with `pasta -t` to an echo server in its namespace. The
# outbound client starts a pasta of its own in every slice (the client
# times only its own loop).
pasta_rows() {
  local pp dead=cr$$p AS=(setpriv --reuid=65534 --regid=65534 --clear-groups)
  command -v pasta >/dev/null || { log "pasta not installed (apt-get install passt)"; return 1; }
  NETNS+=" $dead"
  ip netns add "$dead" && ip -n "$HOSTNS" link add crp0 type veth peer name crp1 netns "$dead" &&
  ip -n "$HOSTNS" addr add 10.193.0.1/24 dev crp0 && ip -n "$HOSTNS" link set crp0 up &&
  ip -n "$dead" addr add 10.193.0.2/24 dev crp1 && ip -n "$dead" link set crp1 up &&
  ip -n "$HOSTNS" route add default via 10.193.0.2 || { log "pasta: veth setup failed"; return 1; }
  row pasta outbound "${H[@]}" "${AS[@]}" pasta --config-net -- python3 "$W/client.py" 10.193.0.2 7001
  "${H[@]}" "${AS[@]}" pasta --config-net -t 17004:7004 -- python3 "$W/echo.py" 0.0.0.0 7004 >"$W/echo-pasta.log" 2>&1 &
  pp=$!; track $pp
  waitfor eval '"${H[@]}" ss -Hltn "sport = :17004" | grep -q .'
  row pasta published "${H[@]}" python3 "$W/client.py" 127.0.0.1 17004
}
pasta_rows || { emit pasta outbound ""; emit pasta published ""; }
sleep 1  # the echo servers inside start after their listeners
log "${#ROWS[@]} rows, $SECS slices of one second each"
for _ in $(seq "$SECS"); do
  for r in "${ROWS[@]}"; do slice $r; done
done
for r in "${ROWS[@]}"; do  # a row's rate: the mean of its slices (none failed)
  set -- $r
  emit "$1" "$2" "$(awk -v p="$1" -v q="$2" '$1 == p && $2 == q {n++; if ($3 == "fail") bad = 1; s += $3}
    END {if (n && !bad) printf "%.0f", s / n}' "$SLICES")"
done
# Where the packets went: the daemon's counters (per port, per worker with
# its busy and polling shares, drops by reason), after the measurements.
if [ -n "$DAEMON" ]; then log "tapnet stats:"; timeout 10 "$T" stats >&2 || true; fi
val() { awk -v p="$1" -v q="$2" '$1 == p && $2 == q {print $3}' "$RES"; }
for peer in kernel pasta; do for path in outbound published; do
  a=$(val tapnet $path) b=$(val $peer $path)
  r=$(awk -v a="${a:-null}" -v b="${b:-null}" 'BEGIN {if (a != "null" && b != "null" && b + 0 > 0) printf "%.3f", a / b; else printf "null"}')
  echo "{\"ratio\":\"tapnet/$peer\",\"path\":\"$path\",\"conn_per_s\":$r}"
done; done
