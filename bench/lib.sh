# What the benchmarks that run tapnet's daemon share; sourced (after `cd`
# to the repository) by memory.sh, scale.sh, profile.sh, connrate.sh and
# placement.sh, and for its helpers and the kernel NAT path by nat.sh.
#   BENCH=NAME; . bench/lib.sh   NAME: the prefix of log lines
#   log MSG                   "NAME.sh: MSG" on stderr
#   bench_setup TOOL...       needs root and TOOLs; sets T (tapnet: $TAPNET, else
#                             target/release/tapnet, built if missing), W (a fresh
#                             directory, 0755), TAPNET_HOST; installs the trap that
#                             runs bench_cleanup
#   track PID                 a process of ours: ended at cleanup (only if still
#                             the same process: pid and start time)
#   waitfor CMD...            retries CMD for up to 10 s
#   end_tree PID              kills PID and every process under it (cleanup does
#                             that too for tracked processes' descendants)
#   start_daemon NS [FLAG...] a private netns NS (lo up) with the daemon in it
#                             ($DAEMON, log $W/daemon.log), answering its CLI
#   cpu_window SECS           (in the background while a SECS-long load runs)
#                             /proc/stat's first line 1 s after the load starts
#                             and 1 s before it ends, into $W (SECS >= 3)
#   cpus_busy                 the CPUs the whole machine kept busy in that window
#                             (endpoints, relays, softirqs alike), e.g. 1.47;
#                             nothing if there was no window
#   busy_shares A B           per line of two /proc/stat snapshots (files),
#                             "NAME SHARE": the share of the time between them
#                             that was neither idle, iowait nor stolen
#   cpu_s_per_gb BUSY GBPS    those CPU-seconds per GB moved; nothing if unknown
#   iperf3_gbps FILE          the receiver's Gbit/s (2 decimals) in FILE, an
#                             iperf3 -J output; nothing and status 1 if that run failed
#   iperf3_failure FILE       the line of FILE that says why it failed
#   cc_default ALGO           the machine's default congestion control
#                             (net.ipv4.tcp_congestion_control of the initial
#                             namespace, which every namespace made afterwards
#                             starts with) set to ALGO until cleanup, which
#                             restores it; one line and exit 2 if ALGO is not
#                             available. iperf3 -C alone is not the same: a
#                             socket made under BBR keeps BBR's pacing after
#                             it switches
#   kernel_nat HOSTNS NS IF NET OUT_PORT PUB_PORT IN_PORT
#                             the rootful kernel path (Docker's bridge without its
#                             userland proxy): NS behind a veth IF (NET.1 on the
#                             host side, NET.2 in NS, default route), iptables in
#                             HOSTNS: NET.1:OUT_PORT is DNATed to the host's
#                             127.0.0.1:OUT_PORT (route_localnet), the host's
#                             127.0.0.1:PUB_PORT to NET.2:IN_PORT (MASQUERADE)
# bench_cleanup: containers removed, tracked processes ended (TERM, then KILL),
# the namespaces listed in NETNS deleted, the congestion control cc_default
# changed restored, $W removed unless KEEP_W is set.
# Processes are only ever killed by the pids recorded here.

