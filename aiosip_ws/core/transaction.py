"""Transactions as data (RFC 3261 §17): identifiers, matching keys and timer values.

No clocks and no I/O: the transport layers schedule the timers; this module says
how long they are and what matches what.
"""
from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

from .grammar import MAGIC_COOKIE

if TYPE_CHECKING:
    from .codec import SIPMessage

__all__ = ['T1', 'T2', 'T4', 'TIMER_B', 'TIMER_F', 'new_branch', 'new_tag', 'new_call_id',
           'cancel_key']

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
    return MAGIC_COOKIE + secrets.token_hex(8)


def new_tag() -> str:
    """A From/To tag with 48 random bits (RFC 3261 §19.3 asks for at least 32)."""
    return secrets.token_hex(6)


def new_call_id() -> str:
    """A Call-ID with 80 random bits (RFC 3261 §8.1.1.4)."""
    return secrets.token_hex(10)


def cancel_key(request: SIPMessage) -> tuple[str, int, str]:
    """What ties a CANCEL to its INVITE: Call-ID, CSeq number, top Via branch (RFC 3261 §9.1)."""
    top = request.top_via
    return (request.get('Call-ID') or '', request.cseq[0], (top.branch if top else '') or '')
