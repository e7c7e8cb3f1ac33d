"""What captures read of a message's bytes, and what they keep out."""
from __future__ import annotations

from aiosip_ws.core.capture import call_id_of, redact, summary

REGISTER = (b'REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/WSS x.invalid;branch=z9hG4bK1\r\n'
            b'i: reg-1@x\r\nCSeq: 2 REGISTER\r\n'
            b'Authorization: Digest username="alice", realm="example.com", nonce="n1",\r\n'
            b' uri="sip:example.com", response="0123456789abcdef0123456789abcdef", qop=auth\r\n'
            b'Proxy-Authorization: Bearer eyJhbGciOi.secret.sig\r\n'
            b'Cookie: session=s3cret; other=1\r\nContent-Length: 0\r\n\r\n')
MESSAGE = (b'MESSAGE sip:bob@example.com SIP/2.0\r\nCall-ID: m1\r\nContent-Type: text/plain\r\n'
           b'Content-Length: 11\r\n\r\nhello, bob!')
INVITE = (b'INVITE sip:bob@example.com SIP/2.0\r\nCall-ID: call-1\r\nContent-Type: '
          b'application/sdp\r\nl: 10\r\n\r\nv=0\r\ns=-\r\n')


def test_the_summary_reads_method_status_and_call_id_without_parsing():
    assert summary(REGISTER).method == 'REGISTER' and summary(REGISTER).call_id == 'reg-1@x'
    ok = summary(b'SIP/2.0 200 OK\r\nCall-ID:  c2 \r\n\r\n')
    assert ok.status == 200 and ok.method is None and ok.call_id == 'c2'
    assert summary(b'\x00\xffgarbage').call_id == '' and summary(b'').method is None
    for data in (REGISTER, MESSAGE, INVITE, b'SIP/2.0 200 OK\r\nCall-ID:  c2 \r\n\r\n',
                 b'', b'OPTIONS x SIP/2.0\r\n\r\nCall-ID: in-the-body'):
        assert call_id_of(data) == summary(data).call_id


def test_credentials_and_cookies_are_redacted_unless_asked():
    out = redact(REGISTER)
    assert b'0123456789abcdef' not in out and b'response="[redacted]"' in out
    assert b'username="alice"' in out and b'nonce="n1"' in out and b', qop=auth' in out
    assert b'eyJhbGciOi' not in out and b'Bearer [redacted]' in out
    assert b'Cookie: [redacted]\r\n' in out and b's3cret' not in out
    assert out.endswith(b'Content-Length: 0\r\n\r\n')
    assert redact(REGISTER, secrets=True) is REGISTER


def test_a_message_body_is_removed_unless_asked_and_sdp_stays():
    out = redact(MESSAGE)
    assert out.endswith(b'Content-Length: 0\r\n\r\n') and b'hello' not in out
    assert redact(MESSAGE, bodies=True) is MESSAGE
    assert redact(INVITE) is INVITE
    reply = b'SIP/2.0 200 OK\r\nCall-ID: m1\r\nContent-Length: 2\r\n\r\nok'
    assert redact(reply) is reply
