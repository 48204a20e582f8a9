# The echo server of the connection-rate benches (connrate.sh, conntime.sh,
# profile.sh conn): reads one byte, writes it back, closes.
#   usage: python3 bench/echo.py ADDRESS PORT
import asyncio, sys
async def serve(r, w):
    d = await r.read(1)
    w.write(d); await w.drain(); w.close()
async def main():
    s = await asyncio.start_server(serve, sys.argv[1], int(sys.argv[2]), backlog=4096, reuse_address=True)
    await s.serve_forever()
asyncio.run(main())
