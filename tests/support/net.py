"""Ports on 127.0.0.1: free ones to listen on, closed ones to be refused by; sockets in
the private network namespace of another process (its loopback is not ours)."""
from __future__ import annotations

import collections
import contextlib
import ctypes
import socket
import threading

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


#: setns(2)'s flag for a network namespace
CLONE_NEWNET = 0x40000000


def netns_socket(pid: int, kind: int = socket.SOCK_DGRAM,
                 connect: tuple[str, int] | None = None) -> socket.socket:
    """An IPv4 socket in the network namespace of process ``pid`` (made by a thread that
    enters it: a socket stays in the namespace it was made in), connected to ``connect``
    there if given, non-blocking."""
    made: list[socket.socket | BaseException] = []

    def make() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            with open('/proc/%d/ns/net' % pid) as namespace:
                if libc.setns(namespace.fileno(), CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), 'setns into the network of %d' % pid)
            sock = socket.socket(socket.AF_INET, kind)
            if connect is not None:
                sock.settimeout(5)
                sock.connect(connect)
            sock.setblocking(False)
            made.append(sock)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            made.append(exc)
    thread = threading.Thread(target=make)   # the thread ends: the namespace goes with it
    thread.start()
    thread.join()
    if isinstance(made[0], BaseException):
        raise made[0]
    return made[0]


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


#: header fields an HTTP/1.1 message may carry once at the most: a client that keeps one of
#: two values (as the suite's helper once did) hides what Go's, nginx's and Prometheus's refuse
SINGLE_FIELDS = ('content-length', 'content-type', 'date', 'transfer-encoding')


def header_counts(raw: bytes) -> collections.Counter[str]:
    """How often each header name (lower-cased) stands in the head of ``raw``, an HTTP
    message as it came off the wire."""
    head = raw.split(b'\r\n\r\n', 1)[0].decode('latin-1')
    return collections.Counter(line.split(':', 1)[0].strip().lower()
                               for line in head.split('\r\n')[1:] if ':' in line)


async def http_request(port: int, path: str, *, method: str = 'GET', host: str = HOST,
                       source: str | None = None, headers: tuple[str, ...] = (),
                       timeout: float = 5.0, ssl=None) -> tuple[int, dict[str, str], bytes, bytes]:
    """One HTTP/1.1 request on a new connection (HTTPS with an ``ssl`` context), the answer
    parsed by h11, a strict parser: (status, headers lower-cased, body, the raw bytes read).
    An answer with a header of SINGLE_FIELDS twice fails the test, even when h11 lets it
    pass (it merges equal Content-Lengths and accepts two Content-Types)."""
    import asyncio

    import h11
    reader, writer = await asyncio.wait_for(asyncio.open_connection(
        host, port, local_addr=(source, 0) if source else None, ssl=ssl), timeout)
    try:
        client = h11.Connection(h11.CLIENT)
        fields = [('Host', '%s:%d' % (host, port))]
        fields += [tuple(part.strip() for part in line.split(':', 1)) for line in headers]
        writer.write(client.send(h11.Request(method=method, target=path, headers=fields))
                     + client.send(h11.EndOfMessage()))
        raw = bytearray()
        response, body = None, bytearray()
        while True:
            event = client.next_event()
            if event is h11.NEED_DATA:
                chunk = await asyncio.wait_for(reader.read(65536), timeout)
                raw += chunk
                client.receive_data(chunk)
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                break
        assert response is not None, 'no HTTP answer from %s:%d%s' % (host, port, path)
        twice = {name: n for name, n in header_counts(bytes(raw)).items()
                 if name in SINGLE_FIELDS and n > 1}
        assert not twice, 'HTTP answer with header fields given more than once: %s\n%s' % (
            twice, bytes(raw).split(b'\r\n\r\n', 1)[0].decode('latin-1'))
        names = {name.decode().lower(): value.decode('latin-1') for name, value in response.headers}
        return response.status_code, names, bytes(body), bytes(raw)
    finally:
        writer.close()                 # and closed now: the caller may block its loop next
        with contextlib.suppress(OSError, asyncio.TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), timeout)


async def http_get(port: int, path: str, *, host: str = HOST, source: str | None = None,
                   headers: tuple[str, ...] = (), timeout: float = 5.0,
                   ssl=None) -> tuple[int, dict[str, str], bytes]:
    """One plain HTTP/1.1 GET (see :func:`http_request`): (status, headers lower-cased, body)."""
    status, fields, body, _ = await http_request(port, path, host=host, source=source,
                                                 headers=headers, timeout=timeout, ssl=ssl)
    return status, fields, body
