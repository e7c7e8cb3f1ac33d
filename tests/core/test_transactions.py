"""The RFC 3261 §17 transaction state machines with RFC 6026's Accepted state
(aiosip_ws.core.transaction), driven by a clock that is only a number: every timer, every
retransmission interval and every state change is checked against the RFC's figures."""
from __future__ import annotations

import pytest

from aiosip_ws.core.codec import make_response, parse
from aiosip_ws.core.transaction import (
    T1,
    T2,
    T4,
    ClientTransaction,
    Deliver,
    Send,
    ServerTransaction,
    Start,
    Stop,
    Timeout,
    client_key,
    server_key,
)


def request(method='INVITE'):
    return parse('%s sip:bob@example.com SIP/2.0\r\n'
                 'Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKt1\r\nMax-Forwards: 70\r\n'
                 'From: <sip:alice@example.com>;tag=a\r\nTo: <sip:bob@example.com>\r\n'
                 'Call-ID: t1\r\nCSeq: 1 %s\r\nContact: <sip:alice@192.0.2.1>\r\n\r\n'
                 % (method, method))


ACK = ('ACK sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKt1\r\n'
       'Max-Forwards: 70\r\nFrom: <sip:alice@example.com>;tag=a\r\n'
       'To: <sip:bob@example.com>;tag=b\r\nCall-ID: t1\r\nCSeq: 1 ACK\r\n\r\n')


class Clock:
    """Carries out a transaction's actions: timers on a pretend clock, sends recorded."""

    def __init__(self, transaction):
        self.transaction = transaction
        self.now = 0.0
        self.timers: dict[str, float] = {}
        self.sent: list[tuple[float, str]] = []
        self.delivered: list = []
        self.timeouts: list[str] = []

    def run(self, actions):
        for action in actions:
            if isinstance(action, Send):
                line = action.message.start_line()
                self.sent.append((round(self.now, 3), line))
            elif isinstance(action, Start):
                self.timers[action.name] = self.now + action.seconds
            elif isinstance(action, Stop):
                self.timers.pop(action.name, None)
            elif isinstance(action, Deliver):
                self.delivered.append(action.message)
            elif isinstance(action, Timeout):
                self.timeouts.append(action.timer)
        return self

    def advance(self, until):
        """Fire every timer due up to ``until``, in order."""
        while True:
            due = [(at, name) for name, at in self.timers.items() if at <= until]
            if not due:
                break
            at, name = min(due)
            del self.timers[name]
            self.now = at
            self.run(self.transaction.timer(name))
        self.now = until
        return self

    def send_times(self):
        return [at for at, _ in self.sent]


