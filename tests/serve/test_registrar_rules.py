"""REGISTER through `aiosip-ws serve` under hostile input, on the wire: strict numbers
(RFC 3261 §10.2.1.1, §20.22), ``Contact: *`` (§10.3 step 6), bindings owned by the
connection that made them (RFC 5626 §10 is the real answer: authentication), the Contact
cap per AOR, and REGISTERs with many Contacts in linear time."""
from __future__ import annotations

import asyncio
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect

from aiosip_ws.core.codec import SIPMessage, parse
from aiosip_ws.core.grammar import (
    parse_content_length,
    parse_cseq_number,
    parse_delta_seconds,
    parse_max_forwards,
    parse_qvalue,
)
from aiosip_ws.errors import SIPParseError
from aiosip_ws.serve.registrar import Registrar
from aiosip_ws.serve.relay import RelayServer


class Raw:
    """A raw SIP WebSocket client: send text, read one parsed response."""

    def __init__(self, ws, name: str) -> None:
        self.ws, self.name, self.cseq = ws, name, 0
        self.host = '%s.invalid' % name

    async def register(self, *, user: str | None = None, contacts: list[str] | None = None,
                       expires: str | None = '60', extra: tuple[str, ...] = (),
                       call_id: str | None = None) -> SIPMessage:
        user = user or self.name
        self.cseq += 1
        if contacts is None:
            contacts = ['<sip:%s@%s;transport=ws>' % (user, self.host)]
        lines = ['REGISTER sip:example.com SIP/2.0',
                 'Via: SIP/2.0/WS %s;branch=z9hG4bK%s%d' % (self.host, self.name, self.cseq),
                 'Max-Forwards: 70', 'From: <sip:%s@example.com>;tag=%s' % (user, self.name),
                 'To: <sip:%s@example.com>' % user,
                 'Call-ID: %s' % (call_id or 'reg-%s' % self.name),
                 'CSeq: %d REGISTER' % self.cseq, *('Contact: %s' % c for c in contacts), *extra]
        if expires is not None:
            lines.append('Expires: %s' % expires)
        await self.ws.send('\r\n'.join(lines) + '\r\n\r\n')
        return parse(await asyncio.wait_for(self.ws.recv(), 5))

    async def request(self, text: str) -> SIPMessage:
        await self.ws.send(text)
        return parse(await asyncio.wait_for(self.ws.recv(), 5))


async def client(url: str, name: str) -> Raw:
    return Raw(await connect(url, subprotocols=['sip'], proxy=None), name)


def contacts_of(response: SIPMessage) -> list[str]:
    return response.get_all('Contact')


# ---------------------------------------------------------------------------- numbers
@pytest.mark.parametrize('expires, reason', [
    ('²', 'digits 0-9 only'), ('٣', 'digits 0-9 only'), ('-1', 'digits 0-9 only'),
    ('1.5', 'digits 0-9 only'), ('', 'digits 0-9 only'),
])
async def test_a_malformed_expires_gets_400_with_the_reason(relay, expires, reason):
    _, url = relay
    alice = await client(url, 'alice')
    try:
        response = await alice.register(expires=expires)
        assert response.status == 400 and reason in response.reason and 'Expires' in response.reason
        response = await alice.register(contacts=['<sip:alice@alice.invalid>;expires=%s' % expires],
                                        expires=None)
        assert response.status == 400 and 'expires parameter' in response.reason
    finally:
        await alice.ws.close()


async def test_a_huge_expires_is_taken_as_2_32_minus_1_then_clamped(relay):
    server, url = relay
    alice = await client(url, 'alice')
    try:
        response = await alice.register(expires='9' * 5000)
        assert response.status == 200
        [contact] = contacts_of(response)
        assert contact.endswith(';expires=%d' % server.registrar.max_expires)
    finally:
        await alice.ws.close()


@pytest.mark.parametrize('value', ['256', '²', '-1', '9' * 5000, 'seventy'])
async def test_a_malformed_max_forwards_gets_400_never_500(relay, value):
    _, url = relay
    alice = await client(url, 'alice')
    try:
        await alice.register()
        response = await alice.request(
            'MESSAGE sip:alice@example.com SIP/2.0\r\nVia: SIP/2.0/WS alice.invalid;branch=z9hG4bKm1\r\n'
            'Max-Forwards: %s\r\nFrom: <sip:alice@example.com>;tag=m\r\nTo: <sip:alice@example.com>\r\n'
            'Call-ID: mf\r\nCSeq: 1 MESSAGE\r\n\r\n' % value)
        assert response.status == 400 and 'Max-Forwards' in response.reason
    finally:
        await alice.ws.close()


