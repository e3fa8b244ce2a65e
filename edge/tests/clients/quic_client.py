"""An independent QUIC client (Python `aioquic`, not quinn) for the `cue/1` device protocol.

Usage: quic_client.py HOST PORT SHA256_HEX HELLO_JSON CUES

Connects with ALPN cue/1 and TLS 1.3, trusts the edge's self-signed certificate only if its
SHA-256 fingerprint (of the DER certificate) is SHA256_HEX, opens one bidirectional stream,
writes HELLO_JSON and a newline, prints the answer line, then prints CUES cues as JSON lines
(decoding length-prefixed binary records when the hello asks for format=binary) and exits.
If the answer is a refusal it prints it and exits 0 after the edge closes the connection,
printing the close as {"closed":CODE,"reason":"..."}.
"""
import asyncio
import json
import ssl
import struct
import sys

from aioquic.asyncio import QuicConnectionProtocol, connect
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, StreamDataReceived
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding


class CueClient(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.data = asyncio.Queue()

    def quic_event_received(self, event):
        if isinstance(event, StreamDataReceived):
            self.data.put_nowait(event.data)
            if event.end_stream:
                self.data.put_nowait(None)
        elif isinstance(event, ConnectionTerminated):
            self.data.put_nowait(("closed", event.error_code, event.reason_phrase))


def decode_binary(rec: bytes) -> dict:
    # version 1, event, key, seq, ts (docs/protocol.md)
    assert rec[0] == 1, rec
    e = rec[1]
    event = rec[2 : 2 + e].decode()
    k = rec[2 + e]
    key = rec[3 + e : 3 + e + k].decode()
    seq, ts = struct.unpack(">QQ", rec[3 + e + k : 19 + e + k])
    assert len(rec) == 19 + e + k
    return {"event": event, "key": key, "seq": seq, "ts": ts}


async def main(host: str, port: int, fingerprint: str, hello: str, cues: int) -> None:
    config = QuicConfiguration(is_client=True, alpn_protocols=["cue/1"])
    # Trust by fingerprint, checked below, instead of by a CA.
    config.verify_mode = ssl.CERT_NONE
    binary = json.loads(hello).get("format") == "binary"
    async with connect(host, port, configuration=config, create_protocol=CueClient) as client:
        cert = client._quic.tls._peer_certificate
        got = cert.fingerprint(hashes.SHA256()).hex()
        if got != fingerprint.lower():
            raise SystemExit(f"certificate fingerprint {got} is not the pinned {fingerprint}")
        sid = client._quic.get_next_available_stream_id()
        client._quic.send_stream_data(sid, hello.encode() + b"\n", end_stream=False)
        client.transmit()
        buf = b""
        answered = refused = False
        seen = 0
        while True:
            item = await asyncio.wait_for(client.data.get(), timeout=15)
            if isinstance(item, tuple):
                print(json.dumps({"closed": item[1], "reason": item[2]}), flush=True)
                return
            if item is None:
                continue  # the edge finished the stream; its CONNECTION_CLOSE follows
            buf += item
            if not answered:
                if b"\n" not in buf:
                    continue
                line, buf = buf.split(b"\n", 1)
                print(line.decode(), flush=True)
                answered = True
                refused = not json.loads(line)["ok"]
            if refused:
                continue
            while seen < cues:
                if binary:
                    if len(buf) < 2:
                        break
                    (n,) = struct.unpack(">H", buf[:2])
                    if len(buf) < 2 + n:
                        break
                    cue, buf = decode_binary(buf[2 : 2 + n]), buf[2 + n :]
                else:
                    if b"\n" not in buf:
                        break
                    line, buf = buf.split(b"\n", 1)
                    cue = json.loads(line)
                    assert set(cue) == {"event", "key", "seq", "ts"}, cue
                print(json.dumps(cue), flush=True)
                seen += 1
            if seen >= cues:
                return


asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])))
