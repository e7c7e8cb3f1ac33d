"""Capture files of SIP messages, as data: pcap (``aiosip-ws trace --pcap``) and pcapng
(a call of the console, ``/calls/<Call-ID>.pcap``).

Each message becomes one packet with the real addresses and ports, link type RAW (101:
an IPv4 or IPv6 header first), framed one of two ways:

* **UDP** (:func:`udp_packet`): one datagram per message, whatever transport carried it,
  as sngrep writes what it receives by HEP.  Wireshark and tshark then show every
  message as SIP, with no TCP stream to reassemble and no TLS to decrypt.  A message
  larger than a datagram (65,507 bytes) cannot be written (:class:`ValueError`).
* **TCP** (:class:`TcpFraming`): one segment per message, with sequence and
  acknowledgement numbers that run on per direction of each connection, so that the
  stream reassembles.  A message without ``Content-Length`` (one that came over a
  WebSocket) gets one, since a stream needs it.

In pcapng each packet can carry a comment (serve's console names the real transport
there: ``transport=wss``).
"""
from __future__ import annotations

import struct

from .grammar import ip_of

__all__ = ['file_header', 'record', 'udp_packet', 'TcpFraming', 'with_content_length',
           'pcapng_header', 'pcapng_packet', 'LINKTYPE_RAW', 'MAX_PAYLOAD']

LINKTYPE_RAW = 101
#: the largest message a UDP datagram carries
MAX_PAYLOAD = 65507
_UDP, _TCP = 17, 6


def file_header(snaplen: int = 65535) -> bytes:
    """The 24-byte pcap file header (microsecond timestamps, native byte order)."""
    return struct.pack('=IHHiIII', 0xA1B2C3D4, 2, 4, 0, 0, snaplen, LINKTYPE_RAW)


def record(time: float, source: tuple[str, int], destination: tuple[str, int],
           payload: bytes) -> bytes:
    """One pcap record: ``payload`` in a UDP datagram (:func:`udp_packet`) at ``time``
    (seconds since the epoch)."""
    packet = udp_packet(source, destination, payload)
    seconds, micros = _split(time)
    return struct.pack('=IIII', seconds, micros, len(packet), len(packet)) + packet


def _split(time: float) -> tuple[int, int]:
    seconds = int(time)
    return seconds, min(int(round((time - seconds) * 1e6)), 999999)


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b'\0'
    total = sum(struct.unpack('!%dH' % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return int(~total & 0xFFFF)


def _ip(source: tuple[str, int], destination: tuple[str, int], protocol: int,
        segment: bytes) -> bytes:
    """``segment`` (a UDP or TCP header with a zero checksum, then its payload) in an IP
    packet, its checksum filled in."""
    src, dst = ip_of(source[0]), ip_of(destination[0])
    if src.version != dst.version:
        raise ValueError('one address family: %s and %s' % (src, dst))
    length = len(segment)
    if src.version == 4:
        if length + 20 > 0xFFFF:
            raise ValueError('a message of %d bytes does not fit an IPv4 packet' % length)
        header = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + length, 0, 0x4000, 64, protocol,
                             0, src.packed, dst.packed)
        header = header[:10] + struct.pack('!H', _checksum(header)) + header[12:]
        pseudo = src.packed + dst.packed + struct.pack('!BBH', 0, protocol, length)
    else:
        if length > 0xFFFF:
            raise ValueError('a message of %d bytes does not fit an IPv6 packet' % length)
        header = struct.pack('!IHBB16s16s', 6 << 28, length, protocol, 64, src.packed,
                             dst.packed)
        pseudo = src.packed + dst.packed + struct.pack('!IxxxB', length, protocol)
    at = 6 if protocol == _UDP else 16                  # where the checksum goes
    checksum = _checksum(pseudo + segment)
    if protocol == _UDP and checksum == 0:
        checksum = 0xFFFF
    return header + segment[:at] + struct.pack('!H', checksum) + segment[at + 2:]


def udp_packet(source: tuple[str, int], destination: tuple[str, int],
               payload: bytes) -> bytes:
    """``payload`` in a UDP datagram from ``source`` to ``destination`` (IP literals of
    one family; an IPv4-mapped IPv6 address is written as IPv4).  :class:`ValueError` when
    it cannot be one."""
    if len(payload) > MAX_PAYLOAD:
        raise ValueError('a message of %d bytes does not fit a datagram' % len(payload))
    udp = struct.pack('!HHHH', source[1], destination[1], 8 + len(payload), 0)
    return _ip(source, destination, _UDP, udp + payload)


def with_content_length(message: bytes) -> bytes:
    """``message`` with a ``Content-Length`` header (its body's), when it has none."""
    head, blank, body = message.partition(b'\r\n\r\n')
    if not blank:
        return message
    for line in head.split(b'\r\n')[1:]:
        name = line.partition(b':')[0].strip().lower()
        if name in (b'content-length', b'l'):
            return message
    return head + b'\r\nContent-Length: %d\r\n\r\n' % len(body) + body


class TcpFraming:
    """TCP segments for the messages of a capture: per direction of each connection the
    sequence number runs on from 1 and each segment acknowledges what the other side
    sent so far."""

    def __init__(self) -> None:
        self._next: dict[tuple[tuple[str, int], tuple[str, int]], int] = {}

    def packet(self, source: tuple[str, int], destination: tuple[str, int],
               payload: bytes) -> bytes:
        """The next segment from ``source`` to ``destination`` (``payload`` given a
        Content-Length first when it has none)."""
        payload = with_content_length(payload)
        seq = self._next.get((source, destination), 1)
        ack = self._next.get((destination, source), 1)
        self._next[(source, destination)] = (seq + len(payload)) & 0xFFFFFFFF
        tcp = struct.pack('!HHIIBBHHH', source[1], destination[1], seq, ack, 5 << 4,
                          0x18, 65535, 0, 0)               # PSH, ACK
        return _ip(source, destination, _TCP, tcp + payload)


def _block(kind: int, body: bytes) -> bytes:
    length = 12 + len(body)
    return struct.pack('=II', kind, length) + body + struct.pack('=I', length)


def _pad(data: bytes) -> bytes:
    return data + b'\0' * (-len(data) % 4)


def pcapng_header() -> bytes:
    """A pcapng Section Header Block and one Interface Description Block (raw IP,
    microsecond timestamps)."""
    section = _block(0x0A0D0D0A, struct.pack('=IHHq', 0x1A2B3C4D, 1, 0, -1))
    interface = _block(1, struct.pack('=HHI', LINKTYPE_RAW, 0, 0))
    return section + interface


def pcapng_packet(time: float, packet: bytes, comment: str | None = None) -> bytes:
    """An Enhanced Packet Block of ``packet`` at ``time``, with ``comment`` if given."""
    stamp = int(round(time * 1e6))
    options = b''
    if comment:
        text = comment.encode('utf-8')
        options = struct.pack('=HH', 1, len(text)) + _pad(text) + struct.pack('=HH', 0, 0)
    body = struct.pack('=IIIII', 0, stamp >> 32, stamp & 0xFFFFFFFF, len(packet),
                       len(packet)) + _pad(packet) + options
    return _block(6, body)