def test_the_number_grammar():
    assert parse_delta_seconds('0042') == 42
    assert parse_delta_seconds('4294967296') == 2 ** 32 - 1
    assert parse_cseq_number('2147483647') == 2 ** 31 - 1
    assert parse_max_forwards('255') == 255 and parse_max_forwards('0') == 0
    assert parse_content_length('9' * 40, limit=100) == 100
    assert [parse_qvalue(v) for v in ('0', '0.5', '0.125', '1', '1.0', '1.000', '0.')] == [
        0.0, 0.5, 0.125, 1.0, 1.0, 1.0, 0.0]
    for bad, parser in [('2147483648', parse_cseq_number), ('256', parse_max_forwards),
                        ('³', parse_delta_seconds), ('1.5', parse_qvalue), ('0.1234', parse_qvalue),
                        ('1.001', parse_qvalue), ('.5', parse_qvalue), ('', parse_content_length)]:
        with pytest.raises(SIPParseError):
            parser(bad)


def register_message(expires: str) -> SIPMessage:
    return SIPMessage(method='REGISTER', uri='sip:example.com', headers=[
        ('Via', 'SIP/2.0/WS h.invalid;branch=z9hG4bKp'), ('From', '<sip:p@example.com>;tag=1'),
        ('To', '<sip:p@example.com>'), ('Call-ID', 'prop'), ('CSeq', '1 REGISTER'),
        ('Contact', '<sip:p@h.invalid;transport=ws>'), ('Expires', expires)])


class _Conn:
    is_open = True
    remote_addr = ('127.0.0.1', 1)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.text(max_size=30) | st.integers(min_value=0, max_value=10 ** 12).map(str))
def test_any_expires_value_gets_a_clean_outcome_and_canonical_values_agree(value):
    """No value raises; every valid one grants what its canonical form grants."""
    registrar = Registrar(max_expires=3600)
    result = registrar.register(register_message(value), _Conn())
    assert result.status in (200, 400, 423)
    if result.status == 400:
        assert result.reason and 'Traceback' not in result.reason
    text = value.strip()
    if text.isascii() and text.isdigit():
        canonical = Registrar(max_expires=3600).register(
            register_message(str(min(int(text[-12:]) if len(text) <= 12 else 2 ** 32 - 1,
                                     2 ** 32 - 1))), _Conn())
        assert (result.status, result.headers) == (canonical.status, canonical.headers)


# ---------------------------------------------------------------------------- Contact: *
async def test_contact_star_with_expires_0_removes_this_connections_bindings(relay):
    """RFC 3261 §10.3 step 6, without authentication: the bindings the requesting
    connection made go; another device's binding of the same AOR stays."""
    server, url = relay
    phone, laptop = await client(url, 'phone'), await client(url, 'laptop')
    try:
        assert (await phone.register(user='carol')).status == 200
        assert (await laptop.register(user='carol')).status == 200
        assert len(server.registrar.lookup('sip:carol@example.com')) == 2
        response = await phone.register(user='carol', contacts=['*'], expires='0')
        assert response.status == 200
        assert [c.split(';expires')[0] for c in contacts_of(response)] == [
            '<sip:carol@laptop.invalid;transport=ws>']
        for contacts, expires, why in [(['*'], '60', 'Contact: * needs Expires: 0'),
                                       (['*'], None, 'Contact: * needs Expires: 0'),
                                       (['*', '<sip:carol@phone.invalid>'], '0',
                                        'Contact: * must be the only Contact')]:
            response = await phone.register(user='carol', contacts=contacts, expires=expires)
            assert response.status == 400 and why in response.reason
            assert 'NoneType' not in response.reason
    finally:
        await phone.ws.close()
        await laptop.ws.close()


# ---------------------------------------------------------------------------- ownership
async def test_another_connection_cannot_remove_or_steal_a_binding(relay):
    server, url = relay
    alice, mallory = await client(url, 'alice'), await client(url, 'mallory')
    try:
        assert (await alice.register()).status == 200
        # removing alice's exact Contact from another connection
        response = await mallory.register(user='alice', contacts=[
            '<sip:alice@alice.invalid;transport=ws>'], expires='0')
        assert response.status == 403 and 'another connection' in response.reason
        # claiming alice's .invalid host for in-dialog routing
        response = await mallory.register(user='mallory', contacts=[
            '<sip:mallory@alice.invalid;transport=ws>'])
        assert response.status == 403 and 'alice.invalid' in response.reason
        assert [b.connection.remote_addr for b in server.registrar.lookup('sip:alice@example.com')]
        assert server.contacts.get('alice.invalid') is not None
        # alice herself still refreshes and removes
        assert (await alice.register(expires='30')).status == 200
        assert contacts_of(await alice.register(expires='0')) == []
    finally:
        await alice.ws.close()
        await mallory.ws.close()


OUTBOUND = ('Supported: outbound, path',)


