"""RFC 4475 torture messages and malformed WebSocket input against a real aiosip-ws server.

Every message of ``tests/rfc4475`` (RFC 4475's torture tests) goes, as ONE WebSocket message (binary, and
text too when it is valid UTF-8), to an ``aiosip_ws.Application`` listening on
127.0.0.1.  What must happen to each is decided in :data:`EXPECTED` below, from
RFC 4475's description of that message; over WebSocket the frame is the message
boundary (RFC 7118 §5, RFC 3261 §18.3), so Content-Length never makes the server wait.
After each message a normal OPTIONS goes on the same connection and must get its
200 within 2 s: no message may crash the server or leave the connection stuck.

The second half sends what a WebSocket peer can send that is not a SIP message
at all: invalid UTF-8 in a text frame (1007), oversize messages (1009), empty
messages, NUL bytes, two SIP messages in one WebSocket message (RFC 7118 §5), stray
responses and fragmented messages (RFC 6455 §5.4), the malformed frames crafted below
the websockets library on a hand-made handshake.
"""
from __future__ import annotations

import asyncio
import logging
import re
import secrets
from dataclasses import dataclass
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from aiosip_ws import Application, ServerOptions
from aiosip_ws.core import framing
from aiosip_ws.core.codec import parse
from tests.support import RFC4475_DIR
from tests.support.websocket import Opcode, RawWebSocket

#: the RFC 4475 messages, one per file (tests/rfc4475)
TORTURE_DIR = RFC4475_DIR
#: seconds the OPTIONS probe sent after every torture message has to get its 200
PROBE_TIMEOUT = 2.0

# ---------------------------------------------------------------------------- expectations
#: the route saw the request and its 200 came back
ROUTE = 'route'
#: no response: the message was dropped and a warning logged (a broken response, or a
#: request without the Via/CSeq a response needs)
DROP = 'drop'
#: a well-formed response matching no transaction: parsed, then dropped and logged by
#: the transaction layer (never routed as a request)
STRAY = 'stray'

Outcome = int | str   # a status code the server answers with, or ROUTE / DROP / STRAY


@dataclass(frozen=True)
class Expect:
    outcome: Outcome
    section: str     # RFC 4475 section
    why: str
    #: set when the outcome RFC 4475 asks for depends on code outside the codec/framing
    #: and is not there yet: the test is a strict xfail naming what is missing
    missing: str | None = None


