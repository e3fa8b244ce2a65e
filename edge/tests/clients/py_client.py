"""An independent WebSocket client (Python `websockets`): subscribes with the token in the
query, as a browser would, prints the first cue as one JSON line and exits."""
import asyncio
import json
import sys

import websockets


async def main(url: str) -> None:
    async with websockets.connect(url, open_timeout=5) as ws:
        msg = await asyncio.wait_for(ws.recv(), timeout=10)
        cue = json.loads(msg)
        assert set(cue) == {"event", "key", "seq", "ts"}, cue
        print(json.dumps(cue))


asyncio.run(main(sys.argv[1]))
