"""Ports on 127.0.0.1: free ones to listen on, closed ones to be refused by."""
from __future__ import annotations

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
