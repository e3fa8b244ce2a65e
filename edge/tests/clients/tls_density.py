"""Memory per idle device, plain ws against wss, on one running cue-edge (measurement tool, not a
test). Opens N WebSocket devices over plain TCP, reads the edge's RSS growth, closes them, then
does the same over TLS, and prints one JSON line.

Usage: tls_density.py EDGE_PID WS_ADDR WSS_ADDR N
(start the edge with --no-auth --wss WSS_ADDR; devices subscribe to event `density`)
"""
import asyncio
import json
import ssl
import sys

import websockets


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * 4096


async def hold(url: str, n: int, pid: int, ctx) -> dict:
    before = rss(pid)
    conns = []
    sem = asyncio.Semaphore(200)

    async def one():
        async with sem:
            conns.append(await websockets.connect(url, ssl=ctx, open_timeout=30, ping_interval=None))

    await asyncio.gather(*(one() for _ in range(n)))
    await asyncio.sleep(1.0)
    after = rss(pid)
    for c in conns:
        await c.close()
    await asyncio.sleep(1.0)
    return {"devices": len(conns), "rss_growth": after - before, "bytes_per_conn": (after - before) / max(1, len(conns))}


async def main(pid: int, ws: str, wss: str, n: int) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    plain = await hold(f"ws://{ws}/v1/subscribe?events=density", n, pid, None)
    tls = await hold(f"wss://{wss}/v1/subscribe?events=density", n, pid, ctx)
    print(json.dumps({"ws": plain, "wss": tls}))


asyncio.run(main(int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])))
