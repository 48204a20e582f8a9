#!/usr/bin/env bash
# DNS answers per second, end to end, in one run: dnsperf inside a tapnet
# container queries (a) tapnet's embedded DNS, answered inline by the switch
# at the gateway address, and (b) dnsmasq serving the same names from a hosts
# file, running in another container on the same network. Both paths cross
# the same switch; only the answerer differs.
#   usage: sudo bench/dns.sh [--secs N] [--names N]   (needs dnsperf, dnsmasq-base)
# stdout: one JSON object per line, the last one the ratio tapnet/dnsmasq.
# Everything runs in a private network namespace made here and is removed by
# a trap; processes are killed by the pids recorded.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=10 NAMES=20
while [ $# -gt 0 ]; do case $1 in
  --secs) SECS=$2; shift 2;;
  --names) NAMES=$2; shift 2;;
  *) echo "usage: $0 [--secs N] [--names N]" >&2; exit 2;;
esac; done
[ "$(id -u)" = 0 ] || { echo "dns.sh: run as root" >&2; exit 2; }
for t in dnsperf dnsmasq; do command -v $t >/dev/null || { echo "dns.sh: missing $t (apt-get install dnsperf dnsmasq-base)" >&2; exit 2; }; done

T=${TAPNET:-$PWD/target/release/tapnet}
[ -x "$T" ] || cargo build --release --quiet
W=$(mktemp -d /tmp/tapnet-dnsbench.XXXXXX); chmod 755 "$W"
export TAPNET_HOST=unix://$W/tapnet.sock
NS=tndnsb$$ DAEMON=""
cleanup() {
  set +e
  for i in $(seq "$NAMES"); do "$T" rm -f "c$i" >/dev/null 2>&1; done
  "$T" rm -f dnsmasq >/dev/null 2>&1
  [ -n "$DAEMON" ] && kill "$DAEMON" 2>/dev/null && wait "$DAEMON" 2>/dev/null
  ip netns del "$NS" 2>/dev/null
  rm -rf "$W"
}
trap cleanup EXIT
ip netns add "$NS"
ip netns exec "$NS" "$T" daemon --root "$W/state" --docker-plugin none >"$W/daemon.log" 2>&1 &
DAEMON=$!
for _ in $(seq 100); do "$T" network ls >/dev/null 2>&1 && break; sleep 0.1; done
"$T" network create --subnet 10.201.0.0/24 dnsbench >/dev/null
: >"$W/hosts"; : >"$W/queries"
for i in $(seq "$NAMES"); do
  "$T" run -d --name "c$i" --network dnsbench --ip "10.201.0.$((i + 10))" -- sleep 3600 >/dev/null
  echo "10.201.0.$((i + 10)) c$i" >>"$W/hosts"
  echo "c$i A" >>"$W/queries"
done
"$T" run -d --name dnsmasq --network dnsbench --ip 10.201.0.250 -- \
  dnsmasq -k --conf-file=/dev/null --no-resolv --no-hosts --addn-hosts="$W/hosts" \
  --listen-address=10.201.0.250 --bind-interfaces --user=root --pid-file= \
  --cache-size=10000 --local-ttl=600 >/dev/null
sleep 0.5
qps() {  # SERVER: dnsperf from a fresh container, queries per second
  "$T" run --rm --network dnsbench -- dnsperf -s "$1" -d "$W/queries" -l "$SECS" -c 4 -q 200 2>&1 |
    awk '/Queries per second/ {print $4} /Queries lost/ {lost = $3} END {if (lost != "0") print "lost " lost > "/dev/stderr"}'
}
a=$(qps 10.201.0.1); b=$(qps 10.201.0.250)
echo "{\"peer\":\"tapnet-inline\",\"metric\":\"dns_qps\",\"value\":${a:-null}}"
echo "{\"peer\":\"dnsmasq\",\"metric\":\"dns_qps\",\"value\":${b:-null}}"
awk -v a="${a:-0}" -v b="${b:-0}" 'BEGIN {printf "{\"ratio\":\"tapnet/dnsmasq\",\"dns_qps\":%s}\n", (b > 0 ? sprintf("%.3f", a / b) : "null")}'
