"""RFC 5626 §5.2 flow tokens, sans I/O: what an edge proxy puts in the user part of its
Path (and Record-Route) so that a request coming back from the registrar names the client
connection it is for, without the edge keeping any state for it.

A token is ``base32(start || flow || mac)``: the edge's start (six random bytes drawn when
it starts), the connection's number, and an HMAC-SHA256 over both, cut to 10 bytes, with
the edge's secret (``--flow-secret``, shared by the edges behind one registrar, or random
per start).  :meth:`FlowTokens.check` says which of three things a token is: forged or
damaged (the request gets 403), valid but of another start or of a connection that is
gone (430 Flow Failed, RFC 5626 §5.3), or the number of a connection of this start.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os

from ..errors import ConfigurationError, FlowTokenError

__all__ = ['FlowTokens', 'FlowTokenError']

_MAC = 10
_START = 6
_FLOW = 8


class FlowTokens:
    """Issues and checks the flow tokens of one edge start."""

    def __init__(self, secret: bytes | None = None, start: bytes | None = None) -> None:
        self.secret = secret if secret else os.urandom(32)
        self.start = start if start is not None else os.urandom(_START)
        if len(self.start) != _START:
            raise ConfigurationError('a start identifier is %d bytes' % _START)

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self.secret, payload, hashlib.sha256).digest()[:_MAC]

    def issue(self, flow: int) -> str:
        """The token of connection number ``flow`` (lower-case base32, a SIP user part)."""
        payload = self.start + flow.to_bytes(_FLOW, 'big')
        return base64.b32encode(payload + self._mac(payload)).decode('ascii').rstrip('=').lower()

    @staticmethod
    def looks_like(text: str) -> bool:
        """Whether ``text`` has the shape of a token (so a Route user part is one of ours)."""
        return len(text) == 39 and text.isalnum()

    def check(self, token: str) -> int | None:
        """The connection number of a token of this start; None for a valid token of an
        earlier start (or of another edge sharing the secret); FlowTokenError if forged."""
        padded = token.upper() + '=' * (-len(token) % 8)
        try:
            raw = base64.b32decode(padded)
        except (binascii.Error, ValueError):
            raise FlowTokenError('%r is not a flow token' % token[:40], status=403) from None
        if len(raw) != _START + _FLOW + _MAC:
            raise FlowTokenError('a flow token of the wrong length', status=403)
        payload, mac = raw[:-_MAC], raw[-_MAC:]
        if not hmac.compare_digest(mac, self._mac(payload)):
            raise FlowTokenError('a flow token that fails its HMAC', status=403)
        if payload[:_START] != self.start:
            return None
        return int.from_bytes(payload[_START:], 'big')
