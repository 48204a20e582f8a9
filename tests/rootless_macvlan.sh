#!/usr/bin/env bash
# Run by tests/macvlan.rs as an ordinary user (no capabilities): a macvlan
# network rootless, on a parent inside the user's own network namespace.
# Outside that namespace (the namespace the script starts in) the user has
# no CAP_NET_RAW, so a daemon there refuses a parent in one line. Inside
# `unshare --user --map-root-user --net` it has it: a veth pair p0/p1 made
# there, p0 the parent, p1 (192.0.2.1) the "other machine", which a
# container pings and fetches from.
# Needs TAPNET_BIN and a private $WORK. Prints "ROOTLESS MACVLAN OK".
set -euo pipefail
exec 9>>"$WORK/trace"
BASH_XTRACEFD=9
set -x
T=$TAPNET_BIN
fail() { echo "FAIL: $*" >&2; tail -20 "$WORK"/daemon*.log >&2 || true; exit 1; }
if [ "${1:-}" != inside ]; then
  [ "$(id -u)" != 0 ] || fail "must run as an ordinary user"
  # 1. The user's daemon in the namespace it was given: no CAP_NET_RAW there.
  export TAPNET_HOST=unix://$WORK/outside.sock
  "$T" daemon --root "$WORK/outside" -H "$TAPNET_HOST" >>"$WORK/daemon-outside.log" 2>&1 &
  D=$!
  trap 'kill $D 2>/dev/null; wait $D 2>/dev/null' EXIT
  for _ in $(seq 100); do "$T" network ls >/dev/null 2>&1 && break; sleep 0.1; done
  if err=$("$T" network create -d macvlan --subnet 192.0.2.0/24 -o parent=lo0 m 2>&1); then
    fail "a parent that does not exist was accepted"
  fi
  if err=$("$T" network create -d macvlan --subnet 192.0.2.0/24 -o parent=lo.5 m 2>&1); then
    fail "macvlan on lo.5 without CAP_NET_RAW succeeded"
  fi
  grep -q "needs CAP_NET_RAW" <<<"$err" || fail "no CAP_NET_RAW message: $err"
  [ "$(wc -l <<<"$err")" = 1 ] || fail "want one line: $err"
  [ "$("$T" network ls -q | wc -l)" = 3 ] || fail "a network was left behind"
  kill $D; wait $D 2>/dev/null || true
  trap - EXIT
  # 2. Inside the user's own user and network namespace.
  exec unshare --user --map-root-user --net -- "$0" inside
fi

export TAPNET_HOST=unix://$WORK/inside.sock
D="" H=""
cleanup() {
  set +e
  "$T" rm -f c1 >/dev/null 2>&1
  [ -n "$H" ] && kill "$H" 2>/dev/null && wait "$H" 2>/dev/null
  [ -n "$D" ] && kill "$D" 2>/dev/null && wait "$D" 2>/dev/null
}
trap cleanup EXIT
ip link set lo up
ip link add p0 type veth peer name p1
ip addr add 192.0.2.1/24 dev p1
ip link set p0 up
ip link set p1 up
mkdir -p "$WORK/www"
echo rootless-macvlan >"$WORK/www/page"
busybox httpd -f -p 192.0.2.1:8080 -h "$WORK/www" &
H=$!
"$T" daemon --root "$WORK/inside" -H "$TAPNET_HOST" >>"$WORK/daemon-inside.log" 2>&1 &
D=$!
for _ in $(seq 100); do "$T" network ls >/dev/null 2>&1 && break; sleep 0.1; done
"$T" network create -d macvlan --subnet 192.0.2.0/24 --gateway 192.0.2.1 -o parent=p0 m >/dev/null ||
  fail "macvlan network in the user's own namespace"
"$T" run -d --name c1 --network m -- sleep 300 >/dev/null
ok=""
for _ in $(seq 20); do
  "$T" exec c1 -- ping -c 1 -W 1 192.0.2.1 >/dev/null 2>&1 && ok=1 && break
done
[ -n "$ok" ] || fail "ping the other end of the parent"
got=$("$T" exec c1 -- curl -sS --max-time 5 http://192.0.2.1:8080/page) || fail "curl"
[ "$got" = rootless-macvlan ] || fail "page: '$got'"
echo "ROOTLESS MACVLAN OK"
