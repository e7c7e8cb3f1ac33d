"""What peers send must not decide how much is logged: malformed messages are rate-limited
warnings with a summary line, and a connection that keeps sending them is closed with 1008
(``max_bad_messages``); everyone else is served as before."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time

from aiosip_ws.transport import websocket
from tests.support.sip import register_request
from tests.support.websocket import Opcode, RawWebSocket, encode_frame

GARBAGE = 'this is not SIP\r\n\r\n'
SUMMARY = re.compile(r'dropped malformed messages: (\d+) similar suppressed in [\d.]+ s')


async def open_raw(url: str) -> RawWebSocket:
    return await RawWebSocket.open(url)


async def registers(url: str, user: str) -> None:
    ws = await open_raw(url)
    try:
        await ws.send_text(register_request(user))
        assert (await ws.recv_text(timeout=5)).startswith('SIP/2.0 200 ')
    finally:
        await ws.close()


def malformed_lines(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith('aiosip_ws')
            and 'malformed' in r.getMessage()]


async def test_a_connection_sending_malformed_messages_is_closed_with_1008(relay, caplog):
    """10,000 unparseable messages in a row on one connection: the 20th (max_bad_messages)
    closes it with 1008 and a reason; the log holds a handful of lines, not 10,000."""
    caplog.set_level(logging.INFO, logger='aiosip_ws')
    server, url = relay
    ws = await open_raw(url)
    started = time.monotonic()
    try:
        frame = encode_frame(Opcode.TEXT, GARBAGE.encode())
        with contextlib.suppress(ConnectionError):
            for _ in range(100):                                  # 10,000 in 100 writes
                ws.writer.write(frame * 100)
                await ws.writer.drain()
        opcode, payload = await ws.recv_frame(timeout=5)
        while opcode != Opcode.CLOSE:
            opcode, payload = await ws.recv_frame(timeout=5)
        assert int.from_bytes(payload[:2], 'big') == 1008
        assert payload[2:].decode() == 'too many malformed SIP messages (20)'
    finally:
        await ws.close()
    assert time.monotonic() - started < 5
    records = malformed_lines(caplog)
    dropped = [r for r in records if 'dropped a malformed message' in r.getMessage()]
    assert len(dropped) == websocket.peer_log.burst == 10
    assert websocket.peer_log.suppressed('dropped malformed messages') == 10   # 20 - 10 logged
    closing = [r.getMessage() for r in caplog.records if 'closing with 1008' in r.getMessage()]
    assert len(closing) == 1 and '20 SIP messages could not be parsed' in closing[0]
    assert len(caplog.records) < 20, [r.getMessage() for r in caplog.records]
    await registers(url, 'alice')                        # the server itself is fine


async def test_a_flood_over_many_connections_is_summarised(relay, caplog, monkeypatch):
    """50 connections send 19 malformed messages each (under the cap): at most 10 lines per
    interval (here 0.5 s instead of 10) and a summary line with the count; the flood
    closes no connection and a REGISTER from another client is answered meanwhile."""
    monkeypatch.setattr(websocket.peer_log, 'interval', 0.5)
    caplog.set_level(logging.INFO, logger='aiosip_ws')
    _, url = relay
    flooders = [await open_raw(url) for _ in range(50)]
    frame = encode_frame(Opcode.TEXT, GARBAGE.encode())
    try:
        for ws in flooders:
            ws.writer.write(frame * 19)
        await asyncio.gather(*(ws.writer.drain() for ws in flooders))
        await registers(url, 'bob')
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while True:                                # every message seen and accounted for
            records = malformed_lines(caplog)
            logged = sum(1 for r in records if 'dropped a malformed message' in r.getMessage())
            suppressed = sum(int(m.group(1)) for r in records
                             for m in [SUMMARY.search(r.getMessage())] if m)
            if logged + suppressed == 50 * 19 or loop.time() > deadline:
                break
            await asyncio.sleep(0.1)
        assert logged + suppressed == 50 * 19, (logged, suppressed)
        assert suppressed > 0
        # per interval: at most 10 lines, then the summary
        times = [r.created for r in records if 'dropped a malformed message' in r.getMessage()]
        assert len(times) <= 10 * (1 + int((max(times) - min(times)) / 0.5) + 1)
        assert len(records) < 60
        for ws in flooders:                                     # still open: ping, pong
            await ws.send_frame(Opcode.PING, b'still there?')
            opcode, payload = await ws.recv_frame(timeout=5)
            while opcode != Opcode.PONG:
                opcode, payload = await ws.recv_frame(timeout=5)
            assert payload == b'still there?'
    finally:
        for ws in flooders:
            await ws.close()
