#!/usr/bin/env bash
# Where the two ends of a NAT stream run, and what that changes: one TCP
# stream (iperf3) between a container and "the host's" loopback, for each
# placement of the container's end and the host's end (each pinned to one
# CPU with taskset), through tapnet (its worker on CPU 0, the daemon's
# default on this machine) and through the rootful kernel path (a netns
# behind a veth, iptables DNAT and MASQUERADE: bench/lib.sh's kernel_nat,
# as bench/nat.sh measures it). Both data directions, outbound (the
# container connects to its gateway) and published (a client on the host's
# 127.0.0.1 reaches the container's server):
#   receives   the host's end sends, the container's reads
#   sends      the container's end sends, the host's reads
# Placements "C H" (container's CPU, host's CPU): 0 1, 1 0, 1 1, 0 0 (CPU 0
# is the worker's); all on CPU 0 shows what one CPU does alone.
#   usage: sudo [TAPNET=/path/to/tapnet] bench/placement.sh [--secs N] [--rounds N]
#   tools: apt-get install iperf3 iptables iproute2 util-linux
# stdout: one JSON object per measurement: {"peer","path","direction",
# "container_cpu","host_cpu","metric","value"}, metrics tcp_gbps, cpus_busy
# (the CPUs the whole machine kept busy in the middle of the stream) and
# cpu_s_per_gb; stderr: progress and a table of medians over the rounds.
# "The host" is a private network namespace made here; processes are
# killed by the pids recorded here, namespaces removed at exit.
set -u -o pipefail
cd "$(dirname "$0")/.."
SECS=5 ROUNDS=2
usage() { echo "usage: sudo [TAPNET=path] $0 [--secs N] [--rounds N]" >&2; }
while [ $# -gt 0 ]; do case $1 in
  --secs) SECS=${2:?--secs needs a value}; shift 2;;
  --rounds) ROUNDS=${2:?--rounds needs a value}; shift 2;;
  -h|--help) usage; exit 0;;
  *) usage; exit 2;;
esac; done
BENCH=placement; . bench/lib.sh
[[ $SECS =~ ^[1-9][0-9]*$ && $SECS -ge 3 ]] || { log "--secs: at least 3"; exit 2; }
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || { log "--rounds must be a positive integer"; exit 2; }
bench_setup iperf3 iptables taskset nsenter
[ "$(nproc)" -ge 2 ] || { log "needs at least 2 CPUs"; exit 2; }
taskset -c 0,1 true 2>/dev/null || { log "CPUs 0 and 1 must be usable (taskset -c 0,1)"; exit 2; }
PLACES=("0 1" "1 0" "1 1" "0 0")
HOSTNS=pl$$ OUT=5270 PUB=15270 KPUB=15271 IN=5271
RES=$W/rows; : >"$RES"

# ---- the host, with tapnet's daemon (worker 0 on CPU 0) and a server on its loopback ----
start_daemon "$HOSTNS" --worker-cpus 0
H=(ip netns exec "$HOSTNS")
"${H[@]}" iperf3 -s -B 127.0.0.1 -p $OUT >"$W/host-srv.log" 2>&1 & HSRV=$!; track $HSRV
"$T" network create --subnet 10.199.0.0/24 --gateway 10.199.0.1 plnet >/dev/null ||
  { log "network create failed"; exit 1; }
"$T" run -d --name plsrv --network plnet -p $PUB:$IN -- iperf3 -s -p $IN >/dev/null ||
  { log "run -p failed"; exit 1; }
# ---- the kernel path: a netns behind a veth, NAT in the host netns ----
KNS=${HOSTNS}k
kernel_nat "$HOSTNS" "$KNS" plk0 10.195.0 $OUT $KPUB $IN || { log "veth/iptables setup failed"; exit 1; }
ip netns exec "$KNS" iperf3 -s -B 10.195.0.2 -p $IN >"$W/kernel-srv.log" 2>&1 & KSRV=$!; track $KSRV
waitfor eval '"${H[@]}" ss -Hltn "sport = :$OUT" | grep -q . && "${H[@]}" ss -Hltn "sport = :$PUB" | grep -q . &&
              ip netns exec $KNS ss -Hltn "sport = :$IN" | grep -q .' || { log "servers did not start"; exit 1; }
