"""HEP v3 as data: what aiosip_ws.core.hep writes, read back chunk by chunk."""
from __future__ import annotations

import struct

import pytest

from aiosip_ws.core.hep import (
    IPPROTO_TCP,
    IPPROTO_UDP,
    MAX_PACKET,
    HepPacket,
    decode,
    encode,
    split_stream,
)
from aiosip_ws.errors import HepError

SIP = b'OPTIONS sip:a@b SIP/2.0\r\nCall-ID: c1\r\n\r\n'


def chunks(data: bytes) -> dict[int, bytes]:
    """Every chunk, read here by hand (the layout, not our decoder)."""
    assert data[:4] == b'HEP3' and struct.unpack('!H', data[4:6])[0] == len(data)
    found, at = {}, 6
    while at < len(data):
        vendor, kind, size = struct.unpack('!HHH', data[at:at + 6])
        assert vendor == 0 and size >= 6
        found[kind] = data[at + 6:at + size]
        at += size
    assert at == len(data)
    return found


def test_an_ipv4_packet_has_every_chunk_a_collector_reads():
    data = encode(HepPacket(('192.0.2.1', 5060), ('198.51.100.2', 443), IPPROTO_TCP,
                            1796644878.25, SIP, capture_id=2001, password='pw',
                            correlation_id='c1', node='edge-1'))
    got = chunks(data)
    assert got[1] == b'\x02' and got[2] == b'\x06'
    assert got[3] == bytes([192, 0, 2, 1]) and got[4] == bytes([198, 51, 100, 2])
    assert got[7] == (5060).to_bytes(2, 'big') and got[8] == (443).to_bytes(2, 'big')
    assert int.from_bytes(got[9], 'big') == 1796644878
    assert int.from_bytes(got[10], 'big') == 250000
    assert got[11] == b'\x01' and int.from_bytes(got[12], 'big') == 2001
    assert got[14] == b'pw' and got[17] == b'c1' and got[19] == b'edge-1' and got[15] == SIP
    assert decode(data) == HepPacket(('192.0.2.1', 5060), ('198.51.100.2', 443), IPPROTO_TCP,
                                     1796644878.25, SIP, capture_id=2001, password='pw',
                                     correlation_id='c1', node='edge-1')


def test_ipv6_and_a_binary_payload_survive_the_round_trip():
    payload = SIP + bytes(range(256))
    packet = HepPacket(('[2001:db8::1]', 5060), ('::1', 5070), IPPROTO_UDP, 12.5, payload)
    data = encode(packet)
    got = chunks(data)
    assert got[1] == b'\x0a' and len(got[5]) == 16 and len(got[6]) == 16 and 3 not in got
    back = decode(data)
    assert back.source == ('2001:db8::1', 5060) and back.destination == ('::1', 5070)
    assert back.payload == payload and back.protocol == IPPROTO_UDP and back.time == 12.5
    assert back.password is None and back.correlation_id is None and back.node is None


def test_an_ipv4_mapped_address_is_written_as_ipv4():
    got = chunks(encode(HepPacket(('::ffff:127.0.0.1', 1), ('127.0.0.1', 2), 6, 0.0, b'')))
    assert got[1] == b'\x02' and got[3] == bytes([127, 0, 0, 1])


def test_what_cannot_be_a_packet_is_refused():
    with pytest.raises(HepError, match='IP addresses'):
        encode(HepPacket(('alice.invalid', 1), ('127.0.0.1', 2), 6, 0.0, b''))
    with pytest.raises(HepError, match='one address family'):
        encode(HepPacket(('::1', 1), ('127.0.0.1', 2), 6, 0.0, b''))
    with pytest.raises(HepError, match='larger than'):
        encode(HepPacket(('::1', 1), ('::1', 2), 6, 0.0, b'x' * (MAX_PACKET - 80)))
    with pytest.raises(HepError, match='out of range'):
        encode(HepPacket(('::1', 70000), ('::1', 2), 6, 0.0, b''))
    with pytest.raises(HepError, match='capture agent id'):
        encode(HepPacket(('::1', 1), ('::1', 2), 6, 0.0, b'', capture_id=1 << 32))
    good = encode(HepPacket(('::1', 1), ('::1', 2), 6, 0.0, b'abc'))
    for bad, why in ((b'HEP2' + good[4:], 'not a HEP3'), (good[:-1], 'length'),
                     (good[:6] + good[6:], None)):
        if why is None:
            assert decode(bad).payload == b'abc'
            continue
        with pytest.raises(HepError, match=why):
            decode(bad)


def test_a_tcp_stream_is_split_into_packets():
    one = encode(HepPacket(('127.0.0.1', 1), ('127.0.0.1', 2), 6, 0.0, b'one'))
    two = encode(HepPacket(('127.0.0.1', 1), ('127.0.0.1', 2), 6, 0.0, b'two'))
    buffer = bytearray(one + two[:9])
    assert split_stream(buffer) == [one] and bytes(buffer) == two[:9]
    buffer += two[9:]
    assert split_stream(buffer) == [two] and not buffer
    with pytest.raises(HepError, match='framing'):
        split_stream(bytearray(b'GET / HTTP/1.1\r\n'))
