#!/usr/bin/env bash
# IPv6 against IPv4 through tapnet's switch, in ONE run (one daemon, one
# dual-stack network, one pair of containers), alternating the families:
#   tcp_gbps    one iperf3 TCP stream, client -> server
#   udp64_pps   64-byte UDP frames' payload (18 bytes over IPv4, so the
#               IPv6 frames are 20 bytes longer) received per second
#   rtt_us      ping average (ping -c 50 -i 0.01)
# "The host" is a private network namespace made here (the daemon runs in
# it); the containers talk only to each other.
#   usage: sudo [TAPNET=/path/to/tapnet] bench/ipv6.sh [--secs N] [--rounds N]
#   tools: apt-get install iperf3 python3 iproute2 util-linux
# stdout: one JSON object per line ({"family","round","metric","value"}),
# then the ratios ipv6/ipv4 of the medians; stderr: progress.
set -u -o pipefail
cd "$(dirname "$0")/.."
SECS=5 ROUNDS=3
usage() { echo "usage: [TAPNET=path] $0 [--secs N] [--rounds N]" >&2; }
while [ $# -gt 0 ]; do case $1 in
  --secs) SECS=${2:?--secs needs a value}; shift 2;;
  --rounds) ROUNDS=${2:?--rounds needs a value}; shift 2;;
  -h|--help) usage; exit 0;;
  *) usage; exit 2;;
esac; done
BENCH=ipv6; . bench/lib.sh
[[ $SECS =~ ^[1-9][0-9]*$ && $ROUNDS =~ ^[1-9][0-9]*$ ]] || { usage; exit 2; }
bench_setup iperf3 python3
RES=$W/results; : >"$RES"
start_daemon v6$$
"$T" network create --ipv6 --subnet 10.193.0.0/24 --subnet fd00:193::/64 v6net >/dev/null ||
  { log "network create failed"; exit 1; }
"$T" run -d --name srv --network v6net --ip 10.193.0.10 --ip6 fd00:193::10 -- iperf3 -s >/dev/null &&
"$T" run -d --name cli --network v6net -- sleep 100000 >/dev/null || { log "run failed"; exit 1; }
sleep 1

emit() { echo "{\"family\":\"$1\",\"round\":$2,\"metric\":\"$3\",\"value\":${4:-null}}"
         echo "$1 $3 ${4:-null}" >>"$RES"; log "$1 round $2 $3: ${4:-no data}"; }
field() { python3 -c "import json,sys; e=json.load(open(sys.argv[1]))['end']; print($2)" "$1" 2>/dev/null; }
iperf() { local to=$1 out=$2; shift 2
  timeout $((SECS + 30)) "$T" exec cli -- iperf3 -c "$to" -t "$SECS" -J "$@" >"$out" 2>&1; }
for r in $(seq "$ROUNDS"); do
  for fam in ipv4 ipv6; do
    case $fam in ipv4) to=10.193.0.10 len=18 p=-4;; ipv6) to=fd00:193::10 len=18 p=-6;; esac
    iperf "$to" "$W/t.json" &&
      emit "$fam" "$r" tcp_gbps "$(field "$W/t.json" "'%.2f' % (e['sum_received']['bits_per_second'] / 1e9)")"
    iperf "$to" "$W/u.json" -u -b 0 -l "$len" &&
      emit "$fam" "$r" udp64_pps "$(field "$W/u.json" "'%.0f' % ((e['sum']['packets'] - e['sum']['lost_packets']) / e['sum']['seconds'])")"
    rtt=$(timeout 30 "$T" exec cli -- ping "$p" -q -c 50 -i 0.01 "$to" 2>/dev/null |
          sed -n 's|.*= [0-9.]*/\([0-9.]*\)/.*|\1|p')
    emit "$fam" "$r" rtt_us "$(awk -v m="${rtt:-}" 'BEGIN {if (m != "") printf "%.0f", m * 1000; else printf "null"}')"
  done
done

python3 - "$RES" <<'PY'
import json, statistics, sys
vals = {}
for line in open(sys.argv[1]):
    fam, metric, v = line.split()
    if v != "null":
        vals.setdefault((fam, metric), []).append(float(v))
for metric in ("tcp_gbps", "udp64_pps", "rtt_us"):
    a, b = vals.get(("ipv6", metric)), vals.get(("ipv4", metric))
    r = statistics.median(a) / statistics.median(b) if a and b and statistics.median(b) else None
    print(json.dumps({"ratio": "ipv6/ipv4", "metric": metric,
                      "value": None if r is None else round(r, 3)}))
PY
