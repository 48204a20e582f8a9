# The client of the connection-rate benches (connrate.sh, conntime.sh,
# profile.sh conn): for SECS seconds, one connection after another
# connects, sends a byte, reads it back and closes with a reset (SO_LINGER
# 0: no TIME_WAIT pile-up). Prints "CONNECTIONS-PER-SECOND FAILURES".
#   usage: python3 bench/connclient.py HOST PORT SECS
import socket, sys, time
host, port, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
n, fails, end = 0, 0, time.monotonic() + secs
while time.monotonic() < end:
    try:
        s = socket.create_connection((host, port), timeout=5)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        s.sendall(b"x")
        if s.recv(1) == b"x":
            n += 1
        s.close()
    except OSError:
        fails += 1
print("%.0f %d" % (n / secs, fails))
