#!/usr/bin/env bash
# The daemon's memory (resident set, VmRSS of /proc/PID/status), in ONE run:
#   idle_flows   FLOWS relayed TCP connections, open and idle: a container
#                connects FLOWS times through its gateway to a server on "the
#                host's" loopback (the NAT path: a smoltcp leg and a host socket
#                each), a few bytes each way, then nothing. RSS growth / FLOWS.
#   idle_ports   PORTS idle containers on one network (one TAP port each, all
#                its queues): RSS growth / PORTS.
# Goals (issue 19): 10,000 idle flows < 100 MiB in all; an idle port < 64 KiB.
# "The host" is a private network namespace made here (the daemon and the
# server run in it); nothing reaches the machine's real interfaces.
#   usage: sudo [TAPNET=/path/to/tapnet] bench/memory.sh [--flows N] [--ports N]
#   tools: apt-get install python3 iproute2 util-linux
# stdout: one JSON object per line ({"metric","value","unit"}); stderr:
# progress. Processes are killed by the pids recorded here; the namespace and
# files go in a trap.
set -u -o pipefail
cd "$(dirname "$0")/.."
FLOWS=10000 PORTS=50
usage() { echo "usage: [TAPNET=path] $0 [--flows N] [--ports N]" >&2; }
while [ $# -gt 0 ]; do case $1 in
  --flows) FLOWS=${2:?--flows needs a value}; shift 2;;
  --ports) PORTS=${2:?--ports needs a value}; shift 2;;
  -h|--help) usage; exit 0;;
  *) usage; exit 2;;
esac; done
log() { echo "memory.sh: $*" >&2; }
[[ $FLOWS =~ ^[1-9][0-9]*$ && $PORTS =~ ^[1-9][0-9]*$ ]] || { log "--flows and --ports take positive integers"; exit 2; }
[ "$(id -u)" = 0 ] || { log "run as root"; exit 2; }
for t in python3 ip nsenter; do command -v $t >/dev/null || { log "missing $t"; exit 2; }; done
T=${TAPNET:-$PWD/target/release/tapnet}
if [ -z "${TAPNET:-}" ] && [ ! -x "$T" ]; then cargo build --release --quiet || true; fi
[ -x "$T" ] || { log "no tapnet binary at $T"; exit 2; }

NS=mb$$
W=$(mktemp -d /tmp/tapnet-membench.XXXXXX); chmod 755 "$W"
export TAPNET_HOST=unix://$W/tapnet.sock
DAEMON="" SERVER="" CLIENT_DONE=$W/client-ready
starttime() { local s; s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1; s=${s##*) }; set -- $s; echo "${20}"; }
PIDS=""
track() { local s; s=$(starttime "$1") && PIDS+=" $1:$s"; }
cleanup() {
  local e c; set +e
  if [ -n "$DAEMON" ]; then
    for c in $(timeout 20 "$T" ps -aq 2>/dev/null); do timeout 20 "$T" rm -f "$c" >/dev/null 2>&1; done
  fi
  for e in $PIDS; do
    [ "$(starttime "${e%%:*}")" = "${e#*:}" ] && kill -TERM "${e%%:*}" 2>/dev/null
  done
  sleep 1
  ip netns del "$NS" 2>/dev/null
  rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$DAEMON/status"; }
settle() {  # the RSS once it stops moving (allocator caches, lazy pages)
  local a b i; a=$(rss_kib)
  for i in $(seq 20); do sleep 0.5; b=$(rss_kib); [ "$a" = "$b" ] && break; a=$b; done
  echo "$b"
}

ip netns add "$NS" && ip -n "$NS" link set lo up
# (One container opens every flow: its limit, 8192 by default, raised.)
ip netns exec "$NS" "$T" daemon --root "$W/root" --docker-plugin none \
  --conntrack-max-per-container $((FLOWS + 100)) >"$W/daemon.log" 2>&1 &
DAEMON=$!; track $DAEMON
for _ in $(seq 100); do "$T" network ls >/dev/null 2>&1 && break; sleep 0.1; done
"$T" network create --subnet 10.197.0.0/16 memnet >/dev/null || { log "network create failed"; exit 1; }

# A server on the host's loopback that holds every connection open (answers
# one line per connection).
cat >"$W/server.py" <<'PY'
import asyncio, sys
async def serve(r, w):
    await r.readline()
    w.write(b"ok\n"); await w.drain()
    await r.read()          # until the client goes
    w.close()
async def main():
    s = await asyncio.start_server(serve, "127.0.0.1", 9099, backlog=4096)
    open(sys.argv[1], "w").close()
    await s.serve_forever()
asyncio.run(main())
PY
ip netns exec "$NS" python3 "$W/server.py" "$W/server-ready" >"$W/server.log" 2>&1 &
SERVER=$!; track $SERVER
for _ in $(seq 100); do [ -e "$W/server-ready" ] && break; sleep 0.1; done

"$T" run -d --name memc --network memnet -- sleep 100000 >/dev/null
base=$(settle)
log "daemon RSS with one container: $base KiB"

# The client: FLOWS connections to the gateway (the host's loopback through
# the NAT), one line each way, then held open.
cat >"$W/client.py" <<'PY'
import socket, sys, time, resource
n, gw, ready = int(sys.argv[1]), sys.argv[2], sys.argv[3]
resource.setrlimit(resource.RLIMIT_NOFILE, (n + 100, n + 100))
socks = []
for i in range(n):
    s = socket.create_connection((gw, 9099), timeout=30)
    s.sendall(b"hi\n")
    assert s.recv(3) == b"ok\n"
    socks.append(s)
open(ready, "w").close()
time.sleep(100000)
PY
"$T" exec memc -- python3 "$W/client.py" "$FLOWS" 10.197.0.1 "$CLIENT_DONE" >"$W/client.log" 2>&1 &
for _ in $(seq 1200); do [ -e "$CLIENT_DONE" ] && break; sleep 0.5; done
[ -e "$CLIENT_DONE" ] || { log "the client did not open $FLOWS connections: $(tail -3 "$W/client.log")"; exit 1; }
flows=$(settle)
nflows=$("$T" conntrack stats --format json 2>/dev/null | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d.get("flows", d.get("total", "?")))' 2>/dev/null || echo "?")
log "daemon RSS with $FLOWS idle flows: $flows KiB (conntrack: $nflows)"
awk -v a="$base" -v b="$flows" -v n="$FLOWS" 'BEGIN {
  printf "{\"metric\":\"idle_flows_total\",\"flows\":%d,\"value\":%.1f,\"unit\":\"MiB\"}\n", n, (b - a) / 1024
  printf "{\"metric\":\"idle_flow\",\"value\":%.2f,\"unit\":\"KiB\"}\n", (b - a) / n }'
"$T" rm -f memc >/dev/null
sleep 2

before=$(settle)
for i in $(seq "$PORTS"); do
  "$T" run -d --name "memp$i" --network memnet -- sleep 100000 >/dev/null || { log "run memp$i failed"; exit 1; }
done
after=$(settle)
log "daemon RSS with $PORTS more idle containers: $before -> $after KiB"
awk -v a="$before" -v b="$after" -v n="$PORTS" 'BEGIN {
  printf "{\"metric\":\"idle_port\",\"ports\":%d,\"value\":%.1f,\"unit\":\"KiB\"}\n", n, (b - a) / n }'
