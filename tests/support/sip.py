"""SIP requests that tests send from raw WebSocket clients (websockets ``connect``), and
the steps of their exchanges with serve."""
from __future__ import annotations

import asyncio
import secrets

from aiosip_ws.core.codec import SIPMessage, make_response, parse, serialize


def register_request(user: str, *, host: str | None = None, call_id: str | None = None,
                     expires: int = 60) -> str:
    """A REGISTER of ``sip:USER@example.com`` with a Contact on ``host`` (random ``.invalid``
    by default), as one WebSocket text message."""
    host = host or '%s.invalid' % secrets.token_hex(4)
    return ('REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/WS %s;branch=z9hG4bK%s\r\n'
            'From: <sip:%s@example.com>;tag=t1\r\nTo: <sip:%s@example.com>\r\n'
            'Call-ID: %s\r\nCSeq: 1 REGISTER\r\nMax-Forwards: 70\r\n'
            'Contact: <sip:%s@%s;transport=ws>\r\nExpires: %d\r\n\r\n'
            % (host, secrets.token_hex(6), user, user, call_id or secrets.token_hex(6), user,
               host, expires))


SDP = ('v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n'
       'm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n')


async def register_raw(ws, user: str) -> str:
    """REGISTER a raw WebSocket client; returns its Contact host."""
    host = '%s-raw.invalid' % user
    await ws.send('REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/WS %s;branch=z9hG4bKr%s\r\n'
                  'From: <sip:%s@example.com>;tag=r1\r\nTo: <sip:%s@example.com>\r\n'
                  'Call-ID: reg-%s\r\nCSeq: 1 REGISTER\r\nMax-Forwards: 70\r\n'
                  'Contact: <sip:%s@%s;transport=ws>\r\nExpires: 60\r\n\r\n'
                  % (host, user, user, user, user, user, host))
    assert parse(await asyncio.wait_for(ws.recv(), 5)).status == 200
    return host


async def recv(ws) -> SIPMessage:
    return parse(await asyncio.wait_for(ws.recv(), 5))


def invite(caller_host: str, branch: str = 'z9hG4bKinv1') -> str:
    return ('INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/WS %s;branch=%s\r\n'
            'From: <sip:alice@example.com>;tag=a1\r\nTo: <sip:bob@example.com>\r\n'
            'Call-ID: call-1\r\nCSeq: 10 INVITE\r\nMax-Forwards: 70\r\n'
            'Contact: <sip:alice@%s;transport=ws>\r\nContent-Type: application/sdp\r\n\r\n%s'
            % (caller_host, branch, caller_host, SDP))


async def register_device(ws, user: str, device: str, q: str | None = None) -> str:
    """REGISTER one device of ``user`` (its own Contact host, optional ``q``)."""
    host = '%s-%s.invalid' % (user, device)
    qparam = ';q=%s' % q if q is not None else ''
    await ws.send('REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/WS %s;branch=z9hG4bKd%s\r\n'
                  'From: <sip:%s@example.com>;tag=d1\r\nTo: <sip:%s@example.com>\r\n'
                  'Call-ID: reg-%s-%s\r\nCSeq: 1 REGISTER\r\nMax-Forwards: 70\r\n'
                  'Contact: <sip:%s@%s;transport=ws>%s\r\nExpires: 60\r\n\r\n'
                  % (host, device, user, user, user, device, user, host, qparam))
    assert parse(await asyncio.wait_for(ws.recv(), 5)).status == 200
    return host


def message(caller_host: str, body: str = 'to every device') -> str:
    return ('MESSAGE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/WS %s;branch=z9hG4bKm1\r\n'
            'From: <sip:alice@example.com>;tag=a1\r\nTo: <sip:bob@example.com>\r\n'
            'Call-ID: msg-1\r\nCSeq: 1 MESSAGE\r\nMax-Forwards: 70\r\n'
            'Content-Type: text/plain\r\n\r\n%s' % (caller_host, body))


async def answer(ws, request: SIPMessage, status: int, tag: str, **kwargs) -> None:
    await ws.send(serialize(make_response(request, status, to_tag=tag, **kwargs)).decode())


