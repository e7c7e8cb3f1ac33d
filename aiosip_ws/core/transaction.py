"""Transactions as data (RFC 3261 §17, RFC 6026): identifiers, matching keys, timer
values and the four transaction state machines.

No clocks and no I/O: the transport layers schedule the timers and send the messages;
this module says how long the timers are, what matches what, and, in
:class:`ClientTransaction` and :class:`ServerTransaction`, what to do on each event.
"""
from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .grammar import MAGIC_COOKIE
from .sipuri import NameAddr

if TYPE_CHECKING:
    from .codec import SIPMessage

__all__ = ['T1', 'T2', 'T4', 'TIMER_B', 'TIMER_F', 'new_branch', 'new_tag', 'new_call_id',
           'cancel_key', 'loop_key', 'ClientTransaction', 'ServerTransaction', 'Send', 'Start', 'Stop',
           'Deliver', 'Timeout', 'Action', 'client_key', 'server_key']

#: RFC 3261 §17.1.1.1 round-trip estimate, seconds
T1 = 0.5
#: RFC 3261 §17.1.2.2 maximum retransmit interval for non-INVITE requests, seconds
T2 = 4.0
#: RFC 3261 §17.1.2.2 maximum time a message stays in the network, seconds
T4 = 5.0
#: INVITE transaction timeout (RFC 3261 §17.1.1.2)
TIMER_B = 64 * T1
#: non-INVITE transaction timeout (RFC 3261 §17.1.2.2)
TIMER_F = 64 * T1


def new_branch() -> str:
    """An RFC 3261 §8.1.1.7 branch: the magic cookie and 64 random bits."""
    return MAGIC_COOKIE + os.urandom(8).hex()          # secrets.token_hex, minus 3 calls


def new_tag() -> str:
    """A From/To tag with 48 random bits (RFC 3261 §19.3 asks for at least 32)."""
    return os.urandom(6).hex()


def new_call_id() -> str:
    """A Call-ID with 80 random bits (RFC 3261 §8.1.1.4)."""
    return secrets.token_hex(10)


def loop_key(request: SIPMessage) -> str:
    """What a proxy puts in its branch to detect loops (RFC 3261 §16.6 step 8, §16.3 step
    4): a hash of the Request-URI, the From and To tags, the Call-ID and the CSeq number.
    A request that comes back with a Via of ours whose branch carries the same value has
    looped; one whose Request-URI changed on the way is spiralling, and goes on."""
    tags = []
    for name in ('From', 'To'):
        try:
            tags.append(NameAddr.parse(request.get(name) or '').tag or '')
        except ValueError:
            tags.append('')
    cseq = (request.get('CSeq') or '').split(None, 1)[0] if request.get('CSeq') else ''
    text = '\n'.join([request.uri or '', *tags, request.get('Call-ID') or '', cseq])
    return hashlib.sha1(text.encode('utf-8', 'surrogateescape')).hexdigest()[:16]


def cancel_key(request: SIPMessage) -> tuple[str, int, str]:
    """What ties a CANCEL to its INVITE: Call-ID, CSeq number, top Via branch (RFC 3261 §9.1)."""
    top = request.top_via
    return (request.get('Call-ID') or '', request.cseq[0], (top.branch if top else '') or '')


# ---------------------------------------------------------------------------- state machines
# RFC 3261 §17 with RFC 6026's Accepted state, sans-I/O: each transaction takes events
# (a message received, a timer fired, the response the TU sends) and answers with a list
# of actions for its owner to carry out (send, start or cancel a timer, deliver to the
# TU, report a timeout).  Timers are named after the RFC's letters; the owner schedules
# them and calls ``timer(name)`` when one fires.  Over a reliable transport (TCP, TLS,
# WebSocket) the retransmission timers never start and the wait timers are zero.

def _long(t1: float) -> float:
    """64*T1: Timers B, F, H, J, L and M."""
    return 64 * t1


@dataclass(frozen=True)
class Send:
    """Put ``message`` on the wire (a first send or a retransmission)."""

    message: SIPMessage


@dataclass(frozen=True)
class Start:
    """Start (or restart) timer ``name``, firing after ``seconds``."""

    name: str
    seconds: float


@dataclass(frozen=True)
class Stop:
    """Cancel timer ``name`` if it runs."""

    name: str


@dataclass(frozen=True)
class Deliver:
    """Pass ``message`` to the transaction user (a response, or an ACK to a 2xx)."""

    message: SIPMessage


