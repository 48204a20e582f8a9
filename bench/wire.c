// wire.c: the least a userspace forwarder can do between two containers,
// for bench/wire.sh. Two ports, no switching: every frame read from one
// port is written to the other. Two port kinds:
//   tap IF0 IF1   TAPs with a 12-byte virtio-net header and TSO (as
//                 tapnet's ports), one read and one write per frame
//   pkt IF0 IF1   AF_PACKET sockets on the host ends of two veth pairs,
//                 the same header (PACKET_VNET_HDR_SZ), outgoing frames
//                 ignored, up to 64 frames per recvmmsg and sendmmsg
// After its last frame the forwarder polls for SPIN_US (default 200, as
// tapnet's --busy-poll-us) before it sleeps in poll(2). It prints "ready"
// once its ports are open, and its frame counts on SIGTERM.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef PACKET_VNET_HDR_SZ
#define PACKET_VNET_HDR_SZ 24
#endif
#define BATCH 64
#define FRAME 65600

static volatile long long moved[2];

static void die(const char *what) { perror(what); exit(1); }

static int tap_port(const char *name) {
  int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK), hdr = 12;
  struct ifreq ifr;
  if (fd < 0) die("/dev/net/tun");
  memset(&ifr, 0, sizeof ifr);
  ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
  strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
  if (ioctl(fd, TUNSETIFF, &ifr) < 0) die("TUNSETIFF");
  if (ioctl(fd, TUNSETVNETHDRSZ, &hdr) < 0) die("TUNSETVNETHDRSZ");
  if (ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6) < 0) die("TUNSETOFFLOAD");
  return fd;
}

static int packet_port(const char *name) {
  int fd = socket(AF_PACKET, SOCK_RAW | SOCK_NONBLOCK, htons(ETH_P_ALL));
  int one = 1, hdr = 12, buf = 4 << 20;
  struct sockaddr_ll sll;
  if (fd < 0) die("socket");
  if (setsockopt(fd, SOL_PACKET, PACKET_VNET_HDR_SZ, &hdr, sizeof hdr) < 0) die("PACKET_VNET_HDR_SZ");
  if (setsockopt(fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, &one, sizeof one) < 0) die("PACKET_IGNORE_OUTGOING");
  setsockopt(fd, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof one);
  setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &buf, sizeof buf);
  setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &buf, sizeof buf);
  memset(&sll, 0, sizeof sll);
  sll.sll_family = AF_PACKET;
  sll.sll_protocol = htons(ETH_P_ALL);
  sll.sll_ifindex = (int)if_nametoindex(name);
  if (!sll.sll_ifindex || bind(fd, (struct sockaddr *)&sll, sizeof sll) < 0) die(name);
  return fd;
}

static void report(int sig) {
  char line[64];
  int n = snprintf(line, sizeof line, "frames %lld %lld\n", moved[0], moved[1]);
  (void)sig;
  if (write(2, line, (size_t)n) < 0) _exit(1);
  _exit(0);
}

static long long now_us(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1000000LL + t.tv_nsec / 1000;
}

static char frames[BATCH][FRAME];

// Moves what port `from` holds to port `to`; whether anything moved.
static int pass(int packet, int from, int to, int p) {
  struct mmsghdr mm[BATCH];
  struct iovec iov[BATCH];
  int i, n, off = 0;
  if (!packet) {
    for (i = 0; i < BATCH; i++) {
      ssize_t r = read(from, frames[0], FRAME);
      if (r <= 0) break;
      if (write(to, frames[0], (size_t)r) < 0) { /* dropped, as a full TAP would */ }
      moved[p]++;
    }
    return i > 0;
  }
  memset(mm, 0, sizeof mm);
  for (i = 0; i < BATCH; i++) {
    iov[i].iov_base = frames[i];
    iov[i].iov_len = FRAME;
    mm[i].msg_hdr.msg_iov = &iov[i];
    mm[i].msg_hdr.msg_iovlen = 1;
  }
  n = recvmmsg(from, mm, BATCH, MSG_DONTWAIT, NULL);
  if (n <= 0) return 0;
  for (i = 0; i < n; i++) iov[i].iov_len = mm[i].msg_len;
  while (off < n) {
    int s = sendmmsg(to, mm + off, (unsigned)(n - off), 0);
    if (s <= 0) break;
    off += s;
  }
  moved[p] += n;
  return 1;
}

int main(int argc, char **argv) {
  int packet, fd[2], spin;
  long long last;
  if (argc < 4 || (strcmp(argv[1], "tap") && strcmp(argv[1], "pkt"))) {
    fprintf(stderr, "usage: wire tap|pkt IF0 IF1 [SPIN_US]\n");
    return 2;
  }
  packet = !strcmp(argv[1], "pkt");
  spin = argc > 4 ? atoi(argv[4]) : 200;
  fd[0] = packet ? packet_port(argv[2]) : tap_port(argv[2]);
  fd[1] = packet ? packet_port(argv[3]) : tap_port(argv[3]);
  signal(SIGTERM, report);
  signal(SIGINT, report);
  printf("ready\n");
  fflush(stdout);
  last = now_us();
  for (;;) {
    int any = pass(packet, fd[0], fd[1], 0);
    any |= pass(packet, fd[1], fd[0], 1);
    if (any) {
      last = now_us();
    } else if (now_us() - last >= spin) {
      struct pollfd pf[2] = {{fd[0], POLLIN, 0}, {fd[1], POLLIN, 0}};
      poll(pf, 2, -1);
      last = now_us();
    }
  }
}
