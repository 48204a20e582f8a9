#!/usr/bin/env bash
# Run by tests/rootless.rs as an ordinary user (no capabilities): every
# container command of the bridge issue, rootless. Needs TAPNET_BIN and a
# private $WORK. Prints "ROOTLESS OK" at the end; any failure exits non-zero.
set -euo pipefail
# A trace for the test's failure message.
exec 9>"$WORK/trace"
BASH_XTRACEFD=9
set -x
T=$TAPNET_BIN
export TAPNET_HOST=unix://$WORK/tapnet.sock
DAEMON=""
SLEEPER=""
cleanup() {
  set +e
  for c in r1 r2 r3 r6 r7; do "$T" rm -f "$c" >/dev/null 2>&1; done
  [ -n "$SLEEPER" ] && kill "$SLEEPER" 2>/dev/null
  [ -n "$DAEMON" ] && kill "$DAEMON" 2>/dev/null && wait "$DAEMON" 2>/dev/null
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; echo "--- daemon log" >&2; tail -20 "$WORK/daemon.log" >&2; exit 1; }
start_daemon() {
  "$T" daemon --root "$WORK/state" >>"$WORK/daemon.log" 2>&1 &
  DAEMON=$!
  for _ in $(seq 100); do "$T" network ls >/dev/null 2>&1 && return 0; sleep 0.1; done
  fail "daemon did not come up"
}
ping1() { "$T" exec "$1" -- ping -c 1 -W 2 "$2" >/dev/null 2>&1; }

[ "$(id -u)" != 0 ] || fail "must run as an ordinary user"
# A rootless daemon cannot load the CPU steering program (CAP_BPF): one
# line, a non-zero exit, and nothing made.
err=$("$T" daemon --root "$WORK/steer" --workers 2 --tap-steering cpu 2>&1 >/dev/null) \
  && fail "--tap-steering cpu started rootless"
[ "$(printf '%s\n' "$err" | wc -l)" = 1 ] && grep -q "cannot load its eBPF program" <<<"$err" \
  || fail "--tap-steering cpu, rootless: $err"
[ ! -e "$WORK/steer" ] || fail "--tap-steering cpu, rootless, made $WORK/steer"
start_daemon
sock=${TAPNET_HOST#unix://}
[ "$(stat -c %a "$sock")" = 600 ] || fail "rootless socket mode is $(stat -c %a "$sock"), want 600"
"$T" network create --subnet 10.61.0.0/24 rl1 >/dev/null
"$T" network create --subnet 10.62.0.0/24 rl2 >/dev/null
"$T" run -d --name r1 --network rl1 --ip 10.61.0.10 -- sleep 300 >/dev/null
"$T" run -d --name r2 --network rl2 --ip 10.62.0.10 -- sleep 300 >/dev/null
"$T" run -d --name r3 --network rl1 --network rl2 --hostname hub -- sleep 300 >/dev/null
[ "$("$T" exec r3 -- hostname)" = hub ] || fail "hostname"
mtu=$("$T" exec r1 -- cat /sys/class/net/eth0/mtu) || fail "no eth0 in the sandbox's /sys"
[ "$mtu" = 1500 ] || fail "/sys/class/net/eth0/mtu is $mtu"
# IPv4-only networks: IPv6 off on the interface, as Docker does (also rootless)
v6=$("$T" exec r1 -- cat /proc/sys/net/ipv6/conf/eth0/disable_ipv6) || fail "no IPv6 sysctl for eth0"
[ "$v6" = 1 ] || fail "IPv6 is on on an IPv4-only network's interface ($v6)"
# No qdisc on the TAP (the default would be one per each of its 256 queues)
qd=$("$T" exec r1 -- tc qdisc show dev eth0) || fail "tc qdisc show failed"
case $qd in "qdisc noqueue "*) ;; *) fail "eth0's qdisc: $qd";; esac
ping1 r3 10.61.0.10 || fail "r3 -> r1"
ping1 r3 10.62.0.10 || fail "r3 -> r2"
ping1 r1 10.62.0.10 && fail "r1 must not reach r2"
"$T" network connect --ip 10.62.0.20 rl2 r1
ping1 r1 10.62.0.10 || fail "r1 -> r2 after connect"
"$T" network disconnect rl2 r1
ping1 r1 10.62.0.10 && fail "r1 -> r2 after disconnect"
grep -q r3 <<<"$("$T" ps)" || fail "ps"
# Capture without any capability: the user's own daemon, pcapng to a file.
"$T" capture --container r1 -c 2 -w "$WORK/r1.pcapng" icmp 2>"$WORK/capture.err" &
CAP=$!
for _ in $(seq 50); do [ -s "$WORK/r1.pcapng" ] && break; sleep 0.1; done
ping1 r3 10.61.0.10 || fail "r3 -> r1 while capturing"
for _ in $(seq 50); do kill -0 "$CAP" 2>/dev/null || break; sleep 0.1; done
wait "$CAP" || fail "capture: $(cat "$WORK/capture.err")"
n=$(tshark -r "$WORK/r1.pcapng" -Y icmp -T fields -e frame.interface_name | grep -c '^r1/eth0$') || true
[ "$n" = 2 ] || fail "rootless capture holds $n ICMP frames on r1/eth0, want 2"
grep -q r1/eth0 <<<"$("$T" stats --container r1)" || fail "stats"
# The TAP's ring drops are read in the container's namespace, rootless too.
grep -Eq '"ring_drops": [0-9]+' <<<"$("$T" stats --container r1 --format json)" \
  || fail "no ring drops for r1/eth0: $("$T" stats --container r1 --format json)"