log() { echo "${BENCH:-bench}.sh: $*" >&2; }
starttime() { local s; s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1; s=${s##*) }
              set -- $s; echo "${20}"; }
PIDS=""                                  # "pid:starttime" of everything started here
track() { local s; s=$(starttime "$1") && PIDS+=" $1:$s"; }
alive() { local e; for e in $PIDS; do [ "$(starttime "${e%%:*}")" = "${e#*:}" ] && echo "${e%%:*}"; done; }
# The processes PID started, and theirs (a pasta's command: the init of its
# own PID namespace, which ignores TERM from outside).
descendants() { local c; for c in $(cat /proc/"$1"/task/*/children 2>/dev/null); do echo "$c"; descendants "$c"; done; }
# end_tree PID: ends PID and its descendants (KILL; they are ours: tracked,
# or children of a tracked process), then reaps PID.
end_tree() { local d; d=$(descendants "$1"); kill -KILL "$1" $d 2>/dev/null; wait "$1" 2>/dev/null; }
waitfor() { local i; for i in $(seq 100); do "$@" && return 0; sleep 0.1; done; return 1; }
# A script's --app-cpus LIST: APP=(taskset -c LIST), the prefix that runs a
# load's ends on those CPUs only; one line and exit 2 when LIST names CPUs
# this machine does not have (or taskset is missing).
app_cpus() {
  command -v taskset >/dev/null 2>&1 || { log "--app-cpus needs taskset (apt-get install util-linux)"; exit 2; }
  taskset -c "$1" true 2>/dev/null || { log "--app-cpus: not a CPU list this machine has: $1"; exit 2; }
  APP=(taskset -c "$1")
}
NETNS=""                                 # namespaces to delete at cleanup
CC_SAVED=""                              # the default cc_default replaced
cc_default() {
  local f=/proc/sys/net/ipv4/tcp_congestion_control
  grep -qw -- "$1" /proc/sys/net/ipv4/tcp_available_congestion_control || modprobe "tcp_$1" 2>/dev/null
  grep -qw -- "$1" /proc/sys/net/ipv4/tcp_available_congestion_control ||
    { log "--cc $1: not one of $(cat /proc/sys/net/ipv4/tcp_available_congestion_control)"; exit 2; }
  [ -n "$CC_SAVED" ] || CC_SAVED=$(cat "$f")
  echo "$1" >"$f" || { log "--cc $1: cannot set $f"; exit 2; }
  log "the machine's default congestion control is $1 until this script ends (was $CC_SAVED)"
}
DAEMON=""

bench_setup() {
  local t
  [ "$(id -u)" = 0 ] || { log "run as root"; exit 2; }
  for t in ip "$@"; do command -v "$t" >/dev/null || { log "missing $t"; exit 2; }; done
  T=${TAPNET:-$PWD/target/release/tapnet}
  if [ -z "${TAPNET:-}" ] && [ ! -x "$T" ]; then cargo build --release --quiet || true; fi
  [ -x "$T" ] || { log "no tapnet binary at $T"; exit 2; }
  W=$(mktemp -d "/tmp/tapnet-$BENCH.XXXXXX"); chmod 755 "$W"
  export TAPNET_HOST=unix://$W/tapnet.sock
  trap bench_cleanup EXIT
  trap 'exit 130' INT TERM
}

bench_cleanup() {
  local p i c n kids; set +e
  if [ -n "$DAEMON" ]; then              # containers first: they outlive the daemon
    for c in $(timeout 60 "$T" ps -aq 2>/dev/null); do timeout 20 "$T" rm -f "$c" >/dev/null 2>&1; done
  fi
  kids=$(for p in $(alive); do descendants "$p"; done)
  for p in $(alive); do kill -TERM "$p" 2>/dev/null; done
  for i in $(seq 50); do [ -z "$(alive)" ] && break; sleep 0.1; done
  for p in $(alive) $kids; do kill -KILL "$p" 2>/dev/null; done
  wait 2>/dev/null                       # reap them: no zombies left behind
  for n in $NETNS; do ip netns del "$n" 2>/dev/null; done
  [ -z "$CC_SAVED" ] || echo "$CC_SAVED" >/proc/sys/net/ipv4/tcp_congestion_control
  if [ -z "${KEEP_W:-}" ]; then rm -rf "$W"; else log "files kept in $W"; fi
}

start_daemon() {
  local ns=$1; shift
  ip netns add "$ns" && ip -n "$ns" link set lo up || { log "ip netns add $ns failed"; exit 1; }
  NETNS+=" $ns"
  ip netns exec "$ns" "$T" daemon --root "$W/state" --docker-plugin none "$@" >"$W/daemon.log" 2>&1 &
  DAEMON=$!; track $DAEMON
  waitfor "$T" network ls >/dev/null 2>&1 || { log "the daemon did not start: $(tail -1 "$W/daemon.log")"; exit 1; }
}

cpu_window() {
  rm -f "$W/cpu.a" "$W/cpu.b"
  [ "$1" -ge 3 ] || return 0
  sleep 1; head -n1 /proc/stat >"$W/cpu.a"; sleep $(($1 - 2)); head -n1 /proc/stat >"$W/cpu.b"
}
busy_shares() {
  # user nice system idle iowait irq softirq steal (guest time is inside
  # user already); busy is what is neither idle, iowait nor stolen.
  awk '{t = 0; for (i = 2; i <= 9; i++) t += $i}
    FNR == NR {t0[$1] = t; i0[$1] = $5 + $6 + $9; next}
    {dt = t - t0[$1]; if (dt > 0) printf "%s %.9f\n", $1, (dt - ($5 + $6 + $9 - i0[$1])) / dt}' "$1" "$2"
}
cpus_busy() {
  [ -s "$W/cpu.a" ] && [ -s "$W/cpu.b" ] || return 0
  busy_shares "$W/cpu.a" "$W/cpu.b" | awk -v n="$(nproc)" '{printf "%.2f", n * $2}'
}
cpu_s_per_gb() { [ -n "$1" ] && [ -n "$2" ] && awk -v b="$1" -v g="$2" 'BEGIN {if (g > 0) printf "%.3f", b / (g / 8)}'; }

iperf3_gbps() {
  grep -q '"sum_received"' "$1" && ! grep -q '"error"' "$1" || return 1
  # The "sum_received" section of iperf3's pretty-printed JSON, its
  # bits_per_second key.
  awk 'index($0, "\"sum_received\":") {f = 1; next}
    f && /}/ {if (v != "") printf "%.2f", v / 1e9; exit}
    f {gsub(/[",\t ]/, ""); split($0, a, ":"); if (a[1] == "bits_per_second") v = a[2]}' "$1"
}
iperf3_failure() { grep -m1 '"error"' "$1" || grep -v '^[[:space:]]*$' "$1" | tail -n1; }

kernel_nat() {
  local hostns=$1 ns=$2 ifc=$3 net=$4 out=$5 pub=$6 in=$7
  local H=(ip netns exec "$hostns")
  ip netns add "$ns" && NETNS+=" $ns" && ip -n "$ns" link set lo up &&
  ip -n "$hostns" link add "$ifc" type veth peer name eth0 netns "$ns" &&
  ip -n "$hostns" addr add "$net.1/24" dev "$ifc" && ip -n "$hostns" link set "$ifc" up &&
  ip -n "$ns" addr add "$net.2/24" dev eth0 && ip -n "$ns" link set eth0 up &&
  ip -n "$ns" route add default via "$net.1" &&
  "${H[@]}" sysctl -qw "net.ipv4.conf.$ifc.route_localnet=1" net.ipv4.conf.all.route_localnet=1 &&
  "${H[@]}" iptables -t nat -A PREROUTING -i "$ifc" -d "$net.1" -p tcp --dport "$out" -j DNAT --to-destination "127.0.0.1:$out" &&
  "${H[@]}" iptables -t nat -A OUTPUT -d 127.0.0.1 -p tcp --dport "$pub" -j DNAT --to-destination "$net.2:$in" &&
  "${H[@]}" iptables -t nat -A POSTROUTING -s 127.0.0.1 -o "$ifc" -j MASQUERADE
}
