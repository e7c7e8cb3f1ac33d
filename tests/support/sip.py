"""SIP requests that tests send from raw WebSocket clients, built once."""
from __future__ import annotations

import secrets


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
