#!/usr/bin/env bash
# Where the daemon's time goes: `perf record -g` on the tapnet daemon while
# two containers of one network run a load, then perf's top symbols (with
# children: the kernel paths the worker's syscalls run) and `tapnet stats`.
#   udp    iperf3 64-byte UDP flood, unlimited rate
#   tcp    one iperf3 TCP stream
#   ping   1000 pings at 5 ms
#   nat    one iperf3 TCP stream from a container through the NAT to a
#          server on the host's loopback (the gateway's address reaches it)
#   natr   the same connection, the data flowing the other way (iperf3 -R:
#          the host's server sends, the container receives)
#   pub    one iperf3 TCP stream from a client on the host's loopback to a
#          published port (-p 5302:5201) of the container running iperf3 -s
#   pubr   the same connection, the container's server sending (iperf3 -R)
#   conn   new connections through the NAT, one after another: a container's
#          client connects to an echo server on the host's loopback, sends a
#          byte, reads it back and resets (bench/connrate.sh's outbound row)
#   pconn  the same through a published port: a client on the host's
#          loopback, the echo server in a container (-p 5303:5203;
#          bench/connrate.sh's published row)
# With --secs 8 or more (any mode), also `perf trace -s`'s syscall counts of
# the daemon over 2 s. --app-cpus LIST runs the load's ends (clients, servers,
# ping) on those CPUs only (taskset), as bench/nat.sh --app-cpus does: with
# `-- --worker-cpus 0` on 2 CPUs the worker has a CPU to itself. --cc ALGO
# makes every TCP connection of the load use that congestion control (the
# machine's default for the run, restored at its end: bench/lib.sh's
# cc_default; with a BBR default the TCP loads are paced).
# "The host" is a private network namespace made here (the daemon runs in
# it); the containers talk only to each other.
#   usage: sudo [TAPNET=/path/to/tapnet] bench/profile.sh udp|tcp|ping|nat|natr|pub|pubr|conn|pconn [--secs N] [--clean] [--app-cpus LIST] [--cc ALGO] [-- DAEMON-FLAGS...]
#   tools: apt-get install linux-perf iperf3 iputils-ping iproute2 python3
# stdout: the report (with the daemon's resident memory after the load);
# perf.data stays in the printed directory (removed with
# --clean). Processes are killed by the pids recorded here.
set -u -o pipefail
cd "$(dirname "$0")/.."
MODE=${1:-}; shift || true
SECS=8 CLEAN="" APP_CPUS="" APP=() CC=""
while [ $# -gt 0 ]; do case $1 in
  --secs) SECS=${2:?--secs needs a value}; shift 2;;
  --clean) CLEAN=1; shift;;
  --app-cpus) APP_CPUS=${2:?--app-cpus needs a CPU list}; shift 2;;
  --cc) CC=${2:?--cc needs a value}; shift 2;;
  --) shift; break;;
  *) echo "usage: $0 udp|tcp|ping|nat|natr|pub|pubr|conn|pconn [--secs N] [--clean] [--app-cpus LIST] [--cc ALGO] [-- DAEMON-FLAGS...]" >&2; exit 2;;
esac; done
BENCH=profile; . bench/lib.sh
[ -z "$APP_CPUS" ] || app_cpus "$APP_CPUS"
case $MODE in udp|tcp|ping|nat|natr|pub|pubr|conn|pconn) ;; *) log "mode udp, tcp, ping, nat, natr, pub, pubr, conn or pconn"; exit 2;; esac
[[ $SECS =~ ^[1-9][0-9]*$ && $SECS -ge 4 ]] || { log "--secs: at least 4"; exit 2; }
[ -n "$CLEAN" ] || KEEP_W=1              # perf.data stays for perf report
bench_setup perf iperf3 python3
[ -z "$CC" ] || cc_default "$CC"         # before any namespace is made
start_daemon pf$$ "$@"
"$T" network create --subnet 10.190.0.0/24 --gateway 10.190.0.1 pfnet >/dev/null || { log "network create failed"; exit 1; }
if [ "$MODE" = nat ] || [ "$MODE" = natr ]; then
  ip netns exec "pf$$" "${APP[@]}" iperf3 -s -B 127.0.0.1 -p 5301 >"$W/iperf3-host.log" 2>&1 & track $!
  waitfor eval 'ip netns exec pf$$ ss -Hltn "sport = :5301" | grep -q .' || { log "iperf3 server did not start"; exit 1; }
