#!/usr/bin/env bash
# Two (or more) builds of the in-memory pipeline bench, measured in turn:
# each round runs the 2-port, 256-port and 1M-MAC cases of every binary,
# one binary after the other, so a change is read against the build it
# replaces in the same minutes of a noisy machine (criterion swings more
# than most changes between runs here).
#   usage: bench/pipeline-ab.sh [--rounds N] BENCH-BINARY...
#   A binary is what `cargo bench -p tapnet-switch --bench pipeline
#   --no-run` prints (target/release/deps/pipeline-HASH); copy it aside
#   before building the other version.
# stdout: one line per binary per round: Mpps of each case and the
# flatness ratios (256 ports / 2 ports, 1M MACs / 2 ports).
set -u -o pipefail
ROUNDS=3
usage() { echo "usage: $0 [--rounds N] BENCH-BINARY..." >&2; }
while [ $# -gt 0 ]; do case $1 in
  --rounds) ROUNDS=${2:?--rounds needs a value}; shift 2;;
  -h|--help) usage; exit 0;;
  -*) usage; exit 2;;
  *) break;;
esac; done
[ $# -ge 1 ] || { usage; exit 2; }
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || { echo "pipeline-ab.sh: --rounds must be a positive integer" >&2; exit 2; }
for b in "$@"; do [ -x "$b" ] || { echo "pipeline-ab.sh: not an executable: $b" >&2; exit 2; }; done
for r in $(seq "$ROUNDS"); do
  for b in "$@"; do
    "$b" --bench '^pipeline_64B/(2ports_1worker|256ports_1worker|fdb_1M_macs_1worker)$' \
      --measurement-time 3 --warm-up-time 1 --noplot 2>&1 |
      awk -v b="$b" -v r="$r" '
        /^pipeline_64B\// { n = $1 }
        /thrpt:/ && !(n in v) { v[n] = $4 }   # the estimate, not the change line
        END {
          a = v["pipeline_64B/2ports_1worker"]; c = v["pipeline_64B/256ports_1worker"]
          d = v["pipeline_64B/fdb_1M_macs_1worker"]
          if (a + 0 > 0) printf "round %d %s: 2 ports %s, 256 ports %s, 1M MACs %s Mpps; 256/2 %.3f, 1M/2 %.3f\n", r, b, a, c, d, c / a, d / a
          else printf "round %d %s: no figures\n", r, b
        }'
  done
done
