#!/usr/bin/env bash
# The side-by-side harness behind every figure of issue 19, in ONE run: each
# round runs every group below once, so every peer of a group is measured in
# the same round as tapnet and ratios are taken within a round (the machine
# is shared and noisy); the report gives the median ratio over the rounds
# against each goal, and can rewrite README.md's generated figures.
#   switch       ../shared/bench/peers.sh: kernel bridge, Open vSwitch userspace
#                with TSO, vde_switch, tapnet (TCP, 64 B UDP, ping RTT)
#   switch-polling
#                peers.sh --only tapnet, the daemon with one worker that never
#                sleeps (--workers 1 --busy-poll-us 1000000, and
#                --poll-switch-streams since 2026-12-06: a CPU spent on
#                polling): how much of tapnet's ping RTT is the worker's
#                wake-up (context for the RTT goal, not a goal)
#   switch-steering
#                peers.sh --only tapnet, the daemon with two workers and
#                --tap-steering cpu (each frame read by the worker on the
#                sender's CPU; root only): context for the RTT, 64 B and TCP
#                goals against the switch group's kernel bridge
#   switch-poll-streams
#                peers.sh --only tapnet, the daemon with --poll-switch-streams
#                (its worker polls on while it forwards a stream: the default
#                before 2026-12-06, when one TCP stream had a slow mode):
#                context for the TCP goals
#   switch-cc    bench/tcpruns.sh --peers kernel-bridge,tapnet: one TCP stream,
#                three runs alternating between the kernel bridge and tapnet,
#                with CUBIC (Debian's default), then with BBR (groups
#                switch-cubic, switch-bbr; --cc sets the machine's default
#                for the script's run): peers.sh's TCP row uses the system's
#                congestion control, which on this VM's kernel is BBR
#                (context for the TCP goals)
#   nat          bench/nat.sh, then bench/nat.sh --reverse: kernel veth+iptables,
#                pasta, slirp4netns (1500, 65520), socat, tapnet
#   nat-cubic    bench/nat.sh both ways with --cc cubic: every connection
#                (the iperf3 ends, every relay's host sockets) CUBIC, Debian's
#                default, the machine's default for the script's run, where
#                the other NAT groups use the system's (BBR on this VM's
#                kernel): context rows
#   nat-spare    bench/nat.sh both ways with --app-cpus LAST (every iperf3 on the
#                last CPU) and the daemon's worker on CPU 0: each NAT path with
#                a CPU for the application and, for a relay, one for itself;
#                the kernel path's NAT runs on the application's CPU (context
#                rows, not goals)
#   udp          bench/udp.sh: UDP from the host's loopback to a container
#                through the NAT, tapnet and the kernel path, the sender's
#                writes UDP_SEGMENT runs or single datagrams, the reader
#                with UDP_GRO or without (context rows, not goals); then
#                the other way (--reverse: the container sends)
#   connrate     bench/connrate.sh: kernel, pasta, tapnet
#   nat-never, connrate-never
#                bench/nat.sh both ways (tapnet and the kernel path only) and
#                bench/connrate.sh with the daemon's --sleep-when-crowded never
#                (its workers poll on when more threads are runnable than there
#                are CPUs, even while they read a stream: the default before
#                2026-12-06): context rows
#   nat-crowd, connrate-crowd (only with --only)
#                the same with --sleep-when-crowded always (its workers sleep
#                on a crowded machine whatever they read)
#   scale        bench/scale.sh: one pair, two pairs, a crowded network (and
#                the empty one again after it), the daemon's default workers;
#                the pairs' rows with the CPUs they kept busy and their cost
#   scale-2w     bench/scale.sh --idle 0 --nets 0 with --workers 2: one pair
#                and two pairs, the scaling goal as issue 19 states it ("2
#                workers and 2 concurrent pairs"); on a 2-CPU machine the
#                default is one worker
#   memory       bench/memory.sh: 10,000 idle flows, idle ports
#   pipeline     cargo bench -p tapnet-switch --bench pipeline (in-memory Mpps)
#   wakeup       bench/wakeup.sh: what a wake-up costs across CPUs and on one
#                (context for the RTT and connection-rate goals)
#   flood        bench/flood.sh: a 64-byte flood's cost per packet to the
#                forwarder and its share of a CPU, then one TCP stream's cost
#                per byte, tapnet and Open vSwitch's userspace datapath
#                (context for the 64 B and the TCP goals)
#   usage: sudo bench/all.sh [--rounds N] [--secs N] [--only GROUP[,GROUP...]]
#                            [--out DIR] [--readme]
#   --readme rewrites the block between the bench markers in README.md from
#   this run's report (bench/report.py); without it the report goes to stdout.
#   tools: apt-get install iperf3 iputils-ping iproute2 openvswitch-switch vde2
#          slirp4netns passt socat iptables python3 util-linux
# Output: DIR/results.jsonl (one JSON object per measurement, each tagged with
# its group and round), DIR/GROUP-ROUND.log (each script's stderr: progress
# and tapnet stats), DIR/report.md. A group that fails is logged and the
# others still run; its rows are then missing and the report says so.
# Each script cleans up after itself (namespaces, processes by pid, files).
set -u -o pipefail
cd "$(dirname "$0")/.."
ROUNDS=3 SECS=5 ONLY="" OUT="" README=""
GROUPS_ALL="switch switch-polling switch-steering switch-poll-streams switch-cc nat nat-cubic nat-spare udp connrate nat-never connrate-never scale scale-2w memory pipeline wakeup flood"
GROUPS_MORE="nat-crowd connrate-crowd"  # run only when --only names them
usage() { echo "usage: sudo $0 [--rounds N] [--secs N] [--only GROUP[,GROUP...]] [--out DIR] [--readme]
  groups: $GROUPS_ALL
  with --only also: $GROUPS_MORE" >&2; }
while [ $# -gt 0 ]; do case $1 in
  --rounds) ROUNDS=${2:?--rounds needs a value}; shift 2;;
  --secs) SECS=${2:?--secs needs a value}; shift 2;;
  --only) ONLY=${2:?--only needs a value}; shift 2;;
  --out) OUT=${2:?--out needs a value}; shift 2;;
  --readme) README=1; shift;;
  -h|--help) usage; exit 0;;
  *) echo "all.sh: unknown argument: $1" >&2; usage; exit 2;;
