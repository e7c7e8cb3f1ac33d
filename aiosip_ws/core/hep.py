"""HEP version 3 (the Homer Encapsulation Protocol, also called EEP), as data.

A HEP packet carries one captured message and what a capture agent knows of it, for a
collector (Homer's heplify-server, sngrep as a HEP listener) to store and show.  It is
``HEP3``, the packet's total length (16 bits, network order), then chunks: a vendor id
(0: generic), a type, the chunk's length with its 6-byte header, and the value.

The generic chunk types used here:

====  ===============================  ==================================================
type  what                             value
====  ===============================  ==================================================
1     IP protocol family               8 bits: 2 (IPv4) or 10 (IPv6)
2     IP protocol                      8 bits: 6 (TCP, also WebSocket and TLS) or 17 (UDP)
3, 4  IPv4 source, destination         4 bytes
5, 6  IPv6 source, destination         16 bytes
7, 8  source, destination port         16 bits
9     timestamp, seconds               32 bits
10    timestamp, microseconds          32 bits
11    protocol type                    8 bits: 1 (SIP)
12    capture agent id                 32 bits
14    authentication key               text
15    payload                          the captured bytes
17    correlation id                   text (a SIP message's Call-ID)
19    node name                        text
====  ===============================  ==================================================

:func:`encode` builds a packet and :func:`decode` reads one; both raise
:class:`~aiosip_ws.errors.HepError`.  No I/O here: :mod:`aiosip_ws.transport.hep` sends.
"""
from __future__ import annotations

import functools
import ipaddress
import struct
from dataclasses import dataclass

from ..errors import HepError
from .grammar import ip_of

__all__ = ['HepPacket', 'encode', 'encode_message', 'decode', 'split_stream', 'MAX_PACKET', 'PROTO_SIP',
           'IPPROTO_TCP', 'IPPROTO_UDP']

MAGIC = b'HEP3'
#: the largest packet: its length field has 16 bits
MAX_PACKET = 0xFFFF
PROTO_SIP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
_AF_INET, _AF_INET6 = 2, 10

_CHUNK = struct.Struct('!HHH')


def _u8(kind: int, value: int) -> bytes:
    return _CHUNK.pack(0, kind, 7) + bytes((value,))


def _u16(kind: int, value: int) -> bytes:
    return _CHUNK.pack(0, kind, 8) + value.to_bytes(2, 'big')


def _u32(kind: int, value: int) -> bytes:
    return _CHUNK.pack(0, kind, 10) + value.to_bytes(4, 'big')


def _raw(kind: int, value: bytes) -> bytes:
    if len(value) + 6 > MAX_PACKET:
        raise HepError('a HEP chunk of %d bytes does not fit a packet' % len(value))
    return _CHUNK.pack(0, kind, len(value) + 6) + value


@dataclass(frozen=True)
class HepPacket:
    """One captured SIP message: who sent it to whom, over what, when, and its bytes."""

    source: tuple[str, int]
    destination: tuple[str, int]
    #: IPPROTO_TCP (WebSocket, TCP, TLS) or IPPROTO_UDP
    protocol: int
    #: seconds since the epoch (the capture's time)
    time: float
    payload: bytes
    capture_id: int = 0
    password: str | None = None
    correlation_id: str | None = None
    node: str | None = None
    payload_type: int = PROTO_SIP


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ip_of(text)
    except ValueError:
        raise HepError('HEP needs IP addresses, not %r' % text[:60]) from None


@functools.lru_cache(maxsize=4096)
def _addresses(source: str, destination: str) -> bytes:
    """The family chunk and the two address chunks (a capture's addresses repeat: they
    are parsed once)."""
    src, dst = _address(source), _address(destination)
    if src.version != dst.version:
        raise HepError('HEP needs one address family: %s and %s' % (src, dst))
    v4 = src.version == 4
    return (_u8(1, _AF_INET if v4 else _AF_INET6) + _raw(3 if v4 else 5, src.packed)
            + _raw(4 if v4 else 6, dst.packed))


#: protocol, ports, seconds, microseconds, protocol type, capture id: chunks 2, 7-12
_FIXED = struct.Struct('!HHHB' 'HHHH' 'HHHH' 'HHHI' 'HHHI' 'HHHB' 'HHHI')


def encode(packet: HepPacket) -> bytes:
    """The bytes of ``packet``; :class:`HepError` when an address is not an IP literal of
    one family, a port or the capture id is out of range, or the packet would pass
    :data:`MAX_PACKET` bytes (a message too large for HEP is not sent: count it)."""
    return encode_message(packet.source, packet.destination, packet.protocol, packet.time,
                          packet.payload, capture_id=packet.capture_id,
                          password=packet.password, correlation_id=packet.correlation_id,
                          node=packet.node, payload_type=packet.payload_type)