# file -> what must happen to it as one WebSocket message, from RFC 4475's text.
EXPECTED: dict[str, Expect] = {
    # -- 3.1.1 valid messages: a parser must accept them --------------------------------
    'valid/wsinv.dat': Expect(481, '3.1.1.1', 'short tortuous INVITE: folding, odd LWS, '
                              'escaped quotes, comma-joined Vias; must be accepted.  Its To has '
                              'a tag (found through the folding and the LWS around "="), so it '
                              'is a mid-dialog request for no dialog: 481 (RFC 3261 12.2.2)'),
    'valid/intmeth.dat': Expect(ROUTE, '3.1.1.2', 'every token character in the method, '
                                'quoted NUL/BEL/DEL, UTF-8 values; its route sees the method'),
    'valid/esc01.dat': Expect(ROUTE, '3.1.1.3', 'valid % escapes in URIs'),
    'valid/escnull.dat': Expect(ROUTE, '3.1.1.4', 'escaped NULs (%00) in URIs'),
    'valid/esc02.dat': Expect(ROUTE, '3.1.1.5', '"RE%47IST%45R" is an unknown method, not '
                              'REGISTER (the test routes that exact token)'),
    'valid/lwsdisp.dat': Expect(ROUTE, '3.1.1.6', 'no LWS between display name and "<"'),
    'valid/longreq.dat': Expect(ROUTE, '3.1.1.7', 'long values, 34 Vias in every spelling'),
    'valid/dblreq.dat': Expect(400, '3.1.1.8', 'RFC 4475 (UDP): process the REGISTER, discard '
                               'the INVITE after Content-Length.  Over WebSocket a second SIP '
                               'message in one WebSocket message is refused (RFC 7118 '
                               '§5): the REGISTER gets 400, the INVITE never reaches SIP'),
    'valid/semiuri.dat': Expect(ROUTE, '3.1.1.9', '";" in the Request-URI user part'),
    'valid/transports.dat': Expect(ROUTE, '3.1.1.10', 'SCTP, TLS, UNKNOWN transports in Via'),
    'valid/mpart01.dat': Expect(ROUTE, '3.1.1.11', 'multipart body with binary (not UTF-8) '
                                'parts: binary frame only, body kept byte for byte'),
    'valid/unreason.dat': Expect(STRAY, '3.1.1.12', 'UTF-8 reason phrase: parsed; no '
                                 'transaction matches it, so it is dropped'),
    'valid/noreason.dat': Expect(STRAY, '3.1.1.13', 'empty reason phrase: parsed, then '
                                 'dropped as a stray response'),
    # -- 3.1.2 invalid messages --------------------------------------------------------
    'invalid/badinv01.dat': Expect(400, '3.1.2.1', 'empty Via/Contact values (";;,;,,")'),
    'invalid/clerr.dat': Expect(400, '3.1.2.2', 'Content-Length 9999, body shorter: 400 at '
                                'once, never wait for more bytes (RFC 3261 §18.3)'),
    'invalid/ncl.dat': Expect(400, '3.1.2.3', 'negative Content-Length'),
    'invalid/scalar02.dat': Expect(400, '3.1.2.4', 'CSeq number > 2**31-1 (400 "due to the '
                                   'CSeq error")'),
    'invalid/scalarlg.dat': Expect(DROP, '3.1.2.5', 'response with overlarge CSeq: "simply '
                                   'discard it"'),
    'invalid/quotbal.dat': Expect(400, '3.1.2.6', 'unterminated quoted string in To'),
    'invalid/ltgtruri.dat': Expect(400, '3.1.2.7', 'Request-URI enclosed in <>'),
    'invalid/lwsruri.dat': Expect(400, '3.1.2.8', 'LWS inside the Request-URI'),
    'invalid/lwsstart.dat': Expect(400, '3.1.2.9', 'several SP between Request-Line elements '
                                   '("acceptable to reject"; the Request-Line is parsed strictly)'),
    'invalid/trws.dat': Expect(400, '3.1.2.10', 'SP after SIP/2.0 in the Request-Line '
                               '("acceptable to reject")'),
    'invalid/escruri.dat': Expect(400, '3.1.2.11', 'escaped headers in the Request-URI '
                                  '("acceptable to reject with 400")'),
    'invalid/baddate.dat': Expect(ROUTE, '3.1.2.12', 'non-GMT Date: liberal, Date is not used; '
                                  'reject only "if the Date were important to processing"'),
    'invalid/regbadct.dat': Expect(ROUTE, '3.1.2.13', 'addr-spec Contact with "?": liberal, '
                                   'unambiguous here (RFC allows inferring the <>)'),
    'invalid/badaspec.dat': Expect(ROUTE, '3.1.2.14', 'spaces inside <> of To: liberal, '
                                   'the spaces are ignored'),
    'invalid/baddn.dat': Expect(400, '3.1.2.15', 'unquoted display names with ","; this '
                                'copy also ends without the blank line after the headers'),
    'invalid/badvers.dat': Expect(505, '3.1.2.16', 'SIP/7.0: 505 Version Not Supported'),
    'invalid/mismatch01.dat': Expect(400, '3.1.2.17', 'CSeq method differs from the method'),
    'invalid/mismatch02.dat': Expect(400, '3.1.2.18', 'unknown method and CSeq mismatch: 400, '
                                     '"in particular, a 501 should not be sent" (NEWMETHOD has '
                                     'a route, so 405/501 would be wrong too)'),
    'invalid/bigcode.dat': Expect(DROP, '3.1.2.19', 'status code > 699: drop the response'),
    # -- 3.2 transaction layer, 3.3 application layer, 3.4 backward compatibility -----
    'invalid/badbranch.dat': Expect(ROUTE, '3.2.1', 'branch "z9hG4bK" with nothing after it: '
                                    'reject or fall back to RFC 2543 matching; it is processed'),
    'invalid/insuf.dat': Expect(400, '3.3.1', 'no Call-ID, From, To: "ideally 400"; Via and '
                                'CSeq are enough for the client to match it'),
    'invalid/unkscm.dat': Expect(416, '3.3.2', 'unknown Request-URI scheme: well formed, '
                                 'answered 416 (even though To is a SIP URI)'),
    'invalid/novelsc.dat': Expect(416, '3.3.3', 'soap.beep: Request-URI: 416, a scheme '
                                  'never accepted here'),
    'invalid/unksm2.dat': Expect(ROUTE, '3.3.4', 'non-SIP URIs in To/From/Contact: well formed, '
                                 '"parsers must not fail"; rejecting it is the registrar\'s '
                                 'decision (this route is not a registrar)'),
    'invalid/bext01.dat': Expect(420, '3.3.5', '"any element receiving this request will '
                                 'respond with a 420" listing the Require tags in Unsupported'),
    'invalid/invut.dat': Expect(ROUTE, '3.3.6', 'unknown Content-Type: syntactically valid; '
                                'the endpoint (the route) answers 415; the body arrives intact'),
    'invalid/regaut01.dat': Expect(ROUTE, '3.3.7', 'unknown Authorization scheme: a registrar '
                                   'without authentication ignores it'),
    'invalid/multi01.dat': Expect(400, '3.3.8', 'two To, From, Call-ID, CSeq, Max-Forwards'),
    'invalid/mcl01.dat': Expect(400, '3.3.9', 'two different Content-Length values'),
    'invalid/bcast.dat': Expect(STRAY, '3.3.10', '200 with a broadcast Via: well formed, '
                                'an endpoint "should simply discard it"'),
    'invalid/zeromf.dat': Expect(ROUTE, '3.3.11', 'Max-Forwards: 0 to an endpoint: processed '
                                 'as if it were positive'),
    'invalid/cparam01.dat': Expect(ROUTE, '3.3.12', 'addr-spec Contact with a contact-param'),
    'invalid/cparam02.dat': Expect(ROUTE, '3.3.13', 'name-addr Contact with a URI parameter'),
    'invalid/regescrt.dat': Expect(ROUTE, '3.3.14', 'Contact URI with an escaped header'),
    'invalid/sdp01.dat': Expect(ROUTE, '3.3.15', 'Accept without application/sdp: the '
                                'endpoint (the route) chooses 406 or 400'),
    'invalid/inv2543.dat': Expect(ROUTE, '3.4.1', 'RFC 2543 INVITE: no branch, no From tag, no '
                                  'Content-Length (the body is the rest of the message), no '
                                  'Max-Forwards; accepted for backward compatibility'),
    'invalid/test.dat': Expect(DROP, 'extra', 'no SIP version in the Request-Line, a header '
                               'line without ":", and no Via/CSeq to answer with'),
}

