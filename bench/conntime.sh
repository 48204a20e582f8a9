#!/usr/bin/env bash
# Where a connection's time goes, tapnet against the kernel path, in ONE
# run: bench/connrate.sh's outbound row (a client connects to an echo
# server on "the host's" loopback, sends a byte, reads it back, resets; in
# a loop), with a capture on the client's eth0 (and, for tapnet, on the
# host's loopback) for one second in the middle of each client's run. Every
# connection is cut into the steps the client's side sees:
#   syn>synack   SYN sent to SYN-ACK received (tapnet: the SYN crosses the
#                worker, the NAT connects to the host, the SYN-ACK comes
#                back; split below into syn>connect and connect>synack
#                from the host's loopback capture)
#   synack>data  the SYN-ACK's arrival to the client's byte (the client's
#                wake-up: in the kernel path connect() never sleeps, the
#                handshake runs inside it)
#   data>echo    the byte to the echo's arrival (the server's work)
#   echo>rst     the echo's arrival to the client's reset
#   rst>syn      the reset to the next SYN (the client's loop)
# "The host" is a private network namespace made here (the daemon, the
# iptables rules and the server live in namespaces made here).
#   usage: sudo [TAPNET=/path/to/tapnet] bench/conntime.sh [--secs N] [-- DAEMON-FLAGS...]
#   tools: apt-get install tshark python3 iptables iproute2
# stdout: one JSON object per peer and step ({"peer","step","p10","p50",
# "p90","mean"} in µs, "n" connections), then a table; stderr: progress.
set -u -o pipefail
cd "$(dirname "$0")/.."
SECS=5
usage() { echo "usage: [TAPNET=path] $0 [--secs N] [-- DAEMON-FLAGS...]" >&2; }
while [ $# -gt 0 ]; do case $1 in
  --secs) SECS=${2:?--secs needs a value}; shift 2;;
  -h|--help) usage; exit 0;;
  --) shift; break;;
  *) usage; exit 2;;
esac; done
BENCH=conntime; . bench/lib.sh
[[ $SECS =~ ^[1-9][0-9]*$ && $SECS -ge 3 ]] || { log "--secs: at least 3"; exit 2; }
bench_setup python3 iptables dumpcap tshark
HOSTNS=ct$$d KNS=ct$$k
H=(ip netns exec "$HOSTNS")
cp bench/echo.py "$W/echo.py" && cp bench/connclient.py "$W/client.py" || exit 1
# One peer: the client runs SECS seconds; one second of it, from its
# middle, is captured on each interface given as NAME|IFACE|PREFIX (the
# words of a command that enters the interface's namespace).
measure() {  # PEER CLIENT-CMD... :: CAPTURE-SPEC...
  local peer=$1 load cmd=() caps=() c pids=""; shift
  while [ "$1" != :: ]; do cmd+=("$1"); shift; done; shift
  caps=("$@")
  "${cmd[@]}" >"$W/$peer.rate" 2>"$W/$peer.err" & load=$!; track $load
  sleep $(((SECS - 1) / 2)).5
  for c in "${caps[@]}"; do
    IFS='|' read -r name ifc pre <<<"$c"
    # shellcheck disable=SC2086 # the prefix is words on purpose
    $pre timeout 1 dumpcap -q -i "$ifc" -f "tcp port 5301" -w "$W/$peer-$name.pcap" >/dev/null 2>&1 &
    pids+=" $!"
  done
  for c in $pids; do wait "$c"; done
  wait $load || { log "$peer: client failed: $(tail -1 "$W/$peer.err")"; return 1; }
  log "$peer: $(cut -d" " -f1 "$W/$peer.rate") connections/s"
  for c in "${caps[@]}"; do
    IFS='|' read -r name _ <<<"$c"
    tshark -r "$W/$peer-$name.pcap" -T fields -e frame.time_epoch -e tcp.srcport -e tcp.dstport \
      -e tcp.flags.syn -e tcp.flags.ack -e tcp.flags.reset -e tcp.len >"$W/$peer-$name.txt" 2>/dev/null
  done
}
# tapnet, its daemon in "the host"
start_daemon "$HOSTNS" "$@"
"${H[@]}" python3 "$W/echo.py" 127.0.0.1 5301 >"$W/echo-host.log" 2>&1 & track $!
waitfor eval '"${H[@]}" ss -Hltn "sport = :5301" | grep -q .' || { log "echo server did not start"; exit 1; }
"$T" network create --subnet 10.196.0.0/24 --gateway 10.196.0.1 ctnet >/dev/null || { log "network create failed"; exit 1; }
"$T" run -d --name ctcli --network ctnet -- sleep 100000 >/dev/null || { log "run failed"; exit 1; }
measure tapnet "$T" exec ctcli -- python3 "$W/client.py" 10.196.0.1 5301 "$SECS" :: \
  "c|eth0|$T exec ctcli --" "h|lo|ip netns exec $HOSTNS" || exit 1
