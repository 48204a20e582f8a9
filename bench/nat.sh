#!/usr/bin/env bash
# NAT throughput, one TCP stream (iperf3), in ONE run, on two paths:
#   outbound   a container reaches an iperf3 server on "the host's" loopback:
#              tapnet (container -> its gateway -> smoltcp -> host socket to
#              127.0.0.1) vs slirp4netns --mtu 1500 and --mtu 65520 (netns ->
#              10.0.2.2, slirp's alias of the host loopback, as peers.sh does).
#   published  a client on the host connects to 127.0.0.1:PORT and reaches an
#              iperf3 server in a container: tapnet `-p PORT:5201` vs the classic
#              userland proxy, `socat TCP-LISTEN:PORT,fork TCP:SERVER:5201` in
#              front of an iperf3 server in a plain netns behind a veth pair.
#   pasta      both paths through Debian's pasta (passt), run as nobody: outbound
#              to the gateway address it maps to the host's loopback, published
#              with `pasta -t` (to an inner port of its own).
#   kernel     both paths the rootful kernel way (Docker's bridge without its
#              userland proxy): a netns behind a veth, iptables DNAT (and
#              MASQUERADE) in the host netns.
# "The host" is a private network namespace made here (the tapnet daemon runs in
# it, slirp4netns and socat too); nothing reaches the machine's real interfaces.
#   usage: sudo [TAPNET=/path/to/tapnet] bench/nat.sh [--secs N] [--reverse] [--app-cpus LIST]
#                                                     [--peers LIST] [--cc ALGO]
#   (--reverse: iperf3 -R on every row: data flows from the server's side, i.e.
#   host -> container on the outbound path, container -> client when published;
#   --app-cpus: every iperf3, client and server, runs on these CPUs (taskset);
#   the relays (tapnet's workers, pasta, slirp4netns, socat) stay free. The
#   kernel path's NAT runs in its endpoints' system calls and softirqs, so on
#   a 2-CPU machine `--app-cpus 1` measures each path with one CPU for the
#   application and, for a relay, the other for itself: a host with a core
#   to spare. Give the tapnet daemon `--worker-cpus 0` through
#   TAPNET_DAEMON_ARGS with TAPNET=bench/tapnet-args.sh.
#   --cc ALGO: every TCP connection of the run uses that congestion control:
#   the machine's default (net.ipv4.tcp_congestion_control, which every
#   namespace made afterwards starts with: the relays' host sockets, the
#   containers', the kernel path's) is ALGO while the script runs, restored
#   at its end; without it, the system's default.)
#   tools: apt-get install iperf3 slirp4netns passt socat iptables iproute2 util-linux
# stdout: one JSON object per line ({"peer","path","metric":"tcp_gbps","value"};
# per row also "cpus_busy", the CPUs the whole machine kept busy in the middle
# of the stream, and "cpu_s_per_gb", those CPU-seconds per GB received),
# then the ratios tapnet/kernel, tapnet/slirp4netns-1500, tapnet/slirp4netns-65520
# (outbound) and tapnet/kernel, tapnet/socat (published); stderr: progress and a table. A row that cannot run
# prints "PEER: no data" (value null) and the others still run. Processes are
# killed by the pids recorded here; namespaces and files go in a trap.
set -u -o pipefail
cd "$(dirname "$0")/.."
SECS=5
REV=""                                  # --reverse: iperf3 -R (data towards the container)
APP_CPUS=""                             # --app-cpus: where every iperf3 runs
PEERS=""                                # --peers: only these rows (comma list; all if empty)
CC=""                                   # --cc: every connection's congestion control
usage() { echo "usage: [TAPNET=path] $0 [--secs N] [--reverse] [--app-cpus LIST] [--peers tapnet,kernel,slirp4netns,pasta,socat] [--cc ALGO]" >&2; }
while [ $# -gt 0 ]; do case $1 in
  --secs) SECS=${2:?--secs needs a value}; shift 2;;
  --reverse) REV=-R; shift;;
  --app-cpus) APP_CPUS=${2:?--app-cpus needs a CPU list}; shift 2;;
  --peers) PEERS=${2:?--peers needs a list}; shift 2;;
  --cc) CC=${2:?--cc needs a value}; shift 2;;
  -h|--help) usage; exit 0;;
  *) usage; exit 2;;