# Workers pin themselves to CPUs (--worker-cpus auto) without privileges.
grep -Eq '"cpu": [0-9]+' <<<"$("$T" stats --format json)" \
  || fail "no worker pinned: $("$T" stats --format json)"
grep -q '"IPAddress": "10.61.0.10"' <<<"$("$T" inspect r1)" || fail "inspect"
# A reader that stops early ends the CLI quietly (SIGPIPE), no panic message.
# (pipefail off here: the CLI ending by SIGPIPE is the expected outcome.)
set +o pipefail
err=$( { "$T" inspect r1 | head -c 1 >/dev/null; } 2>&1 )
set -o pipefail
[ -z "$err" ] || fail "inspect | head printed: $err"
# IPv6 dual-stack, rootless: addresses, the gateway's NDP and echo, AAAA.
"$T" network create --ipv6 --subnet 10.63.0.0/24 --subnet 2001:db8:63::/64 rl6 >/dev/null
"$T" run -d --name r6 --network rl6 --ip6 2001:db8:63::10 -- sleep 300 >/dev/null
"$T" run -d --name r7 --network rl6 -- sleep 300 >/dev/null
"$T" exec r7 -- ping -6 -c 1 -W 2 2001:db8:63::1 >/dev/null 2>&1 || fail "r7 -> IPv6 gateway"
"$T" exec r7 -- ping -6 -c 1 -W 2 r6 >/dev/null 2>&1 || fail "r7 -> r6 over IPv6 by name"
[ "$("$T" exec r7 -- dig +short +tries=1 AAAA r6)" = 2001:db8:63::10 ] || fail "AAAA r6"
"$T" rm -f r6 r7 >/dev/null
"$T" network rm rl6 >/dev/null
# kill -9 of the daemon: the containers keep running; traffic resumes after a restart.
kill -9 "$DAEMON"; wait "$DAEMON" 2>/dev/null || true; DAEMON=""
start_daemon
for _ in $(seq 50); do ping1 r3 10.61.0.10 && break; sleep 0.2; done
ping1 r3 10.61.0.10 || fail "traffic after kill -9 and restart"
grep -q rl1 <<<"$("$T" network ls)" || fail "network lost after kill -9"
# An existing namespace made by another tool, attached by pid.
unshare --user --map-root-user --net sleep 300 &
SLEEPER=$!
sleep 0.3
"$T" attach --pid "$SLEEPER" --name ext --network rl1 >/dev/null
ping1 r1 "$("$T" inspect ext | sed -n 's/.*"IPAddress": "\(10\.61[^"]*\)".*/\1/p' | head -1)" \
  || fail "r1 -> attached namespace"
BG=$("$T" exec r2 -- sh -c 'setsid sleep 1000 </dev/null >/dev/null 2>&1 & echo $!')
"$T" stop r2 >/dev/null
for _ in $(seq 50); do [ -d "/proc/$BG" ] && ! grep -q ') Z ' "/proc/$BG/stat" 2>/dev/null || break; sleep 0.1; done
[ -d "/proc/$BG" ] && ! grep -q ') Z ' "/proc/$BG/stat" 2>/dev/null && fail "stop left the exec'd process $BG running"
grep r2 <<<"$("$T" ps -a)" | grep -q Exited || fail "stop"
"$T" rm r2 >/dev/null
grep -q r2 <<<"$("$T" ps -a)" && fail "rm"
"$T" network rm rl1 >/dev/null 2>&1 && fail "rm of a network in use must fail"
echo "ROOTLESS OK"
