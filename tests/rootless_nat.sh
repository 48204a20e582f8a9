#!/usr/bin/env bash
# Run by tests/nat.rs as an ordinary user (no capabilities): outbound to the
# host's loopback and a published port, rootless. As root the test gives it a
# private network namespace with lo up; otherwise it runs in the user's own
# namespace and only uses 127.0.0.1. Needs TAPNET_BIN and a private $WORK.
# Prints "ROOTLESS NAT OK" at the end; any failure exits non-zero.
set -euo pipefail
exec 9>"$WORK/trace"
BASH_XTRACEFD=9
set -x
T=$TAPNET_BIN
export TAPNET_HOST=unix://$WORK/tapnet.sock
DAEMON="" HTTPD=""
cleanup() {
  set +e
  for c in web low; do "$T" rm -f "$c" >/dev/null 2>&1; done
  [ -n "$HTTPD" ] && kill "$HTTPD" 2>/dev/null && wait "$HTTPD" 2>/dev/null
  [ -n "$DAEMON" ] && kill "$DAEMON" 2>/dev/null && wait "$DAEMON" 2>/dev/null
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; echo "--- daemon log" >&2; tail -20 "$WORK/daemon.log" >&2; exit 1; }
[ "$(id -u)" != 0 ] || fail "must run as an ordinary user"

# A port free on this namespace's loopback for the "host" server.
LPORT=18081
while ss -Hltn "sport = :$LPORT" | grep -q .; do LPORT=$((LPORT + 1)); done
PPORT=18080
while ss -Hltun "sport = :$PPORT" | grep -q .; do PPORT=$((PPORT + 100)); done

mkdir -p "$WORK/www"
echo rootless-host-loopback >"$WORK/www/file"
echo rootless-published >"$WORK/www/pub"
busybox httpd -f -p "127.0.0.1:$LPORT" -h "$WORK/www" &
HTTPD=$!
for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$LPORT/file" && break; sleep 0.1; done
[ "$(curl -sS "http://127.0.0.1:$LPORT/file")" = rootless-host-loopback ] || fail "local httpd"

"$T" daemon --root "$WORK/state" >>"$WORK/daemon.log" 2>&1 &
DAEMON=$!
for _ in $(seq 100); do "$T" network ls >/dev/null 2>&1 && break; sleep 0.1; done
"$T" network ls >/dev/null || fail "daemon did not come up"
"$T" network create --subnet 10.71.0.0/24 rn >/dev/null

# Outbound to the host's loopback, by name and by the gateway address.
got=""
for _ in $(seq 10); do
  got=$("$T" run --rm --network rn -- curl -sS --max-time 5 "http://host.tapnet.internal:$LPORT/file") && break
  sleep 1
done
[ "$got" = rootless-host-loopback ] || fail "host.tapnet.internal:$LPORT from a container: '$got'"
got=$("$T" run --rm --network rn -- curl -sS --max-time 5 "http://10.71.0.1:$LPORT/file") ||
  fail "gateway:$LPORT from a container"
[ "$got" = rootless-host-loopback ] || fail "gateway:$LPORT: '$got'"

# A published high port, reached from this namespace.
"$T" run -d --name web --network rn -p "127.0.0.1:$PPORT:80" -- \
  busybox httpd -f -p 80 -h "$WORK/www" >/dev/null
got=""
for _ in $(seq 30); do
  got=$(curl -sS --max-time 5 "http://127.0.0.1:$PPORT/pub" 2>/dev/null) && break
  sleep 0.5
done
[ "$got" = rootless-published ] || fail "published 127.0.0.1:$PPORT: '$got'"
grep -q "80/tcp -> 127.0.0.1:$PPORT" <<<"$("$T" port web)" || fail "tapnet port web"

# A privileged port cannot be bound rootless; the error says why.
start=$(cat /proc/sys/net/ipv4/ip_unprivileged_port_start)
if [ "$start" -gt 80 ]; then
  if err=$("$T" run -d --name low --network rn -p 80:80 -- sleep 300 2>&1); then
    fail "-p 80:80 succeeded rootless (ip_unprivileged_port_start=$start)"
  fi
  grep -q ip_unprivileged_port_start <<<"$err" || fail "-p 80:80 error does not name ip_unprivileged_port_start: $err"
  [ "$(wc -l <<<"$err")" = 1 ] || fail "-p 80:80: want one line on stderr: $err"
else
  echo "note: ip_unprivileged_port_start=$start here; the port-80 check needs it above 80" >&2
fi
echo "ROOTLESS NAT OK"