esac; done
BENCH=nat; . bench/lib.sh                # log, track, waitfor, bench_cleanup, kernel_nat
have() { command -v "$1" >/dev/null 2>&1; }
want() { [ -z "$PEERS" ] || [[ ",$PEERS," == *",$1,"* ]]; }  # PEER: is its row asked for?
for p in ${PEERS//,/ }; do case $p in tapnet|kernel|slirp4netns|pasta|socat) ;;
  *) log "--peers: unknown peer $p (tapnet, kernel, slirp4netns, pasta, socat)"; exit 2;; esac; done
[[ $SECS =~ ^[1-9][0-9]*$ ]] || { log "--secs must be a positive integer"; exit 2; }
[ "$(id -u)" = 0 ] || { log "run as root"; exit 2; }
for t in iperf3 ip ss timeout awk nsenter unshare; do
  have $t || { log "missing $t (apt-get install iperf3 iproute2 util-linux)"; exit 2; }
done
APP=()                                  # every iperf3 below runs as "${IPERF[@]}"
[ -z "$APP_CPUS" ] || app_cpus "$APP_CPUS"
IPERF=("${APP[@]}" iperf3)

T=${TAPNET:-$PWD/target/release/tapnet}
if [ -z "${TAPNET:-}" ] && [ ! -x "$T" ]; then cargo build --release --quiet || true; fi
P=nb$$                                  # prefix of the namespaces made here
HOSTNS=${P}d SRVNS=${P}s
W=$(mktemp -d /tmp/tapnet-natbench.XXXXXX); chmod 755 "$W"
RES=$W/results; : >"$RES"
export TAPNET_HOST=unix://$W/tapnet.sock

# Removed at exit by bench_cleanup (with what kernel_nat makes).
NETNS="$SRVNS ${P}x $HOSTNS"
trap bench_cleanup EXIT
trap 'log interrupted; exit 130' INT TERM HUP
[ -z "$CC" ] || cc_default "$CC"         # before any namespace is made

# ---- "the host": a private netns, and an iperf3 server on its loopback ----------------
ip netns add "$HOSTNS" && ip -n "$HOSTNS" link set lo up || exit 1
H=(ip netns exec "$HOSTNS")
LPORT=5201
"${H[@]}" "${IPERF[@]}" -s -B 127.0.0.1 -p $LPORT >"$W/iperf3-host.log" 2>&1 &
track $!
waitfor eval '"${H[@]}" ss -Hltn "sport = :$LPORT" | grep -q .' || { log "iperf3 server did not start"; exit 1; }

