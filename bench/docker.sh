#!/usr/bin/env bash
# Docker containers on a tapnet network (`docker network create -d tapnet`)
# against Docker's own bridge network, in ONE run, with one dockerd:
#   tcp     one iperf3 TCP stream between two containers of the network
#   udp64   iperf3 UDP with 64-byte payloads, unlimited rate: packets/s the
#           receiver got
#   rtt     ping, 200 echoes at 5 ms: average round trip in microseconds
# Everything lives in namespaces made here: "the host" (tapnet's daemon and
# dockerd) is a private network namespace; dockerd also gets a private mount
# namespace (a tmpfs on /run, this script's directory on /run/docker/plugins
# where it finds driver "tapnet"), data and exec roots in a temporary
# directory, the vfs storage driver, and an image imported from a tarball of
# busybox and iperf3 with its libraries.
#   usage: sudo [TAPNET=/path/to/tapnet] bench/docker.sh [--secs N]
#   tools: apt-get install docker.io iperf3 iproute2 util-linux busybox-static
# stdout: one JSON object per line ({"peer","metric","value"}), then the
# ratios tapnet/bridge; stderr: progress. Processes are killed by the pids
# recorded here; namespaces and files go in a trap.
set -u -o pipefail
cd "$(dirname "$0")/.."
SECS=5
usage() { echo "usage: [TAPNET=path] $0 [--secs N]" >&2; }
while [ $# -gt 0 ]; do case $1 in
  --secs) SECS=${2:?--secs needs a value}; shift 2;;
  -h|--help) usage; exit 0;;
  *) usage; exit 2;;
esac; done
log() { echo "docker.sh: $*" >&2; }
[[ $SECS =~ ^[1-9][0-9]*$ ]] || { log "--secs must be a positive integer"; exit 2; }
[ "$(id -u)" = 0 ] || { log "run as root"; exit 2; }
for t in dockerd /usr/bin/docker iperf3 ip nsenter unshare busybox ldd tar python3; do
  command -v "$t" >/dev/null 2>&1 || { log "missing $t (apt-get install docker.io iperf3 iproute2 util-linux busybox-static python3)"; exit 2; }
done
T=${TAPNET:-$PWD/target/release/tapnet}
if [ -z "${TAPNET:-}" ] && [ ! -x "$T" ]; then cargo build --release --quiet || true; fi
[ -x "$T" ] || { log "no tapnet binary at $T"; exit 2; }

NS=db$$
W=$(mktemp -d /tmp/tapnet-dockerbench.XXXXXX)
RES=$W/results; : >"$RES"
export DOCKER_HOST=unix://$W/docker.sock DOCKER_CONFIG=$W/config
D() { /usr/bin/docker "$@"; }
TAPNET_PID="" HOLDER_PID="" DOCKERD_PID=""
cleanup() {
  set +e
  if [ -n "$DOCKERD_PID" ]; then
    D rm -f $(D ps -aq) >/dev/null 2>&1
    D network prune -f >/dev/null 2>&1
    # Without --live-restore dockerd stops its containerd as it exits.
    kill -TERM "$DOCKERD_PID" 2>/dev/null
    for _ in $(seq 100); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$DOCKERD_PID" 2>/dev/null
  fi
  [ -n "$TAPNET_PID" ] && kill -TERM "$TAPNET_PID" 2>/dev/null
  [ -n "$HOLDER_PID" ] && { kill -KILL "$HOLDER_PID"; wait "$HOLDER_PID"; } 2>/dev/null
  sleep 1
  ip netns del "$NS" 2>/dev/null
  rm -rf "$W"
}
trap cleanup EXIT INT TERM

ip netns add "$NS" && ip netns exec "$NS" ip link set lo up
mkdir -p "$W"/plugins "$W"/data "$W"/exec "$W"/config "$W"/img/bin "$W"/img/tmp
chmod 1777 "$W/img/tmp"                          # iperf3 makes a file there per stream
echo "nameserver 192.0.2.53" >"$W/resolv.conf"    # no resolver is needed: nothing reachable
ip netns exec "$NS" "$T" daemon --root "$W/tapnet" -H "unix://$W/tapnet.sock" \
  --docker-plugin "unix://$W/plugins/tapnet.sock" >"$W/tapnet.log" 2>&1 &
TAPNET_PID=$!
unshare -m --propagation private sh -c "mount -t tmpfs tmpfs /run && mkdir -p /run/docker/plugins && \
  mount --bind $W/plugins /run/docker/plugins && mount --bind $W/resolv.conf /etc/resolv.conf && \
  touch $W/holder-ready && exec sleep 100000" &
