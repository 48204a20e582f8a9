# bench/udp.sh's receiver: asks the sender at ADDR:PORT for SECS seconds
# of datagrams (MODE "go": UDP_SEGMENT runs, "go1": one datagram a
# write), reads until 2 s pass without one (with UDP_GRO when the last
# argument is "gro": runs of datagrams in one read) and prints the rate
# between the first and the last, "N Gbit/s"; exit 1 when none came.
#   usage: python3 bench/udprecv.py ADDR PORT SECS go|go1 gro|plain
import socket
import sys
import time

UDP_GRO = 104
addr, port, secs, mode, gro = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5] == "gro"
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
if gro:
    s.setsockopt(socket.SOL_UDP, UDP_GRO, 1)
s.connect((addr, port))
s.settimeout(2)
s.send(("%s %f" % (mode, secs)).encode())
n = 0
t0 = t1 = None
buf = bytearray(65536)
try:
    while True:
        k = s.recv_into(buf)
        t1 = time.time()
        if t0 is None:
            t0 = t1
        n += k
except socket.timeout:
    pass
if t0 is None or t1 <= t0:
    print("no data")
    sys.exit(1)
print("%.2f Gbit/s" % (n * 8 / (t1 - t0) / 1e9))