async def test_a_query_does_not_reveal_another_connections_flow(relay):
    _, url = relay
    alice, mallory = await client(url, 'alice'), await client(url, 'mallory')
    try:
        flow = '<sip:alice@alice.invalid;transport=ws;ob>;reg-id=1;+sip.instance="<urn:uuid:a1>"'
        own = await alice.register(contacts=[flow], extra=OUTBOUND)
        assert own.status == 200 and 'reg-id=1' in contacts_of(own)[0]
        query = await mallory.register(user='alice', contacts=[], expires=None)
        assert query.status == 200
        [seen] = contacts_of(query)
        assert 'alice.invalid' in seen and 'reg-id' not in seen and 'sip.instance' not in seen
    finally:
        await alice.ws.close()
        await mallory.ws.close()


async def test_a_flow_replacement_from_a_new_connection_takes_the_binding_and_host(
        relay, caplog):
    """RFC 5626 reconnect: the old connection is half-open (never closed), the client
    comes back over a new one with the same instance and reg-id: accepted, logged with
    both addresses, and in-dialog requests for its Contact host follow the new connection."""
    server, url = relay
    old, new = await client(url, 'bob'), await client(url, 'bob')
    flow = '<sip:bob@bob.invalid;transport=ws;ob>;reg-id=1;+sip.instance="<urn:uuid:b1>"'
    try:
        assert (await old.register(contacts=[flow], extra=OUTBOUND)).status == 200
        old.ws.transport.pause_reading()                     # half-open: no longer reads
        caplog.set_level('INFO', logger='aiosip_ws.serve')
        response = await new.register(contacts=[flow], extra=OUTBOUND, call_id='reg-bob-2')
        assert response.status == 200
        [binding] = server.registrar.lookup('sip:bob@example.com')
        assert binding.connection is not None and server.contacts.get('bob.invalid') is binding.connection
        moved = [r.getMessage() for r in caplog.records if 'flow' in r.getMessage()]
        assert any('moved from 127.0.0.1:' in m and ' to 127.0.0.1:' in m for m in moved), moved
        # an in-dialog request for bob's Contact host now goes over the new connection
        alice = await client(url, 'alice')
        try:
            await alice.ws.send('INFO sip:bob@bob.invalid;transport=ws SIP/2.0\r\n'
                                'Via: SIP/2.0/WS alice.invalid;branch=z9hG4bKinfo\r\n'
                                'Max-Forwards: 70\r\nFrom: <sip:alice@example.com>;tag=a\r\n'
                                'To: <sip:bob@example.com>;tag=b\r\nCall-ID: dlg-1\r\n'
                                'CSeq: 5 INFO\r\n\r\n')
            forwarded = parse(await asyncio.wait_for(new.ws.recv(), 5))
            assert forwarded.method == 'INFO' and forwarded.get('Call-ID') == 'dlg-1'
        finally:
            await alice.ws.close()
    finally:
        old.ws.transport.abort()
        await new.ws.close()


# ---------------------------------------------------------------------------- caps
async def test_the_contact_cap_per_aor_refuses_more_and_keeps_refreshes():
    server = RelayServer(registrar=Registrar(max_contacts=3))
    [listener] = await server.start('ws://127.0.0.1:0/')
    devices = [await client(listener.bound_url, 'dev%d' % i) for i in range(5)]
    try:
        for device in devices[:3]:
            assert (await device.register(user='dave')).status == 200
        refused = await devices[3].register(user='dave')
        assert refused.status == 403 and 'at most 3 bindings' in refused.reason
        assert (await devices[0].register(user='dave', expires='120')).status == 200  # refresh
        assert (await devices[1].register(user='dave', expires='0')).status == 200    # removal
        assert (await devices[4].register(user='dave')).status == 200                 # room again
        assert len(server.registrar.lookup('sip:dave@example.com')) == 3
    finally:
        for device in devices:
            await device.ws.close()
        await server.close()


async def test_a_register_with_a_thousand_contacts_is_refused_fast_and_stays_linear(relay):
    """1,000 Contacts in one REGISTER: answered (403, over the cap) in well under 50 ms of
    loop time, every time, and the registrar does not grow."""
    server, url = relay
    alice = await client(url, 'alice')
    contacts = ['<sip:alice@h%d.invalid;transport=ws>' % i for i in range(1000)]
    try:
        times = []
        for _ in range(5):
            started = time.perf_counter()
            response = await alice.register(contacts=contacts)
            times.append(time.perf_counter() - started)
            assert response.status == 403
        assert len(server.registrar) == 0
        assert max(times) < 0.5 and max(times[1:]) < 2 * min(times) + 0.05, times
        # the work itself, without the network: linear, far below 50 ms
        registrar = Registrar()
        message = SIPMessage(method='REGISTER', uri='sip:example.com', headers=[
            ('Via', 'SIP/2.0/WS h.invalid;branch=z9hG4bKx'), ('From', '<sip:a@example.com>;tag=1'),
            ('To', '<sip:a@example.com>'), ('Call-ID', 'c'), ('CSeq', '1 REGISTER'),
            *(('Contact', c) for c in contacts), ('Expires', '60')])
        started = time.perf_counter()
        assert registrar.register(message, _Conn()).status == 403
        assert time.perf_counter() - started < 0.05
    finally:
        await alice.ws.close()


