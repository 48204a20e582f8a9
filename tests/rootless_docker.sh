#!/usr/bin/env bash
# Run by tests/docker.rs as an ordinary user (no capabilities): rootless
# Docker (Debian's dockerd-rootless.sh: dockerd under RootlessKit, in a user,
# mount and network namespace of its own) uses a rootless tapnet daemon as
# its network driver "tapnet", with both at their defaults: tapnet serves the
# plugin on $XDG_RUNTIME_DIR/tapnet/docker-plugin.sock and links it into
# dockerd's private /run/docker/plugins. Two containers on a `-d tapnet`
# network ping each other by name, a published port answers on this
# namespace's loopback (where a rootless user's ports belong), removal
# leaves nothing in tapnet. As root the test runs this in a private network
# namespace (lo up, with 192.0.2.10 too: a client address that is not
# 127.0.0.1), entered with nsenter so that /sys keeps its cgroup
# mounts. Needs TAPNET_BIN and a private $WORK (also HOME and
# XDG_RUNTIME_DIR). Prints "ROOTLESS DOCKER OK" at the end.
set -euo pipefail
exec 9>"$WORK/trace"
BASH_XTRACEFD=9
set -x
T=$TAPNET_BIN
export DOCKER_HOST="unix://$XDG_RUNTIME_DIR/docker.sock" DOCKER_CONFIG="$WORK/docker-config"
TN="" DOCKERD=""
cleanup() {
  set +e
  if [ -n "$DOCKERD" ]; then
    ids=$(docker ps -aq 2>/dev/null)
    [ -z "$ids" ] || docker rm -f $ids >/dev/null 2>&1
    docker network rm rn >/dev/null 2>&1
    # RootlessKit passes SIGTERM on to dockerd, which stops containerd.
    kill "$DOCKERD" 2>/dev/null
    for _ in $(seq 200); do kill -0 "$DOCKERD" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$DOCKERD" 2>/dev/null
    wait "$DOCKERD" 2>/dev/null
  fi
  [ -z "$TN" ] || { kill "$TN" 2>/dev/null; wait "$TN" 2>/dev/null; }
}
trap cleanup EXIT
fail() {
  echo "FAIL: $*" >&2
  echo "--- tapnet log" >&2; tail -30 "$WORK/tapnet.log" >&2
  echo "--- dockerd log" >&2; grep -v level=debug "$WORK/dockerd.log" | tail -30 >&2
  exit 1
}
[ "$(id -u)" != 0 ] || fail "must run as an ordinary user"
for t in rootlesskit newuidmap slirp4netns docker curl; do
  command -v $t >/dev/null || fail "missing $t (sudo ./scripts/test.sh installs it)"
done
grep -q "^$(id -un):" /etc/subuid || fail "no /etc/subuid entry for $(id -un)"

# A web server that also tells the client's address (CGI's REMOTE_ADDR).
CGI='mkdir -p /www/cgi-bin && printf "#!/bin/sh\necho Content-Type: text/plain\necho\necho \$REMOTE_ADDR\n" >/www/cgi-bin/ip && chmod +x /www/cgi-bin/ip && echo hello-rootless >/www/index.html && exec httpd -f -p 80 -h /www'

# tapnet first, with every default (socket, state, plugin socket).
"$T" daemon >"$WORK/tapnet.log" 2>&1 &
TN=$!
for _ in $(seq 100); do "$T" network ls >/dev/null 2>&1 && break; sleep 0.1; done
[ -S "$XDG_RUNTIME_DIR/tapnet/docker-plugin.sock" ] || fail "no plugin socket at the rootless default"

/usr/share/docker.io/contrib/dockerd-rootless.sh --storage-driver vfs \
  --data-root "$WORK/docker-data" --exec-root "$WORK/docker-exec" >"$WORK/dockerd.log" 2>&1 &
DOCKERD=$!
for _ in $(seq 600); do docker info >/dev/null 2>&1 && break; sleep 0.1; done
docker info >/dev/null 2>&1 || fail "rootless dockerd did not start"

