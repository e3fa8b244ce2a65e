"""An independent wss:// client (Python `websockets`) that trusts the edge's self-signed
certificate by its SHA-256 fingerprint: the TLS handshake does not verify a CA chain, and the
client refuses to go on unless the certificate it got hashes to the pinned fingerprint.

Usage: wss_client.py URL SHA256_HEX CUES  (prints CUES cues as JSON lines)
"""
import asyncio
import hashlib
import json
import ssl
import sys

import websockets


async def main(url: str, fingerprint: str, cues: int) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # pinned below instead
    async with websockets.connect(url, ssl=ctx, open_timeout=5) as ws:
        der = ws.transport.get_extra_info("ssl_object").getpeercert(binary_form=True)
        got = hashlib.sha256(der).hexdigest()
        if got != fingerprint.lower():
            raise SystemExit(f"certificate fingerprint {got} is not the pinned {fingerprint}")
        for _ in range(cues):
            msg = await asyncio.wait_for(ws.recv(), timeout=10)
            cue = json.loads(msg)
            assert set(cue) == {"event", "key", "seq", "ts"}, cue
            print(json.dumps(cue), flush=True)


asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
