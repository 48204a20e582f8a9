#!/usr/bin/env bash
# tapnet demo: a daemon, a network, two containers. "web" serves HTTP, a client
# container fetches a page from it by name (the switch answers the DNS query
# itself); the frames cross tapnet's userspace switch (TAP ports, no kernel
# bridge). Everything is torn down at the end, also on failure.
#
# As root: the daemon runs in a private network namespace made for the demo.
# As an ordinary user (rootless): needs unprivileged user namespaces and
# /dev/net/tun mode 0666; the daemon runs as you, the containers in user
# namespaces you own.
set -euo pipefail
cd "$(dirname "$0")/.."

# Building tapnet needs protoc and protobuf's .proto files (the etcd client
# of the overlay) and libpcap's headers (the capture filter compiler); the
# containers run busybox (httpd), curl and ping from the
# host's filesystem.
missing=""
if [ -z "${TAPNET_BIN:-}" ]; then
  command -v protoc >/dev/null 2>&1 || missing+=" protobuf-compiler"
  [ -e /usr/include/google/protobuf/descriptor.proto ] || missing+=" libprotobuf-dev"
  [ -e /usr/include/pcap/pcap.h ] || missing+=" libpcap-dev"
fi
for tp in busybox:busybox-static curl:curl ping:iputils-ping ip:iproute2; do
  command -v "${tp%%:*}" >/dev/null 2>&1 || missing+=" ${tp#*:}"
done
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "demo: installing$missing" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      --no-install-recommends $missing >/dev/null
  else
    echo "demo: missing packages:$missing (sudo apt-get install -y$missing)" >&2
    exit 2
  fi
fi

# TAPNET_BIN: use an already built binary instead of building one.
if [ -n "${TAPNET_BIN:-}" ]; then
  T=$TAPNET_BIN
else
  cargo build --release --quiet
  T=$PWD/target/release/tapnet
fi
WORK=$(mktemp -d "${TMPDIR:-/tmp}/tapnet-demo.XXXXXX")
chmod 755 "$WORK"
export TAPNET_HOST=unix://$WORK/tapnet.sock
NS=""
DAEMON=""

cleanup() {
  set +e
  "$T" rm -f web >/dev/null 2>&1
  "$T" network rm demo >/dev/null 2>&1
  [ -n "$DAEMON" ] && kill "$DAEMON" 2>/dev/null && wait "$DAEMON" 2>/dev/null
  [ -n "$NS" ] && ip netns del "$NS" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }

if [ "$(id -u)" = 0 ]; then
  NS=tapnet-demo-$$
  ip netns add "$NS"
  ip netns exec "$NS" "$T" daemon --root "$WORK/state" --docker-plugin none >"$WORK/daemon.log" 2>&1 &
else
  "$T" daemon --root "$WORK/state" >"$WORK/daemon.log" 2>&1 &
fi
DAEMON=$!
for _ in $(seq 100); do "$T" network ls >/dev/null 2>&1 && break; sleep 0.1; done

mkdir -p "$WORK/www"
echo "hello from the web container, through tapnet's userspace switch" >"$WORK/www/index.html"

step tapnet network create --subnet 10.123.0.0/24 demo
"$T" network create --subnet 10.123.0.0/24 demo
step tapnet run -d --name web --network demo --ip 10.123.0.2 -- busybox httpd -f -p 80 -h "$WORK/www"
"$T" run -d --name web --network demo --ip 10.123.0.2 -- busybox httpd -f -p 80 -h "$WORK/www"
step tapnet ps
"$T" ps
step tapnet run --rm --network demo -- curl -sS http://web/
"$T" run --rm --network demo -- curl -sS --retry 5 --retry-connrefused --retry-delay 1 http://web/
step tapnet run --rm --network demo -- ping -c 3 web
"$T" run --rm --network demo -- ping -c 3 web
step tapnet network inspect demo
"$T" network inspect demo
echo
echo "demo: OK (as $(id -un)); tearing down"
