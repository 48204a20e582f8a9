#!/usr/bin/env bash
# Run by tests/overlay.rs as an ordinary user (no capabilities): two tapnet
# daemons of this user on one machine, each its own state and socket, on
# different VXLAN ports over loopback, with an etcd this script starts on
# 127.0.0.1. A container on each joins one overlay; they ping and talk TCP
# by name. As root the test gives the script a private network namespace
# (lo up). Needs TAPNET_BIN and a private $WORK. Prints "ROOTLESS OVERLAY
# OK" at the end; any failure exits non-zero.
set -euo pipefail
exec 9>"$WORK/trace"
BASH_XTRACEFD=9
set -x
T=$TAPNET_BIN
ETCD="" D1="" D2=""
cleanup() {
  set +e
  for i in 1 2; do "$T" -H "unix://$WORK/h$i.sock" rm -f a1 b1 >/dev/null 2>&1; done
  for p in $D1 $D2 $ETCD; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
}
trap cleanup EXIT
fail() {
  echo "FAIL: $*" >&2
  for i in 1 2; do echo "--- daemon $i log" >&2; tail -20 "$WORK/d$i.log" >&2; done
  exit 1
}
[ "$(id -u)" != 0 ] || fail "must run as an ordinary user"

# Free ports on this namespace's loopback.
free() { local p=$1; while ss -Hltun "sport = :$p" | grep -q .; do p=$((p + 1)); done; echo "$p"; }
EPORT=$(free 23790)
PPORT=$(free $((EPORT + 1)))
V1=$(free 47891)
V2=$(free $((V1 + 1)))

etcd --data-dir "$WORK/etcd" --listen-client-urls "http://127.0.0.1:$EPORT" \
  --advertise-client-urls "http://127.0.0.1:$EPORT" \
  --listen-peer-urls "http://127.0.0.1:$PPORT" >"$WORK/etcd.log" 2>&1 &
ETCD=$!
for _ in $(seq 100); do
  ETCDCTL_API=3 etcdctl --endpoints "http://127.0.0.1:$EPORT" endpoint health >/dev/null 2>&1 && break
  sleep 0.2
done

h1() { "$T" -H "unix://$WORK/h1.sock" "$@"; }
h2() { "$T" -H "unix://$WORK/h2.sock" "$@"; }
"$T" -H "unix://$WORK/h1.sock" daemon --root "$WORK/s1" --cluster-store "etcd://127.0.0.1:$EPORT" \
  --advertise-addr "127.0.0.1:$V1" >>"$WORK/d1.log" 2>&1 &
D1=$!
"$T" -H "unix://$WORK/h2.sock" daemon --root "$WORK/s2" --cluster-store "etcd://127.0.0.1:$EPORT" \
  --advertise-addr "127.0.0.1:$V2" >>"$WORK/d2.log" 2>&1 &
D2=$!
for _ in $(seq 100); do h1 network ls >/dev/null 2>&1 && h2 network ls >/dev/null 2>&1 && break; sleep 0.1; done
h1 network ls >/dev/null && h2 network ls >/dev/null || fail "daemons did not come up"

h1 network create -d overlay --subnet 10.130.0.0/24 rov >/dev/null || fail "network create"
# Output is captured before grep -q reads it: under pipefail, grep quitting
# at its first match can make the CLI's next write fail (EPIPE), and the
# pipeline with it.
for _ in $(seq 50); do grep -q rov <<<"$(h2 network ls)" && break; sleep 0.2; done
grep -q '"global"' <<<"$(h2 network inspect rov)" || fail "rov not global on host 2"

mkdir -p "$WORK/www"
echo rootless-overlay >"$WORK/www/file"
h1 run -d --name a1 --network rov -- sleep 300 >/dev/null || fail "run a1"
h2 run -d --name b1 --network rov -- busybox httpd -f -p 8080 -h "$WORK/www" >/dev/null || fail "run b1"
ok=""
for _ in $(seq 30); do
  h1 exec a1 -- ping -c1 -W1 b1 >/dev/null 2>&1 && ok=1 && break
  sleep 0.5
done
[ -n "$ok" ] || fail "a1 on host 1 does not reach b1 on host 2 by name"
got=$(h1 exec a1 -- curl -sS --max-time 5 http://b1:8080/file) || fail "curl b1 across"
[ "$got" = rootless-overlay ] || fail "curl b1: '$got'"
echo "ROOTLESS OVERLAY OK"