# the kernel path (bench/connrate.sh's: DNAT to 127.0.0.1 with route_localnet)
kernel_nat "$HOSTNS" "$KNS" ctk0 10.197.0 5301 17003 5302 || { log "kernel path setup failed"; exit 1; }
measure kernel ip netns exec "$KNS" python3 "$W/client.py" 10.197.0.1 5301 "$SECS" :: \
  "c|eth0|ip netns exec $KNS" || exit 1
python3 - "$W" <<'PY'
import json, os, sys
W = sys.argv[1]
def load(path):
    """(time, kind, the client's port) of each segment that marks a step."""
    ev = []
    for line in open(path):
        f = line.rstrip("\n").split("\t")
        if len(f) < 7 or not f[1]:
            continue
        t, sport, dport = float(f[0]), int(f[1]), int(f[2])
        syn, ack, rst, n = f[3] == "1", f[4] == "1", f[5] == "1", int(f[6] or 0)
        out = dport == 5301            # from the client (or the NAT's host socket)
        kind = ("syn" if syn and not ack and out else "synack" if syn and ack and not out else
                "rst" if rst and out else "data" if n and out and not rst else
                "echo" if n and not out else None)
        if kind:
            ev.append((t, kind, sport if out else dport))
    return sorted(ev)
def conns(ev, host=None):
    # A connection: its client port from its SYN on; it ends at the next
    # connection's SYN (the client is sequential). Segments of a port's
    # earlier connection that come late (a reset's stragglers) are not
    # taken for the next one's: each event goes to its port's latest SYN.
    out, latest = [], {}
    for t, k, port in ev:
        if k == "syn":
            if out:
                out[-1].setdefault("next", t)
            latest[port] = {"syn": t}; out.append(latest[port])
        elif port in latest and k not in latest[port] and "next" not in latest[port]:
            latest[port][k] = t
    out = [c for c in out[1:-1] if all(k in c for k in ("synack", "data", "echo", "rst", "next"))]
    if host is not None:  # the NAT's connect on the host's loopback
        hs = [t for t, k, _ in host if k == "syn"]
        i = 0
        for c in out:
            while i < len(hs) and hs[i] < c["syn"]:
                i += 1
            if i < len(hs) and hs[i] < c["synack"]:
                c["connect"] = hs[i]
    return out
STEPS = [("syn", "synack"), ("syn", "connect"), ("connect", "synack"), ("synack", "data"),
         ("data", "echo"), ("echo", "rst"), ("rst", "next")]
rows = []
for peer in ("tapnet", "kernel"):
    c = f"{W}/{peer}-c.txt"
    if not os.path.exists(c):
        continue
    h = f"{W}/{peer}-h.txt"
    cs = conns(load(c), load(h) if os.path.exists(h) else None)
    for a, b in STEPS:
        v = sorted((x[b] - x[a]) * 1e6 for x in cs if a in x and b in x)
        if not v:
            continue
        q = lambda p: round(v[int(p * (len(v) - 1))], 1)
        r = {"peer": peer, "step": f"{a}>{b}".replace(">next", ">syn"), "n": len(v),
             "p10": q(.1), "p50": q(.5), "p90": q(.9), "mean": round(sum(v) / len(v), 1)}
        rows.append(r); print(json.dumps(r))
    total = [(x["next"] - x["syn"]) * 1e6 for x in cs]
    if total:
        r = {"peer": peer, "step": "connection", "n": len(total), "mean": round(sum(total) / len(total), 1)}
        rows.append(r); print(json.dumps(r))
print()
print("%-8s %-16s %6s %8s %8s %8s %8s" % ("peer", "step (µs)", "n", "p10", "p50", "p90", "mean"))
for r in rows:
    print("%-8s %-16s %6d %8s %8s %8s %8s" % (r["peer"], r["step"], r["n"], r.get("p10", "-"),
          r.get("p50", "-"), r.get("p90", "-"), r["mean"]))
PY