async def quiet(ws, seconds: float = 0.3) -> None:
    """Nothing more arrives on ``ws`` (a CRLF ping comes back as the pong)."""
    await ws.send('\r\n\r\n')
    assert await asyncio.wait_for(ws.recv(), seconds + 5) == '\r\n'


async def answered_here_cancelled_there(caller, phone, to_phone: SIPMessage, phone_host: str,
                                        laptop, to_laptop: SIPMessage) -> None:
    """bob's forked INVITE, ringing on his phone and his laptop: the phone answers (tag
    ``p``); the caller gets that 200, the laptop serve's CANCEL of the same branch with
    ``Reason: SIP;cause=200`` (RFC 3326), answers it 200 and the INVITE 487 (tag ``l``),
    and gets serve's ACK of the 487."""
    await answer(phone, to_phone, 200, 'p',
                 headers=[('Contact', '<sip:bob@%s;transport=ws>' % phone_host)])
    ok = await recv(caller)
    assert ok.status == 200 and ok.get('To').endswith('tag=p')
    cancel = await recv(laptop)
    assert cancel.method == 'CANCEL' and cancel.vias[0].branch == to_laptop.vias[0].branch
    assert cancel.get('Reason') == 'SIP;cause=200;text="Call completed elsewhere"'
    await answer(laptop, cancel, 200, 'l')
    await answer(laptop, to_laptop, 487, 'l')
    ack = await recv(laptop)
    assert ack.method == 'ACK' and ack.get('To').endswith('tag=l')


def tcp_register(user: str, port: int, *, domain: str = 'example.com', call_id: str,
                 branch: str, contact_params: str = '') -> bytes:
    """A REGISTER of ``sip:USER@DOMAIN`` from a SIP-over-TCP client on 127.0.0.1:``port``
    (its Via and Contact), Content-Length framed, as bytes for the stream."""
    return ('REGISTER sip:%s SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:%d;branch=%s\r\n'
            'Max-Forwards: 70\r\nFrom: <sip:%s@%s>;tag=c1\r\nTo: <sip:%s@%s>\r\n'
            'Call-ID: %s\r\nCSeq: 1 REGISTER\r\n'
            'Contact: <sip:%s@127.0.0.1:%d;transport=tcp%s>\r\nExpires: 60\r\n'
            'Content-Length: 0\r\n\r\n'
            % (domain, port, branch, user, domain, user, domain, call_id, user, port,
               contact_params)).encode()


async def next_framed(reader: asyncio.StreamReader, framer, timeout: float = 3) -> SIPMessage:
    """The next SIP message off a TCP stream (``framer``: its StreamFramer)."""
    from aiosip_ws.core.stream import Framed
    while True:
        for event in framer.feed(await asyncio.wait_for(reader.read(65536), timeout)):
            if isinstance(event, Framed):
                return parse(event.data)


class UdpUA(asyncio.DatagramProtocol):
    """bob on UDP: what arrives is queued; ``send`` writes to serve."""

    def __init__(self):
        self.got: asyncio.Queue = asyncio.Queue()

    def connection_made(self, transport):
        self.transport = transport
        self.addr = transport.get_extra_info('sockname')

    def datagram_received(self, data, addr):
        if data.strip(b'\r\n'):
            self.got.put_nowait(parse(data))

    def send(self, message):
        self.transport.sendto(serialize(message) if isinstance(message, SIPMessage)
                              else message.encode(), self.server)

    async def next(self, timeout=3.0):
        return await asyncio.wait_for(self.got.get(), timeout)

    @property
    def contact(self):
        return '<sip:bob@127.0.0.1:%d>' % self.addr[1]

    def request(self, method, uri, *, to, call_id, cseq=1, branch='z9hG4bKub1', extra=(),
                body=''):
        return ('%s %s SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:%d;branch=%s;rport\r\n'
                'Max-Forwards: 70\r\nFrom: <sip:bob@example.com>;tag=b1\r\nTo: %s\r\n'
                'Call-ID: %s\r\nCSeq: %d %s\r\nContact: %s\r\n%s\r\n%s'
                % (method, uri, self.addr[1], branch, to, call_id, cseq, method, self.contact,
                   ''.join(line + '\r\n' for line in extra), body))
