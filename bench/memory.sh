#!/usr/bin/env bash
# The daemon's memory (resident set, VmRSS of /proc/PID/status), in ONE run:
#   idle_flows   FLOWS relayed TCP connections, open and idle: a container
#                connects FLOWS times through its gateway to a server on "the
#                host's" loopback (the NAT path: a smoltcp leg and a host socket
#                each), a few bytes each way, then nothing. RSS growth / FLOWS.
#   idle_ports   PORTS idle containers on one network (one TAP port each, all
#                its queues): RSS growth / PORTS.
#   idle_port_kernel
#                what the same containers cost the kernel in unreclaimable
#                memory (SUnreclaim of /proc/meminfo: the TAP, its queues and
#                qdiscs, the namespaces, the process): growth / PORTS. The
#                machine's own activity moves it too; context, not a goal.
# Goals (issue 19): 10,000 idle flows < 100 MiB in all; an idle port < 64 KiB.
# "The host" is a private network namespace made here (the daemon and the
# server run in it); nothing reaches the machine's real interfaces.
#   usage: sudo [TAPNET=/path/to/tapnet] bench/memory.sh [--flows N] [--ports N]
#   tools: apt-get install python3 iproute2 util-linux
# stdout: one JSON object per line ({"metric","value","unit"}); stderr:
# progress. Processes are killed by the pids recorded here; the namespace and
# files go in a trap (bench/lib.sh).
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
BENCH=memory; . bench/lib.sh
[[ $FLOWS =~ ^[1-9][0-9]*$ && $PORTS =~ ^[1-9][0-9]*$ ]] || { log "--flows and --ports take positive integers"; exit 2; }
bench_setup python3 nsenter
CLIENT_DONE=$W/client-ready

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$DAEMON/status"; }
settle() {  # the RSS once it stops moving (allocator caches, lazy pages)
  local a b i; a=$(rss_kib)
  for i in $(seq 20); do sleep 0.5; b=$(rss_kib); [ "$a" = "$b" ] && break; a=$b; done
  echo "$b"
}

# (One container opens every flow: its limit, 8192 by default, raised.)
start_daemon mb$$ --conntrack-max-per-container $((FLOWS + 100))
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
ip netns exec mb$$ python3 "$W/server.py" "$W/server-ready" >"$W/server.log" 2>&1 &
track $!
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

unreclaimable() { awk '/^SUnreclaim:/ {print $2}' /proc/meminfo; }
before=$(settle) kbefore=$(unreclaimable)
for i in $(seq "$PORTS"); do
  "$T" run -d --name "memp$i" --network memnet -- sleep 100000 >/dev/null || { log "run memp$i failed"; exit 1; }
done
after=$(settle) kafter=$(unreclaimable)
log "daemon RSS with $PORTS more idle containers: $before -> $after KiB; kernel SUnreclaim $kbefore -> $kafter KiB"
awk -v a="$before" -v b="$after" -v ka="$kbefore" -v kb="$kafter" -v n="$PORTS" 'BEGIN {
  printf "{\"metric\":\"idle_port\",\"ports\":%d,\"value\":%.1f,\"unit\":\"KiB\"}\n", n, (b - a) / n
  printf "{\"metric\":\"idle_port_kernel\",\"ports\":%d,\"value\":%.1f,\"unit\":\"KiB\"}\n", n, (kb - ka) / n }'