#: methods the test server routes (every method of the messages expected to reach a route,
#: plus NEWMETHOD so that mismatch02's 400 cannot be confused with a 405/501)
ROUTED_METHODS = ('REGISTER', 'INVITE', 'OPTIONS', 'MESSAGE', 'NEWMETHOD', 'RE%47IST%45R',
                  "!interesting-Method0123456789_*+`.%indeed'~")


def torture_files() -> list[str]:
    return sorted('%s/%s' % (kind, path.name) for kind in ('valid', 'invalid')
                  for path in (TORTURE_DIR / kind).glob('*.dat'))


def torture_cases() -> list[Any]:
    cases = []
    for name in torture_files():
        data = (TORTURE_DIR / name).read_bytes()
        kinds = ['binary']
        try:
            data.decode('utf-8')
            kinds.append('text')
        except UnicodeDecodeError:
            pass
        expect = EXPECTED.get(name)
        marks = []
        if expect is not None and expect.missing:
            marks.append(pytest.mark.xfail(strict=True, reason=expect.missing))
        cases += [pytest.param(name, kind, id='%s-%s' % (name, kind), marks=marks)
                  for kind in kinds]
    return cases


# ---------------------------------------------------------------------------- helpers
class TortureServer:
    """An aiosip-ws server whose routes record the request and answer 200."""

    def __init__(self, options: ServerOptions | None = None) -> None:
        self.app = Application(server_options=options)
        self.seen: asyncio.Queue = asyncio.Queue()
        for method in ROUTED_METHODS:
            self.app.router.add_route(method, self.on_request)
        self.url = ''

    async def on_request(self, dialog: Any, msg: Any) -> None:
        await self.seen.put(msg)
        dialog.reply(msg, 200)

    async def listen(self) -> str:
        self.url = (await self.app.listen('ws://127.0.0.1:0/')).bound_url
        return self.url

    def drain_seen(self) -> list[Any]:
        out = []
        while not self.seen.empty():
            out.append(self.seen.get_nowait())
        return out