esac; done
log() { echo "all.sh: $*" >&2; }
[[ $ROUNDS =~ ^[1-9][0-9]*$ && $SECS =~ ^[1-9][0-9]*$ ]] || { log "--rounds and --secs take positive integers"; exit 2; }
GROUPS_RUN=${ONLY//,/ }; GROUPS_RUN=${GROUPS_RUN:-$GROUPS_ALL}
for g in $GROUPS_RUN; do
  [[ " $GROUPS_ALL $GROUPS_MORE " == *" $g "* ]] || { log "unknown group: $g (groups: $GROUPS_ALL $GROUPS_MORE)"; exit 2; }
done
[ "$(id -u)" = 0 ] || { log "run as root"; exit 2; }
command -v python3 >/dev/null || { log "missing python3"; exit 2; }
PEERS=../shared/bench/peers.sh
[ -x "$PEERS" ] || [ -f "$PEERS" ] || { log "no $PEERS"; exit 2; }
cargo build --release --quiet || { log "cargo build --release failed"; exit 1; }
export TAPNET=${TAPNET:-$PWD/target/release/tapnet}
OUT=${OUT:-$(mktemp -d /tmp/tapnet-bench.XXXXXX)}
mkdir -p "$OUT" || exit 2
RESULTS=$OUT/results.jsonl; : >"$RESULTS"
log "results in $OUT; $ROUNDS round(s) of: $GROUPS_RUN; ${SECS}s per test"

# Runs CMD with the daemons its scripts start given FLAGS (bench/tapnet-args.sh).
with_daemon_args() {  # FLAGS CMD...
  local flags=$1; shift
  TAPNET_REAL=$TAPNET TAPNET_DAEMON_ARGS="$flags" TAPNET=$PWD/bench/tapnet-args.sh "$@"
}

# Runs one group's script, tagging each JSON line of its stdout.
tagged() {  # GROUP ROUND CMD...
  local g=$1 r=$2; shift 2
  log "round $r: $g: $*"
  "$@" 2>"$OUT/$g-$r.log" | python3 -c '
import json, sys
g, r = sys.argv[1], int(sys.argv[2])
for line in sys.stdin:
    line = line.strip()
    if not line.startswith("{"):
        continue
    try:
        o = json.loads(line)
    except ValueError:
        continue
    o["group"], o["round"] = g, r
    print(json.dumps(o), flush=True)' "$g" "$r" >>"$RESULTS"
  local rc=${PIPESTATUS[0]}
  [ "$rc" = 0 ] || log "round $r: $g exited with $rc (see $OUT/$g-$r.log)"
}

# criterion's "thrpt: [low mid high Melem/s]" lines as JSON.
pipeline() {
  cargo bench -p tapnet-switch --bench pipeline 2>&1 | python3 -c '
import json, re, sys
name = None
for line in sys.stdin:
    sys.stderr.write(line)
    m = re.match(r"^pipeline_64B/(\S+)", line)
    if m:
        name = m.group(1)
    m = re.search(r"thrpt:\s*\[\S+ \S+ (\S+) (\S+)", line)
    if m and name:
        v, unit = float(m.group(1)), m.group(2)
        scale = {"elem/s": 1e-6, "Kelem/s": 1e-3, "Melem/s": 1.0, "Gelem/s": 1e3}.get(unit)
        if scale is not None:
            print(json.dumps({"case": name, "metric": "mpps", "value": round(v * scale, 2)}))
        name = None'
}

for r in $(seq "$ROUNDS"); do
  for g in $GROUPS_RUN; do case $g in
    switch) tagged switch "$r" bash "$PEERS" --only kernel-bridge,ovs-netdev-tso,vde,tapnet \
              --secs "$SECS" --ratio-to kernel-bridge;;
    switch-polling) with_daemon_args "--workers 1 --busy-poll-us 1000000 --poll-switch-streams" \
              tagged switch-polling "$r" bash "$PEERS" --only tapnet --secs "$SECS";;
    switch-steering) with_daemon_args "--workers 2 --tap-steering cpu" \
              tagged switch-steering "$r" bash "$PEERS" --only tapnet --secs "$SECS";;
    switch-poll-streams) with_daemon_args "--poll-switch-streams" \
              tagged switch-poll-streams "$r" bash "$PEERS" --only tapnet --secs "$SECS";;
    switch-cc) for cc in cubic bbr; do
                 tagged "switch-$cc" "$r" bench/tcpruns.sh --runs 3 --secs "$SECS" --cc "$cc" \
                   --peers kernel-bridge,tapnet
               done;;
    nat) tagged nat "$r" bench/nat.sh --secs "$SECS"
         tagged nat-reverse "$r" bench/nat.sh --secs "$SECS" --reverse;;
    nat-cubic) tagged nat-cubic "$r" bench/nat.sh --secs "$SECS" --cc cubic
         tagged nat-cubic-reverse "$r" bench/nat.sh --secs "$SECS" --cc cubic --reverse;;
    nat-spare) app=$(( $(nproc) - 1 ))
         if [ "$app" -ge 1 ]; then
           with_daemon_args "--worker-cpus 0" \
             tagged nat-spare "$r" bench/nat.sh --secs "$SECS" --app-cpus "$app"
           with_daemon_args "--worker-cpus 0" \
             tagged nat-spare-reverse "$r" bench/nat.sh --secs "$SECS" --app-cpus "$app" --reverse
         else log "round $r: nat-spare needs 2 CPUs"; fi;;
    udp) tagged udp "$r" bench/udp.sh --secs "$SECS"
         tagged udp-reverse "$r" bench/udp.sh --secs "$SECS" --reverse;;
    connrate) tagged connrate "$r" bench/connrate.sh --secs "$SECS";;
    nat-never|nat-crowd)
         when=never; [ "$g" = nat-crowd ] && when=always
         with_daemon_args "--sleep-when-crowded $when" \
           tagged "$g" "$r" bench/nat.sh --secs "$SECS" --peers tapnet,kernel
         with_daemon_args "--sleep-when-crowded $when" \
           tagged "$g-reverse" "$r" bench/nat.sh --secs "$SECS" --reverse --peers tapnet,kernel;;
    connrate-never|connrate-crowd)
         when=never; [ "$g" = connrate-crowd ] && when=always
         with_daemon_args "--sleep-when-crowded $when" tagged "$g" "$r" bench/connrate.sh --secs "$SECS";;
    scale) tagged scale "$r" bench/scale.sh --secs "$SECS";;
    scale-2w) with_daemon_args "--workers 2" \
              tagged scale-2w "$r" bench/scale.sh --secs "$SECS" --idle 0 --nets 0;;
    memory) tagged memory "$r" bench/memory.sh;;
    pipeline) tagged pipeline "$r" pipeline;;
    wakeup) tagged wakeup "$r" bench/wakeup.sh;;
    flood) tagged flood "$r" bench/flood.sh --secs "$SECS";;
  esac; done
done

python3 bench/report.py "$RESULTS" >"$OUT/report.md" || { log "report failed"; exit 1; }
if [ -n "$README" ]; then
  python3 bench/report.py "$RESULTS" --readme README.md || exit 1
  log "README.md's figures rewritten from $RESULTS"
else
  cat "$OUT/report.md"
fi
log "done: $OUT"