# ---- measurement ----------------------------------------------------------------------
emit() {  # PEER PATH VALUE|""
  echo "{\"peer\":\"$1\",\"path\":\"$2\",\"metric\":\"tcp_gbps\",\"value\":${3:-null}}"
  echo "$1 $2 ${3:-null}" >>"$RES"
  [ -n "$3" ] && log "$1 ($2): $3 Gbit/s" || log "$1 ($2): no data"
}
gbps() {  # PEER PATH CMD...: runs an iperf3 client (-J appended), emits receiver Gbit/s
  local peer=$1 path=$2 out=$W/out.$1.$2 v="" i sp=""; shift 2
  for i in 1 2; do   # one retry: a server that has just started may not be accepting yet
    cpu_window "$SECS" & sp=$!
    timeout --foreground $((SECS + 30)) "$@" -t "$SECS" $REV -J >"$out" 2>&1 & local p=$!; track $p; wait $p
    iperf3_gbps "$out" >/dev/null && break
    kill "$sp" 2>/dev/null; wait "$sp" 2>/dev/null; sp=""
    sleep 1
  done
  [ -z "$sp" ] || wait "$sp" 2>/dev/null
  v=$(iperf3_gbps "$out") || log "$peer ($path): iperf3: $(iperf3_failure "$out")"
  emit "$peer" "$path" "$v"
  cpu_cost "$peer" "$path" "$v"
}
cpu_cost() {  # PEER PATH GBPS: emits cpus_busy and cpu_s_per_gb for the row
  local busy per
  busy=$([ -n "$3" ] && cpus_busy); per=$(cpu_s_per_gb "$busy" "$3")
  echo "{\"peer\":\"$1\",\"path\":\"$2\",\"metric\":\"cpus_busy\",\"value\":${busy:-null}}"
  echo "{\"peer\":\"$1\",\"path\":\"$2\",\"metric\":\"cpu_s_per_gb\",\"value\":${per:-null}}"
  [ -z "$busy" ] || log "$1 ($2): $busy CPUs busy, $per CPU-seconds per GB"
}
nodata() { log "$1 ($2): $3"; emit "$1" "$2" ""; }

# ---- tapnet: daemon in the host netns; outbound to the gateway, then a published port --
tapnet_rows() {
  local i gw=10.198.0.1 pport=15201
  if [ ! -x "$T" ]; then nodata tapnet outbound "no binary at $T (set TAPNET)"
    nodata tapnet published "no binary"; return; fi
  "${H[@]}" "$T" daemon --root "$W/state" --docker-plugin none >"$W/daemon.log" 2>&1 &
  DAEMON=$!; track $DAEMON
  waitfor "$T" network ls >/dev/null 2>&1 || { nodata tapnet outbound "daemon did not start"
    nodata tapnet published "daemon did not start"; return; }
  "$T" network create --subnet 10.198.0.0/24 --gateway $gw natbench >/dev/null ||
    { nodata tapnet outbound "network create failed"; nodata tapnet published "network create failed"; return; }
  # Outbound: the gateway's address reaches the host's loopback (host.tapnet.internal).
  gbps tapnet outbound "$T" run --rm --network natbench -- "${IPERF[@]}" -c $gw -p $LPORT
  # Published: an iperf3 server in a container, a client on the host's 127.0.0.1.
  if "$T" run -d --name natsrv --network natbench -p $pport:5201 -- "${IPERF[@]}" -s >/dev/null; then
    waitfor eval '"${H[@]}" ss -Hltn "sport = :$pport" | grep -q .'
    gbps tapnet published "${H[@]}" "${IPERF[@]}" -c 127.0.0.1 -p $pport
  else nodata tapnet published "run -p failed"; fi
}

# ---- slirp4netns, run in the host netns: 10.0.2.2 is that netns' loopback --------------
slirp_row() {  # MTU
  local sp sl peer=slirp4netns-$1
  have slirp4netns || { nodata "$peer" outbound "slirp4netns not installed"; return; }
  "${H[@]}" unshare -n sleep infinity </dev/null & sp=$!; track $sp
  # Never configure a namespace but the sleeper's own: wait until it has left both
  # this shell's and the host netns.
  local me hn; me=$(stat -L -c %i /proc/self/ns/net); hn=$(stat -L -c %i "/run/netns/$HOSTNS")
  waitfor eval 'i=$(stat -L -c %i /proc/$sp/ns/net 2>/dev/null) && [ "$i" != "$me" ] && [ "$i" != "$hn" ]' ||
    { nodata "$peer" outbound "no namespace for slirp4netns"; return; }
  "${H[@]}" slirp4netns --configure --mtu="$1" "$sp" tap0 >"$W/$peer.log" 2>&1 & sl=$!; track $sl
  if waitfor eval 'nsenter -t $sp -n ip -4 addr show dev tap0 2>/dev/null | grep -q 10.0.2.100'; then
    gbps "$peer" outbound nsenter -t "$sp" -n "${IPERF[@]}" -c 10.0.2.2 -p $LPORT
  else nodata "$peer" outbound "slirp4netns did not configure tap0: $(tail -n1 "$W/$peer.log")"; fi
  kill "$sl" "$sp" 2>/dev/null; wait "$sl" "$sp" 2>/dev/null
}