@dataclass(frozen=True)
class Timeout:
    """The transaction timed out (Timer B, F or H): the TU treats it as a 408."""

    timer: str


Action = Send | Start | Stop | Deliver | Timeout


class _Transaction:
    #: state names of RFC 3261 §17 (and RFC 6026's "accepted")
    state: str

    def __init__(self, request: SIPMessage, *, reliable: bool, t1: float = T1,
                 t2: float = T2, t4: float = T4) -> None:
        self.request = request
        self.method = request.method or ''
        self.reliable = reliable
        self.t1, self.t2, self.t4 = t1, t2, t4
        self._interval = t1

    @property
    def terminated(self) -> bool:
        return self.state == 'terminated'

    def _end(self, out: list[Action]) -> list[Action]:
        self.state = 'terminated'
        return out

    def _wait(self, name: str, seconds: float, out: list[Action]) -> list[Action]:
        """Start the wait timer ``name`` (zero over a reliable transport: ends now)."""
        if self.reliable:
            self.state = 'terminated'
            return out
        out.append(Start(name, seconds))
        return out


class ClientTransaction(_Transaction):
    """An INVITE (§17.1.1, RFC 6026 §7.2) or non-INVITE (§17.1.2) client transaction.

    ``start()`` sends the request; ``response(msg)`` and ``timer(name)`` advance it.
    A non-2xx final response to INVITE is ACKed here (the ACK is built by the owner's
    ``ack`` callable, given the response, since only it knows the Request-URI and Route).
    """

    def __init__(self, request: SIPMessage, *, reliable: bool, t1: float = T1,
                 t2: float = T2, t4: float = T4) -> None:
        super().__init__(request, reliable=reliable, t1=t1, t2=t2, t4=t4)
        self.invite = self.method == 'INVITE'
        self.state = 'calling' if self.invite else 'trying'
        self.ack: SIPMessage | None = None

    def start(self) -> list[Action]:
        out: list[Action] = [Send(self.request)]
        if not self.reliable:
            out.append(Start('A' if self.invite else 'E', self.t1))
        out.append(Start('B' if self.invite else 'F', _long(self.t1)))
        return out

    def response(self, message: SIPMessage, ack: SIPMessage | None = None) -> list[Action]:
        """A response matched to this transaction; ``ack`` is the ACK to send for a
        non-2xx final response to INVITE (built by the caller)."""
        status = message.status or 0
        if self.state == 'terminated':
            return []
        if self.invite:
            return self._invite_response(status, message, ack)
        if self.state == 'completed':
            return []                                      # retransmission: absorbed
        if status < 200:
            self.state = 'proceeding'
            return [Deliver(message)]
        self.state = 'completed'
        out: list[Action] = [Stop('E'), Stop('F'), Deliver(message)]
        return self._wait('K', self.t4, out)

    def _invite_response(self, status: int, message: SIPMessage,
                         ack: SIPMessage | None) -> list[Action]:
        if self.state in ('calling', 'proceeding'):
            if status < 200:
                self.state = 'proceeding'
                return [Stop('A'), Deliver(message)]
            if status < 300:                                # RFC 6026 §8.4: Accepted
                self.state = 'accepted'
                return [Stop('A'), Stop('B'), Deliver(message), Start('M', _long(self.t1))]
            self.state = 'completed'
            self.ack = ack
            out: list[Action] = [Stop('A'), Stop('B')]
            if ack is not None:
                out.append(Send(ack))
            out.append(Deliver(message))
            return self._wait('D', max(32.0, _long(self.t1) / 2), out)
        if self.state == 'accepted':
            # RFC 6026 §8.4: 2xx retransmissions (and forked 2xx) go to the TU
            return [Deliver(message)] if 200 <= status < 300 else []
        if self.state == 'completed' and status >= 300 and self.ack is not None:
            return [Send(self.ack)]                          # §17.1.1.2: ACK again
        return []

    def timer(self, name: str) -> list[Action]:
        if self.state == 'terminated':
            return []
        if name in ('A', 'E'):
            if self.state not in ('calling', 'trying', 'proceeding') or (
                    name == 'A' and self.state != 'calling'):
                return []
            if name == 'A':
                self._interval *= 2
            else:
                self._interval = self.t2 if self.state == 'proceeding' else min(
                    self._interval * 2, self.t2)
            return [Send(self.request), Start(name, self._interval)]
        if name in ('B', 'F'):
            if self.state in ('calling', 'trying', 'proceeding'):
                return self._end([Stop('A' if name == 'B' else 'E'), Timeout(name)])
            return []
        if name in ('D', 'K', 'M'):
            return self._end([])
        return []

    def transport_error(self) -> list[Action]:
        """§17.1.1.2/§17.1.2.2: a failed send ends the transaction as a 503 would."""
        if self.state == 'terminated':
            return []
        return self._end([Stop('A'), Stop('B'), Stop('E'), Stop('F'), Timeout('transport')])