elif [ "$MODE" = conn ]; then
  ip netns exec "pf$$" "${APP[@]}" python3 bench/echo.py 127.0.0.1 5301 >"$W/echo-host.log" 2>&1 & track $!
  waitfor eval 'ip netns exec pf$$ ss -Hltn "sport = :5301" | grep -q .' || { log "echo server did not start"; exit 1; }
fi
"$T" run -d --name pfsrv --network pfnet --ip 10.190.0.3 -p 5302:5201 -p 5303:5203 -- "${APP[@]}" iperf3 -s >/dev/null &&
"$T" run -d --name pfcli --network pfnet --ip 10.190.0.2 -- sleep 100000 >/dev/null || { log "run failed"; exit 1; }
sleep 1
if [ "$MODE" = pconn ]; then
  "$T" exec pfsrv -- "${APP[@]}" python3 "$PWD/bench/echo.py" 0.0.0.0 5203 >"$W/echo-ctr.log" 2>&1 &
  track $!
  waitfor eval '"$T" exec pfsrv -- ss -Hltn "sport = :5203" | grep -q .' || { log "echo server did not start"; exit 1; }
fi
case $MODE in
  udp) "$T" exec pfcli -- "${APP[@]}" iperf3 -c 10.190.0.3 -u -b 0 -l 18 -t "$SECS" >"$W/load.out" 2>&1 & ;;
  tcp) "$T" exec pfcli -- "${APP[@]}" iperf3 -c 10.190.0.3 -t "$SECS" >"$W/load.out" 2>&1 & ;;
  nat) "$T" exec pfcli -- "${APP[@]}" iperf3 -c 10.190.0.1 -p 5301 -t "$SECS" >"$W/load.out" 2>&1 & ;;
  natr) "$T" exec pfcli -- "${APP[@]}" iperf3 -c 10.190.0.1 -p 5301 -R -t "$SECS" >"$W/load.out" 2>&1 & ;;
  pub) ip netns exec "pf$$" "${APP[@]}" iperf3 -c 127.0.0.1 -p 5302 -t "$SECS" >"$W/load.out" 2>&1 & ;;
  pubr) ip netns exec "pf$$" "${APP[@]}" iperf3 -c 127.0.0.1 -p 5302 -R -t "$SECS" >"$W/load.out" 2>&1 & ;;
  conn) "$T" exec pfcli -- "${APP[@]}" python3 "$PWD/bench/connclient.py" 10.190.0.1 5301 "$SECS" >"$W/load.out" 2>&1 & ;;
  pconn) ip netns exec "pf$$" "${APP[@]}" python3 bench/connclient.py 127.0.0.1 5303 "$SECS" >"$W/load.out" 2>&1 & ;;
  ping) "$T" exec pfcli -- "${APP[@]}" ping -c $((SECS * 200)) -i 0.005 -q 10.190.0.3 >"$W/load.out" 2>&1 & ;;
esac
LOAD=$!
sleep 2
REC=$((SECS - 3))
[ "$SECS" -lt 8 ] || REC=$((SECS - 5))  # 2 s left for perf trace
perf record -F 2000 -g -p "$DAEMON" -o "$W/perf.data" -- sleep "$REC" >/dev/null 2>&1
if [ "$REC" -lt $((SECS - 3)) ]; then  # the daemon's syscalls in 2 s
  timeout -s INT 2 perf trace -s -p "$DAEMON" >"$W/trace.out" 2>&1
fi
wait $LOAD
echo "== load ($MODE)"; tail -4 "$W/load.out"
echo "== top symbols, with children"
perf report -i "$W/perf.data" --children --sort sym --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -40
echo "== top symbols, self"
perf report -i "$W/perf.data" --no-children --sort sym --stdio 2>/dev/null | grep -E "^ +[0-9]" | head -25
if [ -s "$W/trace.out" ]; then echo "== syscalls in 2 s (perf trace -s)"; grep -E '^ +[a-z_0-9]+ +[0-9]' "$W/trace.out" | sort -k2 -n -r | awk '{c[$1] += $2} END {for (k in c) print c[k], k}' | sort -n -r | head -15; fi
echo "== daemon memory"; grep -E '^(VmRSS|VmHWM)' "/proc/$DAEMON/status"
echo "== tapnet stats"; "$T" stats
