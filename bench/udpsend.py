# bench/udp.sh's sender, on "the host": on "go SECS" from a client it
# sends that client datagrams of 1400 bytes for SECS seconds in 64 KiB
# UDP_SEGMENT writes (46 datagrams each; "go1 SECS": one datagram a
# write). A write the kernel refuses (a full buffer) is skipped: what
# counts is what the receiver gets.
# With --to (bench/udp.sh --reverse, in the container), it sends to
# ADDR:PORT itself for SECS seconds, segmented ("gso") or not ("plain").
#   usage: python3 bench/udpsend.py PORT   (binds 127.0.0.1:PORT)
#          python3 bench/udpsend.py --to ADDR PORT SECS gso|plain
import socket
import sys
import time

UDP_SEGMENT = 103
SEG = 1400
chunk = bytes(i % 251 for i in range(SEG * 46))


def blast(s, a, secs, gso):
    s.setsockopt(socket.SOL_UDP, UDP_SEGMENT, SEG if gso else 0)
    end = time.time() + secs
    sent = 0
    while time.time() < end:
        for _ in range(64):
            try:
                if gso:
                    s.sendto(chunk, a)
                else:
                    for i in range(0, len(chunk), SEG):
                        s.sendto(chunk[i:i + SEG], a)
                sent += len(chunk)
            except OSError:
                pass
    return sent


s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
if sys.argv[1] == "--to":
    a = (sys.argv[2], int(sys.argv[3]))
    sent = blast(s, a, float(sys.argv[4]), sys.argv[5] == "gso")
    print("sent", sent, "bytes to", a, file=sys.stderr, flush=True)
    sys.exit(0)
s.bind(("127.0.0.1", int(sys.argv[1])))
while True:
    m, a = s.recvfrom(100)
    try:
        mode, secs = m.split()[0], float(m.split()[1])
    except (IndexError, ValueError):
        continue
    sent = blast(s, a, secs, mode == b"go")
    print("sent", sent, "bytes to", a, file=sys.stderr, flush=True)
