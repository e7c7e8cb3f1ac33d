"""Ports on 127.0.0.1: free ones to listen on, closed ones to be refused by."""
from __future__ import annotations

import contextlib
import socket

#: every test peer listens here only
HOST = '127.0.0.1'


def free_port(host: str = HOST, *, udp: bool = False) -> int:
    """A TCP port on ``host`` that is free right now (with ``udp``, free for UDP as well)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port: int = s.getsockname()[1]
            if not udp:
                return port
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((host, port))
                except OSError:
                    continue
                return port
    raise OSError('no free UDP+TCP port on %s' % host)


def closed_port(host: str = HOST) -> int:
    """A TCP port on ``host`` nobody listens on: connecting to it is refused."""
    return free_port(host)


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    """True when something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


async def http_get(port: int, path: str, *, host: str = HOST, source: str | None = None,
                   headers: tuple[str, ...] = (), timeout: float = 5.0,
                   ssl=None) -> tuple[int, dict[str, str], bytes]:
    """One plain HTTP/1.1 GET on a new connection (HTTPS with an ``ssl`` context):
    (status, headers lower-cased, body)."""
    import asyncio
    reader, writer = await asyncio.wait_for(asyncio.open_connection(
        host, port, local_addr=(source, 0) if source else None, ssl=ssl), timeout)
    try:
        lines = ['GET %s HTTP/1.1' % path, 'Host: %s:%d' % (host, port), *headers, '', '']
        writer.write('\r\n'.join(lines).encode())
        head = await asyncio.wait_for(reader.readuntil(b'\r\n\r\n'), timeout)
        status_line, *header_lines = head.decode('latin-1').split('\r\n')
        fields = {}
        for line in header_lines:
            if ':' in line:
                name, value = line.split(':', 1)
                fields[name.strip().lower()] = value.strip()
        length = int(fields.get('content-length', '0'))
        body = await asyncio.wait_for(reader.readexactly(length), timeout) if length else b''
        return int(status_line.split()[1]), fields, body
    finally:
        writer.close()                 # and closed now: the caller may block its loop next
        with contextlib.suppress(OSError, asyncio.TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), timeout)