# The container's server (its pid, to pin it): the iperf3 in the
# container's network namespace. Only read here, never signalled.
cnet=$("$T" exec plsrv -- readlink /proc/self/ns/net 2>/dev/null) CSRV=""
[ -n "$cnet" ] || { log "cannot read the container's network namespace"; exit 1; }
for p in $(ps -eo pid=,comm= | awk '$2 == "iperf3" {print $1}'); do
  [ "$(readlink "/proc/$p/ns/net" 2>/dev/null)" = "$cnet" ] && CSRV=$p
done
[ -n "$CSRV" ] || { log "cannot find the container's iperf3 server"; exit 1; }

# measure PEER PATH DIRECTION C H CMD...: one stream, its rate and cost
measure() {
  local peer=$1 path=$2 dir=$3 c=$4 h=$5 out=$W/out v="" busy per sp m; shift 5
  cpu_window "$SECS" & sp=$!
  timeout --foreground $((SECS + 30)) "$@" -t "$SECS" -J >"$out" 2>&1 & local p=$!; track $p; wait $p
  wait "$sp" 2>/dev/null
  v=$(iperf3_gbps "$out") || log "$peer $path $dir C=$c H=$h: iperf3: $(iperf3_failure "$out")"
  busy=$([ -n "$v" ] && cpus_busy); per=$(cpu_s_per_gb "$busy" "$v")
  for m in "tcp_gbps:$v" "cpus_busy:$busy" "cpu_s_per_gb:$per"; do
    echo "{\"peer\":\"$peer\",\"path\":\"$path\",\"direction\":\"$dir\",\"container_cpu\":$c,\"host_cpu\":$h,\"metric\":\"${m%%:*}\",\"value\":${m#*:}}"
  done
  echo "$peer $path $dir $c $h ${v:-null} ${busy:-null} ${per:-null}" >>"$RES"
  log "$peer $path $dir C=$c H=$h: ${v:-no data} Gbit/s, ${busy:-?} CPUs busy"
}

for r in $(seq "$ROUNDS"); do
  log "round $r"
  for pl in "${PLACES[@]}"; do
    set -- $pl; c=$1 h=$2
    taskset -a -pc "$h" "$HSRV" >/dev/null && taskset -a -pc "$c" "$CSRV" >/dev/null &&
      taskset -a -pc "$c" "$KSRV" >/dev/null || { log "taskset failed"; exit 1; }
    for rev in "" -R; do
      # outbound: the container's client; -R: the host's server sends
      dir=sends; [ -z "$rev" ] || dir=receives
      measure tapnet outbound $dir "$c" "$h" "$T" run --rm --network plnet -- \
        taskset -c "$c" iperf3 -c 10.199.0.1 -p $OUT $rev
      measure kernel outbound $dir "$c" "$h" ip netns exec "$KNS" \
        taskset -c "$c" iperf3 -c 10.195.0.1 -p $OUT $rev
      # published: the host's client; -R: the container's server sends
      dir=receives; [ -z "$rev" ] || dir=sends
      measure tapnet published $dir "$c" "$h" "${H[@]}" taskset -c "$h" iperf3 -c 127.0.0.1 -p $PUB $rev
      measure kernel published $dir "$c" "$h" "${H[@]}" taskset -c "$h" iperf3 -c 127.0.0.1 -p $KPUB $rev
    done
  done
done

# ---- medians over the rounds ----
{ printf '%-8s %-10s %-9s %-3s %-3s %8s %6s %8s\n' peer path direction C H Gbit/s CPUs CPU-s/GB
  sort -k1,5 "$RES" | awk '
    function med(a, n,   i, j, t) { for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) {t = a[i]; a[i] = a[j]; a[j] = t}
      return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
    function flush() { if (k == "") return; if (n) printf "%-36s %8.2f %6.2f %8.3f\n", k, med(g, n), med(b, n), med(c, n); else printf "%-36s %8s\n", k, "-" }
    {key = sprintf("%-8s %-10s %-9s %-3s %-3s", $1, $2, $3, $4, $5)
     if (key != k) {flush(); k = key; n = 0}
     if ($6 != "null") {n++; g[n] = $6; b[n] = $7; c[n] = $8}}
    END {flush()}'; } >&2