class _Recorder:
    """A stand-in connection for driving serve's routes without sockets: records sends."""

    via_transport, via_host = 'WS', '127.0.0.1:5'
    remote_addr = local_addr = ('127.0.0.1', 5)
    is_open = True

    transport_name = 'ws'

    def __init__(self) -> None:
        self.state: dict = {}
        self.flow_state = None
        self.sent: list[SIPMessage] = []
        self.options = RelayServer().server_options

    def send(self, message: SIPMessage) -> bool:
        self.sent.append(message)
        return True

    async def close(self, code: int = 1000, reason: str = '') -> None:
        self.is_open = False


HEADERS = ('Expires', 'Max-Forwards', 'CSeq', 'Require', 'Contact', 'To', 'Supported')


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(method=st.sampled_from(['REGISTER', 'MESSAGE', 'OPTIONS', 'INVITE', 'BYE', 'CANCEL']),
       name=st.sampled_from(HEADERS),
       value=st.text(alphabet=st.characters(blacklist_categories=('Cs',),
                                            blacklist_characters='\r\n'), max_size=40)
       | st.integers(min_value=0, max_value=10 ** 40).map(str))
def test_no_header_value_makes_a_route_raise(method, name, value):
    """Arbitrary values of the headers serve reads, through its real routes (no sockets):
    every request gets exactly one answer or is absorbed, and nothing raises."""
    async def drive() -> None:
        server = RelayServer()
        conn = _Recorder()
        server.connection_made(conn)
        headers = [('Via', 'SIP/2.0/WS h.invalid;branch=z9hG4bKh'), ('Max-Forwards', '70'),
                   ('From', '<sip:h@example.com>;tag=1'), ('To', '<sip:h@example.com>'),
                   ('Call-ID', 'hyp'), ('CSeq', '1 %s' % method),
                   ('Contact', '<sip:h@h.invalid;transport=ws>')]
        headers = [(k, v) for k, v in headers if k != name] + [(name, value)]
        request = SIPMessage(method=method, uri='sip:h@example.com', headers=headers)
        try:
            request.cseq                                  # noqa: B018 - the parser's check
        except SIPParseError:
            return                                        # the codec refuses it before serve
        server.message_received(conn, request)
        await asyncio.sleep(0)
        assert len(conn.sent) <= 1
        for answer in conn.sent:
            assert answer.status is not None and 100 <= answer.status < 700
            assert answer.status != 500, answer.reason      # 500: a route raised
            assert 'Traceback' not in answer.reason and 'object has no attribute' not in answer.reason
        await server.close()

    asyncio.run(drive())


async def test_an_unsupported_require_gets_420_naming_the_tags(relay):
    """RFC 3261 §8.2.2.3: serve supports outbound and path; any other Require tag gets 420
    with Unsupported."""
    _, url = relay
    alice = await client(url, 'alice')
    options = ('OPTIONS sip:example.com SIP/2.0\r\nVia: SIP/2.0/WS alice.invalid;branch=z9hG4bKq%d\r\n'
               'Max-Forwards: 70\r\nFrom: <sip:alice@example.com>;tag=q\r\nTo: <sip:example.com>\r\n'
               'Call-ID: req%d\r\nCSeq: 1 OPTIONS\r\nRequire: %s\r\n\r\n')
    try:
        refused = await alice.request(options % (1, 1, 'Outbound, 100rel, timer'))
        assert refused.status == 420 and refused.get('Unsupported') == '100rel, timer'
        assert (await alice.request(options % (2, 2, 'outbound, path'))).status == 200
    finally:
        await alice.ws.close()


def test_the_per_connection_index_shrinks_with_the_bindings():
    """A connection that registers and removes many AORs leaves no trace in the index."""
    registrar, conn = Registrar(), _Conn()
    for n in range(200):
        message = register_message('60')
        message.set('To', '<sip:u%d@example.com>' % n)
        assert registrar.register(message, conn).status == 200
    assert len(registrar._aors_of[conn]) == 200
    for n in range(200):
        message = register_message('0')
        message.set('To', '<sip:u%d@example.com>' % n)
        message.set('CSeq', '2 REGISTER')
        assert registrar.register(message, conn).status == 200
    assert conn not in registrar._aors_of and len(registrar) == 0
