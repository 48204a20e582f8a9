#!/usr/bin/env bash
# All of tapnet's tests on a fresh Debian 12 machine with the Rust toolchain:
# installs what the tests use, prepares the rootless test user and
# /dev/net/tun, says what it changed, then runs `cargo test --workspace
# --release` and exits with its status. `.ci/run` calls exactly this.
#
#   sudo ./scripts/test.sh [ARGS...]   ARGS go to cargo test (e.g. --test nat)
#
# Needs root: besides installing, most tests make network namespaces and
# veth pairs. As an ordinary user it says so in one line and exits 2
# (running part of the suite would report root-only tests as failures,
# and skipping them silently would hide them).
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests use, one per line with its users: adding one
# is adding a line.
PACKAGES=(
  iproute2        # ip netns/link/addr: every integration test
  iputils-ping    # ping inside containers: containers, dataplane, dns, nat, rootless, demo
  busybox-static  # httpd, nc, sh inside containers: containers, dataplane, nat, readme, demo
  curl            # HTTP client inside containers: containers, dataplane, nat, conntrack, readme, demo
  util-linux      # unshare, nsenter, setpriv: sandbox, containers, rootless tests, readme
  procps          # sysctl: nat (ip_unprivileged_port_start, IPv6 on lo)
  dnsutils        # dig: dns, cli_networks, containers
  dnsmasq-base    # the tests' own upstream resolver: dns (forwarding)
  socat           # TCP/UDP servers and clients: nat, conntrack
  python3         # echo server and 2000-connection client: nat (load test)
  systemd         # systemd-analyze verify of the units: service
  docker.io       # a real dockerd (in the tests' own namespaces) using tapnet as its network driver: docker
  docker-compose  # compose files with driver: tapnet networks: docker
  iptables        # dockerd's own bridge driver, the comparison in: docker
  etcd-server     # the cluster store of the overlay tests (run in their own namespace): overlay
  etcd-client     # etcdctl, to see etcd answer before the hosts start: overlay
  protobuf-compiler # protoc, which the etcd-client crate's build needs: the build itself
  libprotobuf-dev # protobuf's well-known .proto files, for the same build
  libpcap-dev     # libpcap, whose compiler turns capture filters into BPF: the build itself, capture
  tshark          # reads the pcapng tapnet capture writes (interfaces, comments, flags): capture; 802.1Q tags on the wire: macvlan
  rootlesskit     # rootless Docker (dockerd-rootless.sh) using tapnet's driver: docker (rootless)
  uidmap          # newuidmap/newgidmap, which RootlessKit needs: docker (rootless)
  slirp4netns     # RootlessKit's network (rootless Docker's own, unused by tapnet's networks): docker (rootless)
  ca-certificates # cargo's HTTPS downloads of crates on a fresh machine
)

if [ "$(id -u)" != 0 ]; then
  echo "scripts/test.sh: needs root (it installs ${#PACKAGES[@]} Debian packages, creates the user tapnettest, sets /dev/net/tun to 0666, and the tests make network namespaces): run sudo ./scripts/test.sh" >&2
  exit 2
fi

changed=()

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "test.sh: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  # Installing docker.io must not start dockerd on the host (it would set
  # the host's FORWARD policy to DROP and load br_netfilter): a
  # policy-rc.d that forbids starting services, for the install only.
  policy=/usr/sbin/policy-rc.d
  own_policy=
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && own_policy=1
    trap 'rm -f "$policy"' EXIT
  fi
  apt-get install -y --no-install-recommends "${missing[@]}"
  [ -z "$own_policy" ] || { rm -f "$policy"; trap - EXIT; }
  # ... nor at the next boot, when this script is what installed it.
  if [[ " ${missing[*]} " == *" docker.io "* ]] && [ -d /run/systemd/system ]; then
    systemctl disable docker.service docker.socket >/dev/null 2>&1 || true
    changed+=("disabled docker.service (the tests start their own dockerd)")
  fi
  if [[ " ${missing[*]} " == *" etcd-server "* ]] && [ -d /run/systemd/system ]; then
    systemctl disable etcd.service >/dev/null 2>&1 || true
    changed+=("disabled etcd.service (the tests start their own etcd)")
  fi
  changed+=("installed ${missing[*]}")
fi

# Rootless tests run as this ordinary user, inside user namespaces it makes.
if ! id tapnettest >/dev/null 2>&1; then
  useradd -m -s /bin/bash tapnettest
  changed+=("created the user tapnettest")
fi
# Its subordinate ids, which rootless Docker's RootlessKit maps (useradd
# adds them on Debian 12; an older user may lack them).
for f in subuid subgid; do
  if ! grep -q '^tapnettest:' "/etc/$f" 2>/dev/null; then
    echo "tapnettest:100000:65536" >>"/etc/$f"
    changed+=("added tapnettest:100000:65536 to /etc/$f")
  fi
done

# Debian's usual mode; lets an ordinary user create TAPs in its own
# user+net namespace (README, "Rootless").
if [ ! -c /dev/net/tun ]; then
  echo "scripts/test.sh: /dev/net/tun is missing (load the tun module: modprobe tun)" >&2
  exit 2
fi
mode=$(stat -c %a /dev/net/tun)
if [ "$mode" != 666 ]; then
  chmod 0666 /dev/net/tun
  changed+=("/dev/net/tun mode $mode -> 666")
fi

summary="test.sh: ${#PACKAGES[@]} packages present; $(
  if [ ${#changed[@]} -eq 0 ]; then echo "nothing changed"; else
    printf '%s; ' "${changed[@]}" | sed 's/; $//'; fi
)"
echo "$summary"

# Under sudo, the Rust toolchain is usually the invoking user's (rustup in
# ~/.cargo, not on root's PATH): use it, and build as that user first so
# that target/ and ~/.cargo stay theirs; the tests then run as root.
if [ -n "${SUDO_USER:-}" ] && [ "$SUDO_USER" != root ] &&
  [ "$(stat -c %U .)" = "$SUDO_USER" ]; then
  home=$(getent passwd "$SUDO_USER" | cut -d: -f6)
  [ -d "$home/.cargo" ] && export CARGO_HOME="$home/.cargo" PATH="$home/.cargo/bin:$PATH"
  [ -d "$home/.rustup" ] && export RUSTUP_HOME="$home/.rustup"
  command -v cargo >/dev/null || { echo "scripts/test.sh: cargo not found (neither on root's PATH nor in ~$SUDO_USER/.cargo/bin)" >&2; exit 2; }
  setpriv --reuid="$SUDO_USER" --regid="$(id -g "$SUDO_USER")" --init-groups \
    env HOME="$home" cargo test --workspace --release --no-run "$@"
fi
command -v cargo >/dev/null || { echo "scripts/test.sh: cargo not found on PATH (install the Rust toolchain)" >&2; exit 2; }

status=0
cargo test --workspace --release "$@" || status=$?
echo "$summary"
echo "test.sh: cargo test --workspace --release exited with $status"
exit "$status"
