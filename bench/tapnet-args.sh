#!/bin/sh
# tapnet with extra daemon flags, for harnesses that start the daemon
# themselves (../shared/bench/peers.sh): every `tapnet daemon ...` gets
# $TAPNET_DAEMON_ARGS after `daemon`; other commands pass through.
#   TAPNET_DAEMON_ARGS='--busy-poll-us 1000' TAPNET=bench/tapnet-args.sh \
#     ../shared/bench/peers.sh --only kernel-bridge,tapnet --ratio-to kernel-bridge
# The binary: $TAPNET_REAL, else target/release/tapnet next to this script
# (also when $TAPNET_REAL is this script: bench/all.sh's switch-polling
# group sets it to $TAPNET, which may be this wrapper; exec'ing itself
# would loop forever).
me=$(readlink -f "$0")
bin=${TAPNET_REAL:-$(dirname "$me")/../target/release/tapnet}
if [ "$(readlink -f "$bin")" = "$me" ]; then bin=$(dirname "$me")/../target/release/tapnet; fi
if [ "${1:-}" = daemon ]; then
  shift
  # shellcheck disable=SC2086 # the flags are words on purpose
  exec "$bin" daemon ${TAPNET_DAEMON_ARGS:-} "$@"
fi
exec "$bin" "$@"