# The image: busybox and its applet links.
mkdir -p "$WORK/img/bin"
cp /bin/busybox "$WORK/img/bin/"
for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -s busybox "$WORK/img/bin/$a"; done
tar -C "$WORK/img" -cf "$WORK/img.tar" .
docker import -c 'ENV PATH=/bin' "$WORK/img.tar" bb >/dev/null

# tapnet found dockerd and linked its plugin socket in.
for _ in $(seq 100); do grep -q 'finds driver "tapnet"' "$WORK/tapnet.log" && break; sleep 0.1; done
grep -q 'finds driver "tapnet"' "$WORK/tapnet.log" || fail "tapnet did not link its plugin into dockerd"

docker network create -d tapnet --subnet 10.77.0.0/24 rn >/dev/null || fail "network create -d tapnet"
NID=$(docker network inspect -f '{{.Id}}' rn)
ls=$("$T" network ls)
[[ "$ls" == *"docker-${NID:0:12}"* ]] || fail "tapnet network ls lacks docker-${NID:0:12}: $ls"

docker run -d --name c1 --network rn bb sleep 600 >/dev/null || fail "run c1"
docker run -d --name c2 --network rn -p 18080:80 bb sh -c "$CGI" >/dev/null ||
  fail "run c2 with a published port"
ip1=$(docker inspect -f '{{(index .NetworkSettings.Networks "rn").IPAddress}}' c1)
[[ "$ip1" == 10.77.0.* ]] || fail "c1 address $ip1"

# Container to container across tapnet's switch, by Docker's DNS name.
docker exec c1 ping -c 2 -W 5 c2 >/dev/null || fail "c1 cannot ping c2 by name"
out=$(docker exec c1 wget -q -O - http://c2/ 2>&1) || true
[ "$out" = hello-rootless ] || fail "c1 -> http://c2/: $out"

# The published port, bound in tapnet's (this) namespace, not RootlessKit's.
out=$(curl -s -m 10 http://127.0.0.1:18080/) || true
[ "$out" = hello-rootless ] || fail "published port 127.0.0.1:18080: $out"
# A client on another address of this namespace (192.0.2.10, on lo) is
# seen by the container with its own address.
# (busybox httpd listens on [::]: an IPv4 client reads [::ffff:A.B.C.D].)
out=$(curl -s -m 10 http://192.0.2.10:18080/cgi-bin/ip) || true
out=${out#"[::ffff:"}
out=${out%"]"}
[ "$out" = 192.0.2.10 ] || fail "the container saw the client as '$out', not 192.0.2.10"

# A kill -9 and restart of tapnet: the network, the endpoints and traffic
# come back (Docker never replays CreateNetwork).
kill -9 "$TN"; wait "$TN" 2>/dev/null || true
"$T" daemon >>"$WORK/tapnet.log" 2>&1 &
TN=$!
for _ in $(seq 100); do "$T" network ls >/dev/null 2>&1 && break; sleep 0.1; done
docker exec c1 ping -c 2 -W 5 c2 >/dev/null || fail "c1 cannot ping c2 after tapnet's restart"
out=$(curl -s -m 10 http://127.0.0.1:18080/) || true
[ "$out" = hello-rootless ] || fail "published port after tapnet's restart: $out"

# Endpoints in tapnet's view, and gone with the containers and network.
ins=$("$T" network inspect "docker-${NID:0:12}")
[[ "$ins" == *docker/* ]] || fail "tapnet network inspect shows no Docker endpoint: $ins"
docker rm -f c1 c2 >/dev/null
docker network rm rn >/dev/null
ls=$("$T" network ls)
[[ "$ls" != *"docker-${NID:0:12}"* ]] || fail "network still in tapnet after docker network rm: $ls"
if curl -s -m 3 http://127.0.0.1:18080/ >/dev/null; then fail "published port still open after rm"; fi

echo "ROOTLESS DOCKER OK"
