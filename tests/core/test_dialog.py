"""Dialogs as data (RFC 3261 §12, aiosip_ws.core.dialog)."""
from __future__ import annotations

import pytest

from aiosip_ws.core.codec import make_response, parse, serialize
from aiosip_ws.core.dialog import DialogState, new_request
from aiosip_ws.errors import SIPParseError

INVITE = (
    'INVITE sip:bob@example.com SIP/2.0\r\n'
    'Via: SIP/2.0/WS proxy.example.com;branch=z9hG4bK2\r\n'
    'Via: SIP/2.0/WS df7jal23ls0d.invalid;branch=z9hG4bK1\r\n'
    'Record-Route: <sip:second.example.com;transport=ws;lr>\r\n'
    'Record-Route: <sip:first.example.com;lr>\r\n'
    'Max-Forwards: 69\r\nFrom: <sip:alice@example.com>;tag=a1\r\nTo: <sip:bob@example.com>\r\n'
    'Call-ID: c1\r\nCSeq: 7 INVITE\r\nContact: <sip:alice@df7jal23ls0d.invalid;transport=ws>\r\n'
    'Content-Length: 0\r\n\r\n')


def test_the_uas_dialog_takes_route_set_target_tags_and_cseq_from_the_invite():
    invite = parse(INVITE)
    state = DialogState.as_uas(invite, 'b2', contact='<sip:bob@x.invalid;transport=ws>')
    assert state.local == '<sip:bob@example.com>;tag=b2' and state.local_tag == 'b2'
    assert state.remote_tag == 'a1' and state.remote_cseq == 7
    assert state.remote_target == 'sip:alice@df7jal23ls0d.invalid;transport=ws'
    bye = state.request('BYE')
    text = serialize(bye).decode()
    assert text.startswith('BYE sip:alice@df7jal23ls0d.invalid;transport=ws SIP/2.0\r\n')
    assert bye.get_all('Route') == ['<sip:second.example.com;transport=ws;lr>',
                                    '<sip:first.example.com;lr>']      # RR order at the UAS
    assert bye.get('From') == '<sip:bob@example.com>;tag=b2'
    assert bye.get('To') == '<sip:alice@example.com>;tag=a1'
    assert bye.cseq == (state.local_cseq, 'BYE') and bye.get('Contact') is None
    reinvite = state.request('INVITE', body=b'v=0\r\n', content_type='application/sdp')
    assert reinvite.cseq[0] == bye.cseq[0] + 1
    assert reinvite.get('Contact') == '<sip:bob@x.invalid;transport=ws>'
    assert reinvite.get('Content-Type') == 'application/sdp' and reinvite.body == b'v=0\r\n'


def test_the_uac_dialog_reverses_the_record_route_and_follows_the_2xx_contact():
    invite = parse(INVITE)
    ok = make_response(invite, 200, to_tag='b2', headers=[
        ('Contact', '<sip:bob@192.0.2.4:5060>')])
    state = DialogState.as_uac(invite, ok)
    assert state.remote_tag == 'b2' and state.local_tag == 'a1' and state.local_cseq == 7
    ack = state.request('ACK', cseq=7)
    assert ack.uri == 'sip:bob@192.0.2.4:5060' and ack.cseq == (7, 'ACK')
    assert ack.get_all('Route') == ['<sip:first.example.com;lr>',
                                    '<sip:second.example.com;transport=ws;lr>']
    assert state.request('BYE').cseq == (8, 'BYE')
    with pytest.raises(ValueError, match='CSeq'):
        state.request('ACK')


def test_strict_routing_puts_the_first_route_in_the_request_uri():
    invite = parse(INVITE.replace('<sip:first.example.com;lr>', '<sip:strict.example.com>'))
    state = DialogState.as_uas(invite, 'b2')
    state.route_set.reverse()                        # make the strict router come first
    bye = state.request('BYE')
    assert bye.uri == 'sip:strict.example.com'
    assert bye.get_all('Route')[-1] == '<sip:alice@df7jal23ls0d.invalid;transport=ws>'


def test_remote_cseq_must_rise_except_for_ack_and_cancel():
    state = DialogState.as_uas(parse(INVITE), 'b2')
    ack = parse(INVITE.replace('INVITE sip', 'ACK sip').replace('7 INVITE', '7 ACK'))
    assert state.accepts(ack)
    def bye(number):
        return parse(INVITE.replace('INVITE sip', 'BYE sip').replace('7 INVITE', '%d BYE' % number))
    old = bye(6)
    assert not state.accepts(old)
    new = bye(8)
    assert state.accepts(new) and state.remote_cseq == 8


def test_a_target_refresh_moves_the_remote_target():
    state = DialogState.as_uas(parse(INVITE), 'b2')
    state.refresh_target(parse(INVITE.replace('df7jal23ls0d.invalid', 'moved.invalid')))
    assert state.remote_target == 'sip:alice@moved.invalid;transport=ws'


def test_no_contact_no_dialog():
    invite = parse(INVITE.replace('Contact: <sip:alice@df7jal23ls0d.invalid;transport=ws>\r\n', ''))
    with pytest.raises(SIPParseError, match='no Contact'):
        DialogState.as_uas(invite, 'b2')
    with pytest.raises(SIPParseError, match='no Contact'):
        DialogState.as_uac(parse(INVITE), make_response(invite, 200, to_tag='x'))


def test_new_request_tags_the_sender_and_parses_back():
    request = new_request('INVITE', 'sip:bob@example.com', from_='<sip:alice@example.com>',
                          to='<sip:bob@example.com>', contact='<sip:a@h.invalid;transport=ws>',
                          body=b'v=0\r\n', content_type='application/sdp')
    back = parse(serialize(request.__class__(**{**request.__dict__, 'headers': [
        ('Via', 'SIP/2.0/WS h.invalid;branch=z9hG4bKx'), *request.headers]})))
    assert back.method == 'INVITE' and back.cseq == (1, 'INVITE') and back.body == b'v=0\r\n'
    assert ';tag=' in back.get('From') and back.get('Call-ID')
    kept = new_request('MESSAGE', 'sip:b@x', from_='<sip:a@x>;tag=t', to='<sip:b@x>')
    assert kept.get('From') == '<sip:a@x>;tag=t'