# ---- socat: the userland proxy on the host, iperf3 in a netns behind a veth ----------
socat_row() {
  local sv so c port=15202
  have socat || { nodata socat published "socat not installed"; return; }
  ip netns add "$SRVNS" && ip -n "$SRVNS" link set lo up &&
  ip -n "$HOSTNS" link add nbv0 type veth peer name eth0 netns "$SRVNS" &&
  ip -n "$HOSTNS" addr add 10.197.0.1/24 dev nbv0 && ip -n "$HOSTNS" link set nbv0 up &&
  ip -n "$SRVNS" addr add 10.197.0.2/24 dev eth0 && ip -n "$SRVNS" link set eth0 up ||
    { nodata socat published "veth setup failed"; return; }
  ip netns exec "$SRVNS" "${IPERF[@]}" -s -B 10.197.0.2 -p 5201 >"$W/iperf3-srv.log" 2>&1 & sv=$!; track $sv
  "${H[@]}" socat TCP-LISTEN:$port,bind=127.0.0.1,fork,reuseaddr TCP:10.197.0.2:5201 \
    >"$W/socat.log" 2>&1 & so=$!; track $so
  waitfor eval 'ip netns exec $SRVNS ss -Hltn "sport = :5201" | grep -q . &&
                "${H[@]}" ss -Hltn "sport = :$port" | grep -q .'
  gbps socat published "${H[@]}" "${IPERF[@]}" -c 127.0.0.1 -p $port
  for c in $(ps -o pid= --ppid "$so" 2>/dev/null); do kill "$c" 2>/dev/null; done  # its forks
  kill "$so" "$sv" 2>/dev/null; wait "$so" "$sv" 2>/dev/null
}

# ---- the rootful kernel path: a netns behind a veth, netfilter NAT in the host netns ---
# (what Docker's bridge does without its userland proxy). Outbound: the
# container connects to its gateway address, DNAT to the host's 127.0.0.1
# (route_localnet); published: a host client on 127.0.0.1:PORT, DNAT in
# OUTPUT to the container, MASQUERADE of 127.0.0.1 on the veth. All rules
# live in the host netns made here.
kernel_row() {
  local sv port=15203 ns=${P}k
  have iptables || { nodata kernel outbound "iptables not installed"; nodata kernel published "iptables not installed"; return; }
  kernel_nat "$HOSTNS" "$ns" nbk0 10.196.0 $LPORT $port 5201 ||
    { nodata kernel outbound "veth/iptables setup failed"; nodata kernel published "veth/iptables setup failed"
      ip netns del "$ns" 2>/dev/null; return; }
  gbps kernel outbound ip netns exec "$ns" "${IPERF[@]}" -c 10.196.0.1 -p $LPORT
  ip netns exec "$ns" "${IPERF[@]}" -s -B 10.196.0.2 -p 5201 >"$W/iperf3-kernel.log" 2>&1 & sv=$!; track $sv
  waitfor eval 'ip netns exec $ns ss -Hltn "sport = :5201" | grep -q .'
  gbps kernel published "${H[@]}" "${IPERF[@]}" -c 127.0.0.1 -p $port
  kill "$sv" 2>/dev/null; wait "$sv" 2>/dev/null
  ip netns del "$ns"
}

