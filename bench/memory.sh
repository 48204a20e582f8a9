#!/usr/bin/env bash
# The daemon's memory (resident set, VmRSS of /proc/PID/status), in ONE run:
#   idle_flows   FLOWS relayed TCP connections, open and idle: a container
#                connects FLOWS times through its gateway to a server on "the
#                host's" loopback (the NAT path: a smoltcp leg and a host socket
#                each), a few bytes each way, then nothing. RSS growth / FLOWS.
#   busy_idle_flow
#                BUSY more such connections that each move SIZE bytes (3 MiB)
#                each way first (the legs' rings touched all round), then
#                nothing: RSS growth / BUSY once the NAT has given their rings
#                back (two seconds idle). Rings kept would cost about 3 MiB a
#                flow.
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
#   usage: sudo [TAPNET=/path/to/tapnet] bench/memory.sh [--flows N] [--busy N] [--ports N]
#   tools: apt-get install python3 iproute2 util-linux
# stdout: one JSON object per line ({"metric","value","unit"}); stderr:
# progress. Processes are killed by the pids recorded here; the namespace and
# files go in a trap (bench/lib.sh).
set -u -o pipefail
cd "$(dirname "$0")/.."
FLOWS=10000 PORTS=50 BUSY=100 SIZE=$((3 << 20))
usage() { echo "usage: [TAPNET=path] $0 [--flows N] [--busy N] [--ports N]" >&2; }
while [ $# -gt 0 ]; do case $1 in
  --flows) FLOWS=${2:?--flows needs a value}; shift 2;;
  --ports) PORTS=${2:?--ports needs a value}; shift 2;;
  --busy) BUSY=${2:?--busy needs a value}; shift 2;;
  -h|--help) usage; exit 0;;
  *) usage; exit 2;;
esac; done
BENCH=memory; . bench/lib.sh
[[ $FLOWS =~ ^[1-9][0-9]*$ && $PORTS =~ ^[1-9][0-9]*$ && $BUSY =~ ^[1-9][0-9]*$ ]] || { log "--flows, --busy and --ports take positive integers"; exit 2; }
bench_setup python3 nsenter
CLIENT_DONE=$W/client-ready

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$DAEMON/status"; }
settle() {  # the RSS once it stops moving (allocator caches, lazy pages)
  local a b i; a=$(rss_kib)
  for i in $(seq 20); do sleep 0.5; b=$(rss_kib); [ "$a" = "$b" ] && break; a=$b; done
  echo "$b"
}

# (One container opens every flow: its limit, 8192 by default, raised.)
start_daemon mb$$ --conntrack-max-per-container $((FLOWS + BUSY + 100))
"$T" network create --subnet 10.197.0.0/16 memnet >/dev/null || { log "network create failed"; exit 1; }

# A server on the host's loopback that holds every connection open (answers
# one line per connection; "echo N" first echoes N bytes).
cat >"$W/server.py" <<'PY'
import asyncio, sys
async def serve(r, w):
    line = await r.readline()
    n = int(line[5:]) if line.startswith(b"echo ") else 0
    while n > 0:
        b = await r.read(min(n, 1 << 16))
        if not b:
            break
        n -= len(b); w.write(b); await w.drain()
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

# The client: N connections to the gateway (the host's loopback through
# the NAT), one line each way (SIZE bytes echoed first), then held open.
cat >"$W/client.py" <<'PY'
import socket, sys, threading, time, resource
n, gw, ready, size = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
resource.setrlimit(resource.RLIMIT_NOFILE, (n + 100, n + 100))
data = bytes(i % 251 for i in range(size))
socks = []
for i in range(n):
    s = socket.create_connection((gw, 9099), timeout=30)
    if size:
        s.sendall(b"echo %d\n" % size)
        t = threading.Thread(target=s.sendall, args=(data,)); t.start()
        got = bytearray()
        while len(got) < size:
            b = s.recv(min(1 << 20, size - len(got)))
            assert b, "closed"
            got += b
        t.join()
        assert got == data, "echo differs"
    else:
        s.sendall(b"hi\n")
    assert s.recv(3) == b"ok\n"
    socks.append(s)
open(ready, "w").close()
time.sleep(100000)
PY
released() {  # rings the NAT gave back so far
  "$T" conntrack stats --format json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin).get("rings_released", {}).get("rings", 0))' 2>/dev/null || echo 0
}
# Idle flows give their rings back two seconds after their last byte: wait
# for N more (at most 15 s; an older daemon never does), then the RSS.
given_back() { local want=$(($1)) i; for i in $(seq 30); do [ "$(released)" -ge "$want" ] && return; sleep 0.5; done; }
r0=$(released)
"$T" exec memc -- python3 "$W/client.py" "$FLOWS" 10.197.0.1 "$CLIENT_DONE" 0 >"$W/client.log" 2>&1 &
for _ in $(seq 1200); do [ -e "$CLIENT_DONE" ] && break; sleep 0.5; done
[ -e "$CLIENT_DONE" ] || { log "the client did not open $FLOWS connections: $(tail -3 "$W/client.log")"; exit 1; }
given_back "r0 + 2 * FLOWS"
flows=$(settle)
nflows=$("$T" conntrack stats --format json 2>/dev/null | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d.get("flows", d.get("total", "?")))' 2>/dev/null || echo "?")
log "daemon RSS with $FLOWS idle flows: $flows KiB (conntrack: $nflows)"
awk -v a="$base" -v b="$flows" -v n="$FLOWS" 'BEGIN {
  printf "{\"metric\":\"idle_flows_total\",\"flows\":%d,\"value\":%.1f,\"unit\":\"MiB\"}\n", n, (b - a) / 1024
  printf "{\"metric\":\"idle_flow\",\"value\":%.2f,\"unit\":\"KiB\"}\n", (b - a) / n }'

# Busy, then idle: BUSY more flows from a second client, SIZE bytes each way.
r1=$(released)
"$T" exec memc -- python3 "$W/client.py" "$BUSY" 10.197.0.1 "$CLIENT_DONE-busy" "$SIZE" >"$W/client-busy.log" 2>&1 &
bc=$!; track $bc
for _ in $(seq 600); do [ -e "$CLIENT_DONE-busy" ] && break; kill -0 $bc 2>/dev/null || break; sleep 0.5; done
[ -e "$CLIENT_DONE-busy" ] || { log "the busy client did not finish: $(tail -3 "$W/client-busy.log")"; exit 1; }
peak=$(rss_kib)
given_back "r1 + 2 * BUSY"
busy=$(settle)
log "daemon RSS with $BUSY more flows that moved $SIZE bytes each way: $peak KiB when they finished, $busy KiB idle (rings given back: $(released))"
awk -v a="$flows" -v b="$busy" -v n="$BUSY" 'BEGIN {
  printf "{\"metric\":\"busy_idle_flow\",\"flows\":%d,\"value\":%.2f,\"unit\":\"KiB\"}\n", n, (b - a) / n }'
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
