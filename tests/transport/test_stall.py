"""What the send timeout counts as waiting (transport/stall.py): the transport's own
buffer and the socket's send queue, on asyncio's loop and on uvloop alike (whose
transports do not derive from asyncio.WriteTransport)."""
from __future__ import annotations

import asyncio
import socket

import pytest

from aiosip_ws.transport.stall import unsent


async def _counted() -> tuple[int, int]:
    """A connection to a peer that never reads, 8 MiB written: (unsent, the transport's
    own buffer)."""
    peer = socket.socket()
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    peer.bind(('127.0.0.1', 0))
    peer.listen(1)
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(*peer.getsockname()), 5)
        try:
            writer.write(b'x' * (8 << 20))
            await asyncio.sleep(0.05)
            return unsent(writer.transport), writer.transport.get_write_buffer_size()
        finally:
            writer.transport.abort()
    finally:
        peer.close()


async def test_unsent_counts_the_transport_buffer_and_the_socket_queue():
    total, buffered = await _counted()
    assert buffered > 0 and total > buffered          # the kernel holds some of it too


async def test_unsent_on_uvloop_counts_the_transport_buffer_too():
    uvloop = pytest.importorskip('uvloop')
    total, buffered = await asyncio.get_running_loop().run_in_executor(
        None, uvloop.run, _counted())
    assert buffered > 0 and total > buffered
