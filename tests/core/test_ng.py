"""rtpengine's ng protocol as data (aiosip_ws.core.ng): bencode both ways, the command
datagram and the reply, and every malformed reply refused with MediaRelayError."""
from __future__ import annotations

import pytest

from aiosip_ws.core.ng import MAX_DEPTH, bdecode, bencode, decode_reply, encode_command
from aiosip_ws.errors import MediaRelayError


def test_bencode_as_rtpengine_writes_it():
    assert bencode({'command': 'ping'}) == b'd7:command4:pinge'
    assert bencode({'b': 1, 'a': [-3, 'x', b'\x00'], 'flags': True}) == \
        b'd1:ali-3e1:x1:\x00e1:bi1e5:flagsi1ee'              # keys sorted, as bencode says
    assert bencode('h\u00e9') == b'3:h\xc3\xa9'                 # lengths count bytes


@pytest.mark.parametrize('value', [
    0, -12, 'offer', '', ['a', 1, ['b', {'c': 'd'}]],
    {'command': 'offer', 'call-id': 'c1', 'sdp': 'v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\n',
     'replace': ['origin', 'session connection'], 'ICE': 'remove'}])
def test_round_trips(value):
    assert bdecode(bencode(value)) == value


@pytest.mark.parametrize('data, error', [
    (b'', 'ends early'), (b'i12', 'without its end'), (b'ie', 'not an integer'),
    (b'i1xe', 'not an integer'), (b'5:abc', 'longer than the data'),
    (b'x', 'unexpected'), (b'l' * (MAX_DEPTH + 2), 'nested deeper'),
    (b'di1ei2ee', 'key that is not a string'), (b'i1ei2e', 'after the value'),
    (b'd3:key', 'ends early'), (b'3x:abc', 'without its length')])
def test_malformed_bencode_is_refused(data, error):
    with pytest.raises(MediaRelayError, match=error):
        bdecode(data)


def test_commands_and_replies():
    assert encode_command('c_1', {'command': 'ping'}) == b'c_1 d7:command4:pinge'
    assert decode_reply(b'c_1 d6:result4:ponge') == ('c_1', {'result': 'pong'})
    for cookie in ('', 'a b'):
        with pytest.raises(MediaRelayError, match='cookie'):
            encode_command(cookie, {'command': 'ping'})
    with pytest.raises(MediaRelayError, match='"command" key'):
        encode_command('c', {'call-id': 'x'})
    with pytest.raises(MediaRelayError, match='more than a datagram'):
        encode_command('c', {'command': 'offer', 'sdp': 'x' * 70000})
    with pytest.raises(MediaRelayError, match='cannot bencode float'):
        encode_command('c', {'command': 'offer', 'x': 1.5})
    for reply, error in ((b'd6:result4:ponge', 'without a cookie'),
                         (b'c li1ee', 'not a dictionary')):
        with pytest.raises(MediaRelayError, match=error):
            decode_reply(reply)


def test_a_brief_reply_keeps_the_scalars_and_skips_the_rest_checked():
    body = {'created': 1796644878, 'tags': {'a': {'medias': [{'streams': [
        {'local port': 44826, 'flags': ['RTP', 'ICE']}]}]}}, 'totals': {'RTP': {'packets': 0}},
        'result': 'ok', 'warning': 'x'}
    data = b'c1 ' + bencode(body)
    assert decode_reply(data, brief=True) == ('c1', {'created': 1796644878, 'result': 'ok',
                                                     'warning': 'x'})
    assert decode_reply(data)[1] == body
    for broken in (data[:-1], data[:-5], data + b'e', data.replace(b'5:flags', b'9:flags')):
        with pytest.raises(MediaRelayError):
            decode_reply(broken, brief=True)


def test_a_brief_reply_ending_in_result_ok_is_a_success_unread():
    # rtpengine appends "result" last: its statistics (unsorted, as rtpengine writes them)
    # come first and are not walked; anything else is decoded as above
    stats = bencode({'tags': {'a': {'medias': [{'streams': [{'local port': 44826}]}]}}})
    ok = b'c2 ' + stats[:-1] + b'6:result2:oke'
    assert decode_reply(ok, brief=True) == ('c2', {'result': 'ok'})
    error = b'c3 ' + stats[:-1] + b'6:result5:error12:error-reason15:Unknown call-ide'
    assert decode_reply(error, brief=True) == ('c3', {'result': 'error',
                                                      'error-reason': 'Unknown call-id'})
    nested = b'c4 d1:xd6:result2:okee'          # "ok" inside a value, not the reply's own
    assert decode_reply(nested, brief=True) == ('c4', {})