@pytest.fixture
async def server():
    srv = TortureServer()
    await srv.listen()
    yield srv
    await srv.app.close()


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger='aiosip_ws')
    return caplog


def probe(call_id: str) -> str:
    """A normal OPTIONS that must always get its 200 (the connection is not stuck)."""
    return ('OPTIONS sip:127.0.0.1 SIP/2.0\r\n'
            'Via: SIP/2.0/WS probe.invalid;branch=z9hG4bK%s\r\n'
            'From: <sip:probe@example.com>;tag=p1\r\nTo: <sip:127.0.0.1>\r\n'
            'Call-ID: %s\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n'
            % (secrets.token_hex(6), call_id))


_CALL_ID = re.compile(r'^(?:Call-ID|i)[ \t]*:[ \t]*([^\r\n]*?)[ \t]*\r?$', re.IGNORECASE | re.MULTILINE)


def call_id_of(data: str | bytes) -> str | None:
    text = data.decode('utf-8', 'replace') if isinstance(data, bytes) else data
    m = _CALL_ID.search(text.split('\r\n\r\n', 1)[0])
    return m.group(1) if m else None


def status_of(frame: str | bytes) -> int:
    text = frame.decode('utf-8', 'replace') if isinstance(frame, bytes) else frame
    m = re.match(r'SIP/2\.0 (\d{3}) ', text)
    assert m, 'not a SIP response: %r' % text[:200]
    return int(m.group(1))


async def send_with_probe(ws: ClientConnection, message: str | bytes | None) -> list[str | bytes]:
    """Send ``message`` (if any), then an OPTIONS probe on the same connection; return what
    came back before the probe's 200, which must arrive within PROBE_TIMEOUT."""
    if message is not None:
        await ws.send(message)
    probe_id = 'probe-' + secrets.token_hex(6)
    await ws.send(probe(probe_id))
    return await replies_until_probe(ws.recv, probe_id)


async def replies_until_probe(recv: Any, probe_id: str) -> list[str | bytes]:
    replies: list[str | bytes] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + PROBE_TIMEOUT
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise AssertionError('no 200 to the OPTIONS probe within %.0f s (replies so far: %r)'
                                 % (PROBE_TIMEOUT, replies))
        try:
            frame = await asyncio.wait_for(recv(), remaining)
        except asyncio.TimeoutError:
            continue
        if call_id_of(frame) == probe_id:
            assert status_of(frame) == 200, frame
            return replies
        replies.append(frame)


