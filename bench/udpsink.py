# bench/udp.sh --reverse's receiver, on "the host": binds 127.0.0.1:PORT
# (with UDP_GRO when the second argument is "gro"), and for each burst
# (datagrams until 2 s pass without one) prints "N Gbit/s" on stdout, the
# rate between the burst's first and last datagram.
#   usage: python3 bench/udpsink.py PORT gro|plain
import socket
import sys
import time

UDP_GRO = 104
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
if sys.argv[2] == "gro":
    s.setsockopt(socket.SOL_UDP, UDP_GRO, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
buf = bytearray(65536)
while True:
    s.settimeout(None)
    n = s.recv_into(buf)
    t0 = t1 = time.time()
    s.settimeout(2)
    try:
        while True:
            n += s.recv_into(buf)
            t1 = time.time()
    except socket.timeout:
        pass
    if t1 > t0:
        print("%.2f Gbit/s" % (n * 8 / (t1 - t0) / 1e9), flush=True)
    else:
        print("no data", flush=True)