class ServerTransaction(_Transaction):
    """An INVITE (§17.2.1, RFC 6026 §7.1) or non-INVITE (§17.2.2) server transaction.

    ``request(msg)`` takes a retransmission of the request (or, for INVITE, its ACK);
    ``respond(msg)`` sends what the TU answers; ``timer(name)`` advances it.
    """

    def __init__(self, request: SIPMessage, *, reliable: bool, t1: float = T1,
                 t2: float = T2, t4: float = T4) -> None:
        super().__init__(request, reliable=reliable, t1=t1, t2=t2, t4=t4)
        self.invite = self.method == 'INVITE'
        self.state = 'proceeding' if self.invite else 'trying'
        self.last: SIPMessage | None = None

    def request_again(self, message: SIPMessage) -> list[Action]:
        """A request matched to this transaction: a retransmission, or the ACK."""
        if message.method == 'ACK':
            if self.invite and self.state == 'completed':
                self.state = 'confirmed'
                return self._wait('I', self.t4, [Stop('G'), Stop('H')])
            if self.invite and self.state == 'accepted':
                return [Deliver(message)]                   # the ACK of a 2xx: the TU's
            return []
        if self.state in ('proceeding', 'completed') and self.last is not None:
            return [Send(self.last)]                        # §17.2.1/§17.2.2: resend
        return []                                           # trying, accepted, confirmed

    def respond(self, message: SIPMessage) -> list[Action]:
        status = message.status or 0
        if self.state in ('completed', 'confirmed', 'terminated'):
            return []                                       # the final response is sent
        if self.state == 'accepted':
            # RFC 6026 §8.7: a proxy forwards 2xx retransmissions (and other 2xx)
            return [Send(message)] if 200 <= status < 300 else []
        self.last = message
        if status < 200:
            self.state = 'proceeding'
            return [Send(message)]
        if self.invite and status < 300:
            self.state = 'accepted'
            return [Send(message), Start('L', _long(self.t1))]
        self.state = 'completed'
        out: list[Action] = [Send(message)]
        if not self.invite:
            return self._wait('J', _long(self.t1), out)
        if not self.reliable:
            out.append(Start('G', self.t1))
        out.append(Start('H', _long(self.t1)))
        return out

    def timer(self, name: str) -> list[Action]:
        if self.state == 'terminated':
            return []
        if name == 'G' and self.state == 'completed' and self.last is not None:
            self._interval = min(self._interval * 2, self.t2)
            return [Send(self.last), Start('G', self._interval)]
        if name == 'H' and self.state == 'completed':
            return self._end([Stop('G'), Timeout('H')])     # no ACK came
        if name in ('I', 'J', 'L'):
            return self._end([])
        return []

    def transport_error(self) -> list[Action]:
        if self.state == 'terminated':
            return []
        return self._end([Stop('G'), Stop('H'), Timeout('transport')])


def client_key(message: SIPMessage) -> tuple[str, str]:
    """What matches a response to its client transaction (§17.1.3): the top Via's branch
    and the CSeq method."""
    top = message.top_via
    return ((top.branch if top else '') or '', message.cseq[1])


def server_key(message: SIPMessage) -> tuple[str, str, str]:
    """What matches a request to its server transaction (§17.2.3, RFC 3261 branches only):
    branch, sent-by and method (an ACK matches its INVITE's transaction).  A response
    gives the key of the transaction it answers (its Via and CSeq are the request's)."""
    top = message.top_via
    method = (message.method or '') if message.is_request else message.cseq[1]
    sent_by = '' if top is None else top.host if top.port is None else '%s:%d' % (top.host,
                                                                                 top.port)
    return ((top.branch if top else '') or '', sent_by.lower(),
            'INVITE' if method == 'ACK' else method)