# ---- pasta (passt's, as an ordinary user: nobody), run in the host netns -------------
# pasta copies the addresses and routes of an interface with a default route:
# the host netns gets a veth to a dead-end namespace for that (nothing routes
# beyond it). Outbound: the namespace's gateway address is the host's loopback
# (pasta's --map-gw default); published: `pasta -t PORT:5201` in front of an
# iperf3 server inside, a client on the host's 127.0.0.1.
pasta_row() {
  local pp port=15204 dead=${P}x
  command -v pasta >/dev/null || { nodata pasta outbound "pasta not installed (apt-get install passt)"
    nodata pasta published "pasta not installed"; return; }
  ip netns add "$dead" && ip -n "$HOSTNS" link add nbp0 type veth peer name nbp1 netns "$dead" &&
  ip -n "$HOSTNS" addr add 10.189.0.1/24 dev nbp0 && ip -n "$HOSTNS" link set nbp0 up &&
  ip -n "$dead" addr add 10.189.0.2/24 dev nbp1 && ip -n "$dead" link set nbp1 up &&
  ip -n "$HOSTNS" route add default via 10.189.0.2 ||
    { nodata pasta outbound "veth setup failed"; nodata pasta published "veth setup failed"; return; }
  local AS=(setpriv --reuid=65534 --regid=65534 --clear-groups)
  gbps pasta outbound "${H[@]}" "${AS[@]}" pasta --config-net -- "${IPERF[@]}" -c 10.189.0.2 -p $LPORT
  # (Inner port 5202: pasta forwards the host's bound ports, 5201 among them,
  # into the namespace by default. One-shot server: it outlives pasta's own
  # end otherwise.)
  "${H[@]}" "${AS[@]}" pasta --config-net -t $port:5202 -- "${IPERF[@]}" -s -1 -p 5202 >"$W/pasta-srv.log" 2>&1 &
  pp=$!; track $pp
  waitfor eval '"${H[@]}" ss -Hltn "sport = :$port" | grep -q .'
  sleep 0.5
  gbps pasta published "${H[@]}" "${IPERF[@]}" -c 127.0.0.1 -p $port
  end_tree "$pp"  # the server inside too: it outlives pasta
  ip -n "$HOSTNS" route del default 2>/dev/null
  ip netns del "$dead"
}

log "outbound: iperf3 server on the host netns' 127.0.0.1:$LPORT; ${SECS}s per test"
want tapnet && tapnet_rows
want kernel && kernel_row
want slirp4netns && slirp_row 1500
want slirp4netns && slirp_row 65520
want pasta && pasta_row
want socat && socat_row

# ---- table and ratios -----------------------------------------------------------------
val() { awk -v p="$1" -v q="$2" '$1 == p && $2 == q {print $3}' "$RES"; }
{ printf '%-18s %-10s %s\n' peer path tcp_gbps
  while read -r p q v; do printf '%-18s %-10s %s\n' "$p" "$q" "$v"; done <"$RES"; } >&2
ratio() {  # PATH PEER (a peer not asked for: no ratio)
  want "${2%%-*}" || return 0
  local a b r; a=$(val tapnet "$1"); b=$(val "$2" "$1")
  r=$(awk -v a="${a:-null}" -v b="${b:-null}" \
    'BEGIN {if (a != "null" && b != "null" && b + 0 > 0) printf "%.3f", a / b; else printf "null"}')
  echo "{\"ratio\":\"tapnet/$2\",\"path\":\"$1\",\"tcp_gbps\":$r}"
  log "ratio tapnet/$2 ($1): $r"
}
# Where the packets went: the daemon's counters (per port, per worker with
# its busy and polling shares, drops by reason), after the measurements.
if [ -n "$DAEMON" ]; then log "tapnet stats:"; timeout 10 "$T" stats >&2 || true; fi
ratio outbound kernel
ratio outbound slirp4netns-1500
ratio outbound slirp4netns-65520
ratio outbound pasta
ratio published kernel
ratio published pasta
ratio published socat