def test_invite_client_over_udp_doubles_timer_a_until_timer_b():
    txn = ClientTransaction(request(), reliable=False)
    clock = Clock(txn).run(txn.start())
    clock.advance(40)
    # §17.1.1.2: sends at 0, T1, 3 T1, 7 T1 ... until Timer B (64*T1 = 32 s)
    assert clock.send_times() == [0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert clock.timeouts == ['B'] and txn.terminated and not clock.delivered


def test_invite_client_provisional_stops_retransmission_and_2xx_is_accepted():
    txn = ClientTransaction(request(), reliable=False)
    clock = Clock(txn).run(txn.start())
    clock.advance(0.7)
    clock.run(txn.response(make_response(txn.request, 180, to_tag='b')))
    assert txn.state == 'proceeding'
    clock.advance(20)
    assert clock.send_times() == [0.0, 0.5]                 # no retransmission after 180
    ok = make_response(txn.request, 200, to_tag='b')
    clock.run(txn.response(ok))
    assert txn.state == 'accepted' and 'B' not in clock.timers
    clock.run(txn.response(ok))                              # RFC 6026: the TU gets it too
    assert [m.status for m in clock.delivered] == [180, 200, 200]
    clock.advance(20 + 64 * T1)                              # Timer M
    assert txn.terminated and clock.timeouts == []


def test_invite_client_acks_a_failure_again_for_each_retransmission_then_timer_d():
    txn = ClientTransaction(request(), reliable=False)
    clock = Clock(txn).run(txn.start())
    busy = make_response(txn.request, 486, to_tag='b')
    ack = parse(ACK)
    clock.run(txn.response(busy, ack=ack))
    clock.run(txn.response(busy, ack=ack))                   # retransmitted by the UAS
    assert [line for _, line in clock.sent] == ['INVITE sip:bob@example.com SIP/2.0'] + [
        'ACK sip:bob@example.com SIP/2.0'] * 2
    assert [m.status for m in clock.delivered] == [486]      # the TU sees it once
    assert txn.state == 'completed'
    clock.advance(31.9)
    assert not txn.terminated
    clock.advance(32.1)                                      # Timer D: at least 32 s
    assert txn.terminated and clock.send_times() == [0.0, 0.0, 0.0]


def test_reliable_transports_never_retransmit_and_end_at_once():
    txn = ClientTransaction(request(), reliable=True)
    clock = Clock(txn).run(txn.start())
    assert set(clock.timers) == {'B'}
    clock.run(txn.response(make_response(txn.request, 404, to_tag='b')))
    assert txn.terminated                                    # Timer D is zero
    txn = ClientTransaction(request('OPTIONS'), reliable=True)
    clock = Clock(txn).run(txn.start())
    assert set(clock.timers) == {'F'}
    clock.advance(40)
    assert clock.timeouts == ['F'] and clock.send_times() == [0.0]


def test_non_invite_client_caps_timer_e_at_t2_until_timer_f():
    txn = ClientTransaction(request('MESSAGE'), reliable=False)
    clock = Clock(txn).run(txn.start())
    clock.advance(40)
    # §17.1.2.2: intervals T1, 2T1, 4T1, then T2 (4 s) until Timer F at 32 s
    assert clock.send_times() == [0.0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert clock.timeouts == ['F']


def test_non_invite_client_in_proceeding_retransmits_every_t2_then_waits_timer_k():
    txn = ClientTransaction(request('MESSAGE'), reliable=False)
    clock = Clock(txn).run(txn.start())
    clock.run(txn.response(make_response(txn.request, 100)))
    assert txn.state == 'proceeding'
    clock.advance(8.6)                 # E fires at 0.5 (as set), then every T2
    assert clock.send_times() == [0.0, 0.5, 4.5, 8.5]
    ok = make_response(txn.request, 200, to_tag='b')
    clock.run(txn.response(ok))
    clock.run(txn.response(ok))                              # absorbed in Completed
    assert [m.status for m in clock.delivered] == [100, 200] and txn.state == 'completed'
    clock.advance(8.6 + T4)
    assert txn.terminated and clock.timeouts == []


def test_invite_server_resends_its_responses_and_waits_for_the_ack():
    txn = ServerTransaction(request(), reliable=False)
    clock = Clock(txn)
    clock.run(txn.respond(make_response(txn.request, 180, to_tag='b')))
    clock.run(txn.request_again(request()))                  # retransmitted INVITE
    assert [line for _, line in clock.sent] == ['SIP/2.0 180 Ringing'] * 2
    clock.run(txn.respond(make_response(txn.request, 486, to_tag='b')))
    clock.advance(7.6)
    # §17.2.1: Timer G at T1, doubling up to T2
    assert clock.send_times()[2:] == [0.0, 0.5, 1.5, 3.5, 7.5]
    clock.run(txn.request_again(request()))                  # the INVITE again: 486 again
    assert clock.sent[-1] == (7.6, 'SIP/2.0 486 ')           # (no reason phrase given)
    ack = parse(ACK)
    assert server_key(ack) == server_key(txn.request)        # the ACK matches its INVITE
    clock.run(txn.request_again(ack))
    assert txn.state == 'confirmed' and 'G' not in clock.timers and 'H' not in clock.timers
    sent = len(clock.sent)
    clock.run(txn.request_again(request()))                  # absorbed in Confirmed
    assert len(clock.sent) == sent and not clock.delivered
    clock.advance(7.6 + T4)                                  # Timer I
    assert txn.terminated and clock.timeouts == []


def test_invite_server_without_an_ack_times_out_on_timer_h():
    txn = ServerTransaction(request(), reliable=False)
    clock = Clock(txn).run(txn.respond(make_response(txn.request, 500, to_tag='b')))
    clock.advance(40)
    assert clock.timeouts == ['H'] and txn.terminated
    assert clock.send_times() == [0.0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]


def test_invite_server_accepted_state_forwards_2xx_and_passes_the_ack_up():
    """RFC 6026 §7.1: after a 2xx the transaction stays (Timer L) so that INVITE
    retransmissions are absorbed, and a proxy forwards further 2xx through it."""
    txn = ServerTransaction(request(), reliable=False)
    clock = Clock(txn)
    ok = make_response(txn.request, 200, to_tag='b')
    clock.run(txn.respond(ok))
    assert txn.state == 'accepted' and clock.timers == {'L': 64 * T1}
    clock.run(txn.request_again(request()))                  # absorbed: the UAS core resends
    clock.run(txn.respond(ok))                               # a 2xx retransmission forwarded
    clock.run(txn.respond(make_response(txn.request, 486, to_tag='c')))   # never after a 2xx
    assert [line for _, line in clock.sent] == ['SIP/2.0 200 OK'] * 2
    clock.run(txn.request_again(parse(ACK)))
    assert [m.method for m in clock.delivered] == ['ACK']
    clock.advance(64 * T1)
    assert txn.terminated


def test_non_invite_server_absorbs_then_repeats_its_final_response_until_timer_j():
    txn = ServerTransaction(request('MESSAGE'), reliable=False)
    clock = Clock(txn)
    clock.run(txn.request_again(request('MESSAGE')))         # Trying: nothing to resend
    assert clock.sent == []
    clock.run(txn.respond(make_response(txn.request, 200, to_tag='b')))
    clock.run(txn.request_again(request('MESSAGE')))
    assert [line for _, line in clock.sent] == ['SIP/2.0 200 OK'] * 2
    clock.run(txn.respond(make_response(txn.request, 500, to_tag='b')))  # too late: ignored
    assert len(clock.sent) == 2
    clock.advance(64 * T1 - 0.1)
    assert not txn.terminated
    clock.advance(64 * T1)
    assert txn.terminated
    reliable = ServerTransaction(request('MESSAGE'), reliable=True)
    reliable.respond(make_response(reliable.request, 200, to_tag='b'))
    assert reliable.terminated                               # Timer J is zero


@pytest.mark.parametrize('kind', [ClientTransaction, ServerTransaction])
def test_a_transport_error_ends_the_transaction(kind):
    txn = kind(request(), reliable=False)
    clock = Clock(txn)
    if kind is ClientTransaction:
        clock.run(txn.start())
    else:
        clock.run(txn.respond(make_response(txn.request, 486, to_tag='b')))
    clock.run(txn.transport_error())
    assert clock.timeouts == ['transport'] and txn.terminated and clock.timers == {}
    assert txn.transport_error() == [] and txn.timer('B') == []


def test_matching_keys():
    invite = request()
    response = make_response(invite, 200, to_tag='b')
    assert client_key(response) == ('z9hG4bKt1', 'INVITE')
    assert server_key(invite) == ('z9hG4bKt1', '192.0.2.1:5060', 'INVITE')
    assert server_key(request('CANCEL')) == ('z9hG4bKt1', '192.0.2.1:5060', 'CANCEL')
    assert T2 == 4.0