HOLDER_PID=$!
for _ in $(seq 50); do [ -e "$W/holder-ready" ] && break; sleep 0.1; done
nsenter --net=/run/netns/"$NS" --mount=/proc/$HOLDER_PID/ns/mnt dockerd --data-root "$W/data" \
  --exec-root "$W/exec" -H "$DOCKER_HOST" --storage-driver vfs >"$W/dockerd.log" 2>&1 &
DOCKERD_PID=$!
for _ in $(seq 150); do D version >/dev/null 2>&1 && break; sleep 0.2; done
D version >/dev/null 2>&1 || { log "dockerd did not start: $(tail -3 "$W/dockerd.log")"; exit 1; }

# The image: busybox and iperf3 with the libraries it loads.
cp /bin/busybox "$W/img/bin/"
for a in $(busybox --list); do [ "$a" = busybox ] || ln -s busybox "$W/img/bin/$a"; done
cp "$(command -v iperf3)" "$W/img/bin/iperf3"
for lib in $(ldd "$(command -v iperf3)" | grep -o '/[^ ]*'); do
  mkdir -p "$W/img$(dirname "$lib")" && cp -L "$lib" "$W/img$lib"
done
tar -C "$W/img" -cf "$W/img.tar" . && D import -c 'ENV PATH=/bin' "$W/img.tar" bench:latest >/dev/null

json_num() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)" 2>/dev/null; }
emit() { echo "{\"peer\":\"$1\",\"metric\":\"$2\",\"value\":${3:-null}}" | tee -a "$RES"; }

measure() {   # measure PEER DRIVER SUBNET
  local peer=$1 drv=$2 sub=$3 v
  log "$peer: network -d $drv"
  D network create -d "$drv" --subnet "$sub" "bench-$peer" >/dev/null || { emit "$peer" tcp_gbps; emit "$peer" udp64_rx_pps; emit "$peer" rtt_us; return; }
  D run -d --name "srv-$peer" --network "bench-$peer" bench:latest iperf3 -s >/dev/null
  D run -d --name "cli-$peer" --network "bench-$peer" bench:latest sleep 100000 >/dev/null
  sleep 1
  D exec "cli-$peer" iperf3 -c "srv-$peer" -t "$SECS" -J >"$W/tcp-$peer.json" 2>&1
  v=$(json_num 'round(d["end"]["sum_received"]["bits_per_second"]/1e9,3)' <"$W/tcp-$peer.json")
  [ -n "$v" ] || log "$peer: tcp: $(tail -c 300 "$W/tcp-$peer.json")"
  emit "$peer" tcp_gbps "$v"
  D exec "cli-$peer" iperf3 -c "srv-$peer" -u -b 0 -l 64 -t "$SECS" -J >"$W/udp-$peer.json" 2>&1
  v=$(json_num 'int((d["end"]["sum"]["packets"]-d["end"]["sum"]["lost_packets"])/d["end"]["sum"]["seconds"])' <"$W/udp-$peer.json")
  [ -n "$v" ] || log "$peer: udp: $(tail -c 300 "$W/udp-$peer.json")"
  emit "$peer" udp64_rx_pps "$v"
  v=$(D exec "cli-$peer" ping -q -c 200 -i 0.005 "srv-$peer" | awk -F/ '/round-trip|rtt/ {printf "%d", $4*1000}')
  emit "$peer" rtt_us "$v"
  D rm -f "srv-$peer" "cli-$peer" >/dev/null
  D network rm "bench-$peer" >/dev/null
}
measure tapnet tapnet 10.93.1.0/24
measure docker-bridge bridge 10.93.2.0/24
# Where the packets went: tapnet's counters (per port, per worker with its
# busy and polling shares, drops by reason), after the measurements.
echo "docker.sh: tapnet stats:" >&2
timeout 10 "$T" -H "unix://$W/tapnet.sock" stats >&2 || true

python3 - "$RES" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
v = {(r["peer"], r["metric"]): r["value"] for r in rows}
for m in ["tcp_gbps", "udp64_rx_pps", "rtt_us"]:
    a, b = v.get(("tapnet", m)), v.get(("docker-bridge", m))
    r = round(a / b, 2) if a and b else None
    print(json.dumps({"ratio": "tapnet/docker-bridge", "metric": m, "value": r}))
EOF
