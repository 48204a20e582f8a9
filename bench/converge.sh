#!/usr/bin/env bash
# Overlay convergence: N tapnet hosts (default 8) and one etcd, all in
# namespaces made here on one underlay (a kernel bridge in a namespace of
# ours, 192.168.230.0/24). For each of R rounds (default 5) a container
# starts on host 1 (`run -d` on an overlay); the script measures, on host 2,
# the time until its name resolves and until its address answers a ping,
# and counts the etcd requests all hosts together made for that start (lease
# renewals apart: they are periodic, counted as KeepAlives; the daemons'
# own counter, `tapnet cluster`).
#   usage: sudo [TAPNET=/path/to/tapnet] bench/converge.sh [--hosts N] [--rounds R]
#   tools: apt-get install etcd-server etcd-client iproute2 python3
# stdout: one JSON object per round, then the medians; stderr: progress.
# Processes are killed by the pids recorded here; namespaces and files go in
# a trap.
set -u -o pipefail
cd "$(dirname "$0")/.."
N=8 R=5
while [ $# -gt 0 ]; do case $1 in
  --hosts) N=${2:?}; shift 2;;
  --rounds) R=${2:?}; shift 2;;
  *) echo "usage: $0 [--hosts N] [--rounds R]" >&2; exit 2;;
esac; done
log() { echo "converge.sh: $*" >&2; }
[ "$(id -u)" = 0 ] || { log "run as root"; exit 2; }
[[ $N =~ ^[0-9]+$ ]] && [ "$N" -ge 2 ] && [ "$N" -le 200 ] || { log "--hosts must be 2..200"; exit 2; }
for t in etcd etcdctl ip python3; do command -v $t >/dev/null || { log "missing $t"; exit 2; }; done
T=${TAPNET:-$PWD/target/release/tapnet}
[ -x "$T" ] || cargo build --release --quiet
P=cv$$ W=$(mktemp -d /tmp/tapnet-converge.XXXXXX) PIDS=""
cleanup() {
  set +e
  for i in $(seq 1 "$N"); do
    for c in $("$T" -H "unix://$W/h$i.sock" ps -aq 2>/dev/null); do
      "$T" -H "unix://$W/h$i.sock" rm -f "$c" >/dev/null 2>&1
    done
  done
  for p in $PIDS; do kill "$p" 2>/dev/null; done
  sleep 1
  for p in $PIDS; do kill -9 "$p" 2>/dev/null; done
  for i in $(seq 1 "$N") e sw; do ip netns del "$P$i" 2>/dev/null; ip netns del "${P}$i" 2>/dev/null; done
  rm -rf "$W"
}
trap cleanup EXIT INT TERM

ip netns add "${P}sw" && ip -n "${P}sw" link add br0 type bridge && ip -n "${P}sw" link set br0 up
attach() {  # attach NS ADDR
  local port=v$RANDOM$RANDOM
  ip link add "$port" netns "${P}sw" type veth peer name ul0 netns "$1"
  ip -n "${P}sw" link set "$port" master br0 up
  ip -n "$1" addr add "$2/24" dev ul0 && ip -n "$1" link set ul0 up && ip -n "$1" link set lo up
}
ip netns add "${P}e"; attach "${P}e" 192.168.230.250
ip netns exec "${P}e" etcd --data-dir "$W/etcd" --listen-client-urls http://192.168.230.250:2379 \
  --advertise-client-urls http://192.168.230.250:2379 --listen-peer-urls http://127.0.0.1:2380 >"$W/etcd.log" 2>&1 &
PIDS+=" $!"
for _ in $(seq 100); do
  ip netns exec "${P}e" etcdctl --endpoints http://192.168.230.250:2379 endpoint health >/dev/null 2>&1 && break
  sleep 0.2
done
for i in $(seq 1 "$N"); do
  ip netns add "$P$i"; attach "$P$i" "192.168.230.$i"
  ip netns exec "$P$i" "$T" daemon --root "$W/r$i" -H "unix://$W/h$i.sock" --workers 1 \
    --docker-plugin none --cluster-store etcd://192.168.230.250:2379 --advertise-addr "192.168.230.$i" \
    >"$W/h$i.log" 2>&1 &
  PIDS+=" $!"
done
tn() { local h=$1; shift; "$T" -H "unix://$W/h$h.sock" "$@"; }
for i in $(seq 1 "$N"); do
  for _ in $(seq 100); do tn "$i" network ls >/dev/null 2>&1 && break; sleep 0.1; done
done
log "$N hosts up"
tn 1 network create -d overlay --subnet 10.230.0.0/16 conv >/dev/null || { log "network create failed"; exit 1; }
for _ in $(seq 100); do tn 2 network ls | grep -q ' conv ' && break; sleep 0.1; done
tn 2 run -d --name probe --network conv -- sleep 100000 >/dev/null || exit 1
requests() { local s=0 i r; for i in $(seq 1 "$N"); do
  r=$(tn "$i" cluster --format json | python3 -c 'import json,sys; print(json.load(sys.stdin)["Requests"])'); s=$((s + r)); done; echo $s; }
now() { date +%s.%N; }
for r in $(seq 1 "$R"); do
  before=$(requests)
  t0=$(now)
  tn 1 run -d --name "c$r" --network conv -- sleep 100000 >/dev/null || { log "run failed"; exit 1; }
  t_run=$(now)
  ip=$(tn 1 inspect "c$r" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["NetworkSettings"]["Networks"]["conv"]["IPAddress"])')
  deadline=$(( $(date +%s) + 60 ))
  until tn 2 exec probe -- getent hosts "c$r" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt $deadline ] || { log "round $r: the name never resolved on host 2"; exit 1; }
    sleep 0.01
  done
  t_name=$(now)
  until tn 2 exec probe -- ping -c1 -W1 "$ip" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt $deadline ] || { log "round $r: the address never answered on host 2"; exit 1; }
    sleep 0.01
  done
  t_ping=$(now)
  after=$(requests)
  python3 - "$r" "$t0" "$t_run" "$t_name" "$t_ping" "$before" "$after" "$N" <<'EOF' | tee -a "$W/rows"
import json, sys
r, t0, tr, tn, tp, b, a, n = sys.argv[1:]
t0, tr, tn, tp = map(float, (t0, tr, tn, tp))
print(json.dumps({"round": int(r), "hosts": int(n), "run_ms": round((tr - t0) * 1000),
                  "name_ms": round((tn - t0) * 1000), "ping_ms": round((tp - t0) * 1000),
                  "etcd_requests": int(a) - int(b)}))
EOF
done
python3 - "$W/rows" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(json.dumps({"median": {k: statistics.median(r[k] for r in rows)
                             for k in ["run_ms", "name_ms", "ping_ms", "etcd_requests"]},
                  "hosts": rows[0]["hosts"], "rounds": len(rows)}))
EOF