def encode_message(source: tuple[str, int], destination: tuple[str, int], protocol: int,
                   time: float, payload: bytes, *, capture_id: int = 0,
                   password: str | None = None, correlation_id: str | None = None,
                   node: str | None = None, payload_type: int = PROTO_SIP) -> bytes:
    """:func:`encode` of the packet these fields make, without making it."""
    if not (0 <= source[1] <= 0xFFFF and 0 <= destination[1] <= 0xFFFF):
        raise HepError('port %d or %d is out of range' % (source[1], destination[1]))
    if not 0 <= capture_id <= 0xFFFFFFFF:
        raise HepError('the capture agent id %d is not a 32-bit number' % capture_id)
    seconds = int(time)
    micros = min(int(round((time - seconds) * 1e6)), 999999)
    chunks = [_addresses(source[0], destination[0]),
              _FIXED.pack(0, 2, 7, protocol, 0, 7, 8, source[1], 0, 8, 8, destination[1],
                          0, 9, 10, seconds, 0, 10, 10, micros, 0, 11, 7, payload_type,
                          0, 12, 10, capture_id)]
    if password:
        chunks.append(_raw(14, password.encode('utf-8')))
    if correlation_id:
        chunks.append(_raw(17, correlation_id.encode('utf-8', 'surrogateescape')))
    if node:
        chunks.append(_raw(19, node.encode('utf-8')))
    chunks.append(_raw(15, payload))
    size = 6 + sum(len(chunk) for chunk in chunks)
    if size > MAX_PACKET:
        raise HepError('a HEP packet of %d bytes is larger than %d' % (size, MAX_PACKET))
    return MAGIC + size.to_bytes(2, 'big') + b''.join(chunks)


def decode(data: bytes) -> HepPacket:
    """The packet ``data`` holds (exactly one); :class:`HepError` for anything else, or
    for a packet without addresses, ports or payload."""
    if data[:4] != MAGIC:
        raise HepError('not a HEP3 packet (it starts %r)' % data[:4])
    if len(data) < 6 or int.from_bytes(data[4:6], 'big') != len(data):
        raise HepError('the HEP3 length field does not match the %d bytes' % len(data))
    values: dict[int, bytes] = {}
    at = 6
    while at < len(data):
        if at + 6 > len(data):
            raise HepError('a HEP chunk header is cut at byte %d' % at)
        vendor, kind, size = _CHUNK.unpack_from(data, at)
        if size < 6 or at + size > len(data):
            raise HepError('HEP chunk %d has a bad length %d' % (kind, size))
        if vendor == 0:
            values[kind] = data[at + 6:at + size]
        at += size
    try:
        family = values[1][0]
        protocol = values[2][0]
        if family == _AF_INET:
            source, destination = values[3], values[4]
        elif family == _AF_INET6:
            source, destination = values[5], values[6]
        else:
            raise HepError('HEP address family %d is neither IPv4 nor IPv6' % family)
        text = (str(ipaddress.ip_address(source)), str(ipaddress.ip_address(destination)))
        ports = (int.from_bytes(values[7], 'big'), int.from_bytes(values[8], 'big'))
        seconds = int.from_bytes(values[9], 'big')
        micros = int.from_bytes(values.get(10, b'\0'), 'big')
        payload = values[15]
    except (KeyError, IndexError, ValueError) as exc:
        raise HepError('a HEP packet without a usable chunk: %s' % exc) from None

    def text_of(kind: int) -> str | None:
        value = values.get(kind)
        return None if value is None else value.decode('utf-8', 'surrogateescape')
    return HepPacket(source=(text[0], ports[0]), destination=(text[1], ports[1]),
                     protocol=protocol, time=seconds + micros / 1e6, payload=payload,
                     capture_id=int.from_bytes(values.get(12, b'\0'), 'big'),
                     password=text_of(14), correlation_id=text_of(17), node=text_of(19),
                     payload_type=values.get(11, b'\1')[0])


def split_stream(buffer: bytearray) -> list[bytes]:
    """Take the whole packets off the front of ``buffer`` (HEP over TCP: packets back to
    back); what is left is the start of the next.  :class:`HepError` when the stream is
    not HEP."""
    packets = []
    while len(buffer) >= 6:
        if buffer[:4] != MAGIC:
            raise HepError('the HEP stream lost its framing (%r)' % bytes(buffer[:4]))
        size = int.from_bytes(buffer[4:6], 'big')
        if size < 6:
            raise HepError('a HEP packet length of %d' % size)
        if len(buffer) < size:
            break
        packets.append(bytes(buffer[:size]))
        del buffer[:size]
    return packets
