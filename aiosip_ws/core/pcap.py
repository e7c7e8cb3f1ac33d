"""A pcap file of SIP messages, as data: what ``aiosip-ws trace --pcap`` writes.

Each message becomes one record: an IPv4 or IPv6 header and a UDP header (the real
addresses and ports), then the message (link type RAW, 101).  Messages that crossed a
WebSocket, TCP or TLS connection are written as datagrams too, one message each, as
sngrep writes what it receives by HEP: Wireshark and tshark then show each one as SIP
without a TCP stream to reassemble or TLS to decrypt.  A message larger than a datagram
(65,507 bytes) cannot be written: :func:`record` raises :class:`ValueError`.
"""
from __future__ import annotations

import struct

from .capture import ip_of

__all__ = ['file_header', 'record', 'LINKTYPE_RAW', 'MAX_PAYLOAD']

LINKTYPE_RAW = 101
#: the largest message a UDP datagram carries
MAX_PAYLOAD = 65507
_UDP = 17


def file_header(snaplen: int = 65535) -> bytes:
    """The 24-byte pcap file header (microsecond timestamps, native byte order)."""
    return struct.pack('=IHHiIII', 0xA1B2C3D4, 2, 4, 0, 0, snaplen, LINKTYPE_RAW)


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b'\0'
    total = sum(struct.unpack('!%dH' % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return int(~total & 0xFFFF)


def record(time: float, source: tuple[str, int], destination: tuple[str, int],
           payload: bytes) -> bytes:
    """One pcap record: ``payload`` in a UDP datagram from ``source`` to ``destination``
    (IP literals of one family; an IPv4-mapped IPv6 address is written as IPv4) at
    ``time`` (seconds since the epoch).  :class:`ValueError` when it cannot be one."""
    if len(payload) > MAX_PAYLOAD:
        raise ValueError('a message of %d bytes does not fit a datagram' % len(payload))
    src, dst = ip_of(source[0]), ip_of(destination[0])
    if src.version != dst.version:
        raise ValueError('one address family: %s and %s' % (src, dst))
    length = 8 + len(payload)
    udp = struct.pack('!HHHH', source[1], destination[1], length, 0)
    if src.version == 4:
        header = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + length, 0, 0x4000, 64, _UDP, 0,
                             src.packed, dst.packed)
        header = header[:10] + struct.pack('!H', _checksum(header)) + header[12:]
        pseudo = src.packed + dst.packed + struct.pack('!BBH', 0, _UDP, length)
    else:
        header = struct.pack('!IHBB16s16s', 6 << 28, length, _UDP, 64, src.packed, dst.packed)
        pseudo = src.packed + dst.packed + struct.pack('!IxxxB', length, _UDP)
    checksum = _checksum(pseudo + udp + payload) or 0xFFFF
    packet = header + udp[:6] + struct.pack('!H', checksum) + payload
    seconds = int(time)
    micros = min(int(round((time - seconds) * 1e6)), 999999)
    return struct.pack('=IIII', seconds, micros, len(packet), len(packet)) + packet