def problems(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Log records that mean something crashed."""
    return ['%s: %s' % (r.name, r.getMessage()) for r in caplog.records
            if r.levelno >= logging.ERROR or r.exc_info]


def logged(caplog: pytest.LogCaptureFixture, text: str) -> bool:
    return any(text in r.getMessage() for r in caplog.records)


def check_seen(server: TortureServer, *, method: str | None, call_id: str | None) -> None:
    """The routes saw the torture request once (when ``method``), otherwise only probes."""
    seen = server.drain_seen()
    assert seen and seen[-1].headers['Call-ID'].startswith('probe-'), seen
    torture = [m for m in seen if not m.headers['Call-ID'].startswith('probe-')]
    if method is None:
        assert torture == [], 'a route saw %r' % [m.method for m in torture]
    else:
        assert len(torture) == 1, [m.method for m in torture]
        assert torture[0].method == method and torture[0].raw.get('Call-ID') == call_id


# ---------------------------------------------------------------------------- RFC 4475
def test_every_torture_file_has_an_expectation():
    """The table covers exactly the files present (a new file needs a decision)."""
    files = torture_files()
    assert len(files) >= 50
    assert sorted(EXPECTED) == files


@pytest.mark.parametrize('name, kind', torture_cases())
async def test_torture_message(server, logs, name, kind):
    """RFC 7118 §4.2 and §5, RFC 3261 §18.3: one RFC 4475 message in one WebSocket message.

    The outcome is the one in EXPECTED; then an OPTIONS on the same connection gets
    its 200 within 2 s, the connection stays open and nothing was logged as a crash.
    """
    expect = EXPECTED[name]
    data = (TORTURE_DIR / name).read_bytes()
    message: str | bytes = data if kind == 'binary' else data.decode('utf-8')
    call_id = call_id_of(data)
    async with connect(server.url, subprotocols=['sip'], proxy=None, open_timeout=5) as ws:
        replies = await send_with_probe(ws, message)
        assert ws.close_code is None

    statuses = [status_of(frame) for frame in replies]
    if expect.outcome == ROUTE:
        assert statuses == [200], replies
        torture = parse(data)
        check_seen(server, method=torture.method, call_id=torture.get('Call-ID'))
        assert not logged(logs, 'dropped a malformed message')
    elif isinstance(expect.outcome, int):
        assert statuses == [expect.outcome], replies
        if call_id is not None:
            assert call_id_of(replies[0]) == call_id
        check_seen(server, method=None, call_id=None)
    else:
        assert replies == []
        check_seen(server, method=None, call_id=None)
        if expect.outcome == DROP:
            assert logged(logs, 'dropped a malformed message')
        else:
            assert logged(logs, 'no known transaction')
            assert not logged(logs, 'dropped a malformed message')
    assert problems(logs) == []


#: outcomes decided above the codec and framing (by the aiosip adapter), on a message
#: the codec accepts; every other 4xx/5xx and DROP comes from framing.receive itself
ANSWERED_BY_ADAPTER = {'valid/wsinv.dat': 481, 'invalid/quotbal.dat': 400, 'invalid/bext01.dat': 420}


@pytest.mark.parametrize('name', torture_files())
def test_framing_view_of_each_torture_file(name):
    """The same table, without a network: what framing.receive makes of each file, so a
    codec regression shows here first.  ROUTE/STRAY files parse; 4xx/5xx files are
    rejected with that response (but the two the adapter answers); DROP files give none."""
    expect = EXPECTED[name]
    event = framing.receive((TORTURE_DIR / name).read_bytes())
    if expect.outcome in (ROUTE, STRAY) or name in ANSWERED_BY_ADAPTER or expect.missing:
        assert isinstance(event, framing.MessageReceived), getattr(event, 'error', event)
    else:
        assert isinstance(event, framing.MessageRejected), event
        if expect.outcome == DROP:
            assert event.response is None, event.error
        else:
            assert event.response is not None and event.response.status == expect.outcome, event.error


async def test_tortuous_invite_without_its_to_tag_reaches_the_route(server):
    """RFC 4475 3.1.1.1 (wsinv) as an out-of-dialog request: every tortuous part is read
    right: folded and comma-joined Vias, "cseq: 0009 INVITE" over two lines, the body."""
    data = (TORTURE_DIR / 'valid/wsinv.dat').read_bytes()
    data = data.replace(b' ;   tag    = 1918181833n', b'')
    async with connect(server.url, subprotocols=['sip'], proxy=None) as ws:
        assert [status_of(f) for f in await send_with_probe(ws, data)] == [200]
    invite = server.drain_seen()[0].raw
    assert invite.method == 'INVITE' and invite.uri == 'sip:vivekg@chair-dnrc.example.com;unknownparam'
    assert [(v.transport, v.host, v.branch) for v in invite.vias] == [
        ('UDP', '192.0.2.2', '390skdjuw'), ('TCP', 'spindle.example.com', 'z9hG4bK9ikj8'),
        ('UDP', '192.168.255.111', 'z9hG4bK30239')]
    assert invite.cseq == (9, 'INVITE') and invite.get('Max-Forwards') == '0068'
    assert invite.get('NewFangledHeader') == 'newfangled value continued newfangled value'
    assert invite.get('Subject') == '' and len(invite.body) == 150


async def test_multipart_binary_body_reaches_the_route_byte_for_byte(server):
    """RFC 4475 3.1.1.11, RFC 7118 §4.2: a body that is not UTF-8 survives a binary frame intact."""
    data = (TORTURE_DIR / 'valid/mpart01.dat').read_bytes()
    async with connect(server.url, subprotocols=['sip'], proxy=None) as ws:
        assert [status_of(f) for f in await send_with_probe(ws, data)] == [200]
    request = server.drain_seen()[0]
    assert request.raw.body == data.split(b'\r\n\r\n', 1)[1] and len(request.raw.body) == 553


# ---------------------------------------------------------------------------- raw frames
async def test_text_frame_with_invalid_utf8_closes_with_1007(server, logs):
    """RFC 6455 §8.1 (RFC6455-8.1-a): invalid UTF-8 in a text frame is a WebSocket failure
    (close code 1007), not a SIP 400; the server keeps serving others."""
    raw = await RawWebSocket.open(server.url, strict=True)
    try:
        body = b'OPTIONS sip:127.0.0.1 SIP/2.0\r\nSubject: caf' + b'\xe9\xff\r\n\r\n'
        await raw.send_frame(Opcode.TEXT, body)
        assert await raw.recv_close() == 1007
    finally:
        await raw.close()
    async with connect(server.url, subprotocols=['sip'], proxy=None) as ws:
        assert await send_with_probe(ws, None) == []
    assert server.drain_seen()[0].method == 'OPTIONS' and problems(logs) == []


async def test_message_in_three_fragments_is_parsed_once(server):
    """RFC 6455 §5.4 (RFC6455-5.4-a): one SIP message sent as a text frame and two continuation frames is
    reassembled and parsed once: one route call, one 200."""
    sdp = ('v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n'
           'm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n')
    invite = ('INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/WS frag.invalid;branch=z9hG4bKfr1\r\n'
              'From: <sip:frag@example.com>;tag=f1\r\nTo: <sip:bob@example.com>\r\n'
              'Call-ID: frag-1\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n'
              'Contact: <sip:frag@frag.invalid;transport=ws>\r\nContent-Type: application/sdp\r\n'
              'Content-Length: %d\r\n\r\n%s' % (len(sdp), sdp)).encode()
    third = len(invite) // 3
    raw = await RawWebSocket.open(server.url, strict=True)
    try:
        await raw.send_frame(Opcode.TEXT, invite[:third], fin=False)
        await raw.send_frame(Opcode.CONT, invite[third:2 * third], fin=False)
        await raw.send_frame(Opcode.CONT, invite[2 * third:], fin=True)
        await raw.send_frame(Opcode.TEXT, probe('probe-frag').encode())
        replies = await replies_until_probe(lambda: raw.recv_text(auto_pong=False), 'probe-frag')
    finally:
        await raw.close()
    assert [status_of(r) for r in replies] == [200] and call_id_of(replies[0]) == 'frag-1'
    seen = server.drain_seen()
    assert [m.method for m in seen] == ['INVITE', 'OPTIONS']
    assert seen[0].raw.body == sdp.encode()


async def test_oversize_message_closes_with_1009_and_the_server_keeps_serving(logs):
    """RFC 6455 §7.4.1 (PRACTICE-max-size): over ServerOptions(max_size) the connection closes
    with 1009; a message of exactly max_size is still processed; new connections work."""
    srv = TortureServer(ServerOptions(max_size=2048))
    try:
        url = await srv.listen()
        head = probe('fits')
        fits = head.replace('OPTIONS sip', 'MESSAGE sip').replace('1 OPTIONS', '1 MESSAGE')
        fits = fits.replace('Content-Length: 0\r\n\r\n', '')
        fits += 'Content-Type: text/plain\r\n\r\n'
        fits += 'x' * (2048 - len(fits.encode()))
        assert len(fits.encode()) == 2048
        async with connect(url, subprotocols=['sip'], proxy=None) as ws:
            assert [status_of(f) for f in await send_with_probe(ws, fits)] == [200]
            await ws.send(fits + 'y')
            await asyncio.wait_for(ws.wait_closed(), 5)
            assert ws.close_code == 1009
        async with connect(url, subprotocols=['sip'], proxy=None) as ws:
            assert await send_with_probe(ws, None) == []
    finally:
        await srv.app.close()
    assert problems(logs) == []


@pytest.mark.parametrize('empty', ['', b''], ids=['text', 'binary'])
async def test_empty_message_is_dropped_and_logged(server, logs, empty):
    """An empty WebSocket message is no SIP message and no keep-alive: dropped, logged."""
    async with connect(server.url, subprotocols=['sip'], proxy=None) as ws:
        assert await send_with_probe(ws, empty) == []
    assert logged(logs, 'dropped a malformed message: empty message')
    check_seen(server, method=None, call_id=None)
    assert problems(logs) == []


REQUEST_HEAD = ('MESSAGE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/WS raw.invalid;branch=z9hG4bK%s\r\n'
                'From: <sip:raw@example.com>;tag=r1\r\nTo: <sip:bob@example.com>\r\n'
                'Call-ID: %s\r\nCSeq: 5 MESSAGE\r\nMax-Forwards: 70')


def request_head(call_id: str) -> str:
    return REQUEST_HEAD % (secrets.token_hex(4), call_id)


@pytest.mark.parametrize('ending', ['', '\r\n'], ids=['no-crlf', 'one-crlf'])
async def test_headers_without_the_blank_line(server, logs, ending):
    """RFC 3261 7: the headers end with an empty line.  A request without it is malformed:
    400 (it has what a response needs); a response without it is dropped and logged."""
    async with connect(server.url, subprotocols=['sip'], proxy=None) as ws:
        replies = await send_with_probe(ws, request_head('noblank-1') + ending)
        assert [status_of(r) for r in replies] == [400]
        assert call_id_of(replies[0]) == 'noblank-1' and 'blank line' in replies[0]
        response = ('SIP/2.0 200 OK\r\nVia: SIP/2.0/WS raw.invalid;branch=z9hG4bKnb\r\n'
                    'From: <sip:raw@example.com>;tag=r1\r\nTo: <sip:bob@example.com>;tag=b\r\n'
                    'Call-ID: noblank-2\r\nCSeq: 5 MESSAGE' + ending)
        assert await send_with_probe(ws, response) == []
    assert logged(logs, 'dropped a malformed message: no blank line')
    check_seen(server, method=None, call_id=None)
    assert problems(logs) == []


async def test_binary_frames_with_nul_bytes(server, logs):
    """RFC 7118 §4.2: a binary body full of NULs is delivered byte for byte; a message of NULs is
    dropped and logged; a NUL in the Request-URI gets 400; the connection stays up."""
    body = b'\x00\x01\x00\xff\x00' * 20
    async with connect(server.url, subprotocols=['sip'], proxy=None) as ws:
        message = (request_head('nul-1') + '\r\nContent-Type: application/octet-stream'
                   '\r\nContent-Length: %d\r\n\r\n' % len(body)).encode() + body
        assert [status_of(r) for r in await send_with_probe(ws, message)] == [200]
        assert (await server.seen.get()).raw.body == body
        await server.seen.get()                                       # the probe
        assert await send_with_probe(ws, b'\x00' * 64) == []
        bad_uri = request_head('nul-2').replace('sip:bob@', 'sip:b\x00b@', 1) + '\r\n\r\n'
        replies = await send_with_probe(ws, bad_uri.encode())
        assert [status_of(r) for r in replies] == [400] and call_id_of(replies[0]) == 'nul-2'
    assert logged(logs, 'dropped a malformed message')
    check_seen(server, method=None, call_id=None)
    assert problems(logs) == []


@pytest.mark.parametrize('content_length', [True, False], ids=['with-length', 'without-length'])
async def test_two_sip_messages_in_one_websocket_message_are_refused(server, logs, content_length):
    """RFC 7118 §5 (RFC7118-5-b): a WebSocket message holding two SIP messages is malformed: the first
    gets 400, the second is never delivered.  Without Content-Length (and so without a body
    type) the second message would otherwise pass for the body of the first."""
    first = request_head('two-1').replace('MESSAGE', 'OPTIONS')
    second = request_head('two-2').replace('MESSAGE', 'OPTIONS')
    tail = '\r\nContent-Length: 0\r\n\r\n' if content_length else '\r\n\r\n'
    async with connect(server.url, subprotocols=['sip'], proxy=None) as ws:
        replies = await send_with_probe(ws, first + tail + second + tail)
    assert [status_of(r) for r in replies] == [400] and call_id_of(replies[0]) == 'two-1'
    assert 'two SIP messages' in replies[0]
    check_seen(server, method=None, call_id=None)
    assert problems(logs) == []


async def test_response_for_an_unknown_transaction_is_dropped(server, logs):
    """D8, RFC 3261 §17.1.3: a response no transaction waits for is dropped and logged, never routed
    as a request, and the connection stays up."""
    response = ('SIP/2.0 200 OK\r\nVia: SIP/2.0/WS nobody.invalid;branch=z9hG4bK%s\r\n'
                'From: <sip:a@example.com>;tag=1\r\nTo: <sip:b@example.com>;tag=2\r\n'
                'Call-ID: stray-1\r\nCSeq: 1 MESSAGE\r\nContent-Length: 0\r\n\r\n'
                % secrets.token_hex(4))
    async with connect(server.url, subprotocols=['sip'], proxy=None) as ws:
        assert await send_with_probe(ws, response) == []
        assert await send_with_probe(ws, response.encode()) == []
        assert ws.close_code is None
    assert logged(logs, 'no known transaction') and not logged(logs, 'malformed')
    check_seen(server, method=None, call_id=None)
    assert problems(logs) == []
