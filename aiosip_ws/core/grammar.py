"""RFC 3261 grammar pieces and protocol constants, each named once.

Everything that several layers need to agree on lives here: the token
character set, the branch magic cookie, the default Max-Forwards, and the rules
that tie URI schemes, ``transport=`` values, WebSocket URL schemes, Via
transports and default ports together (RFC 7118 §5.2, §5.5, §9.2; RFC 6455 §3).
"""
from __future__ import annotations

import ipaddress
import re

__all__ = [
    'TOKEN_CHARS', 'TOKEN_CLASS', 'TOKEN_RE', 'TOKEN_BYTES_RE', 'SCHEME_CLASS', 'MAGIC_COOKIE',
    'DEFAULT_MAX_FORWARDS', 'SIP_SCHEMES',
    'WS_SCHEMES', 'WS_TRANSPORT_PARAMS', 'WS_DEFAULT_PORTS', 'ws_scheme_for',
    'is_ws_url', 'is_sip_uri', 'strip_brackets', 'url_host', 'ip_literal',
]

#: RFC 3261 §25.1 ``token`` characters (besides ALPHA and DIGIT)
TOKEN_CHARS = "-.!%*_+`'~"
#: one token character, as a regular-expression class
TOKEN_CLASS = r'[A-Za-z0-9' + re.escape(TOKEN_CHARS) + r']'
#: a whole RFC 3261 token
TOKEN_RE = re.compile(TOKEN_CLASS + r'+\Z')
#: the same over bytes (the parser's view of a request line)
TOKEN_BYTES_RE = re.compile(TOKEN_CLASS.encode() + rb'+\Z')
#: RFC 3261 §19.1.1 ``scheme``: ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )
SCHEME_CLASS = r'[A-Za-z][A-Za-z0-9+.\-]*'

#: RFC 3261 §8.1.1.7: every branch this stack generates starts with it
MAGIC_COOKIE = 'z9hG4bK'
#: RFC 3261 §8.1.1.6: the Max-Forwards a UAC puts in a new request
DEFAULT_MAX_FORWARDS = 70

SIP_SCHEMES = frozenset({'sip', 'sips'})
#: the WebSocket URL schemes (RFC 6455 §3)
WS_SCHEMES = ('ws', 'wss')
#: ``transport=`` URI parameter values that select WebSocket, mapped to "TLS required".
#: RFC 7118 §5.2 defines only ``ws`` (used over TLS too); ``wss`` is a common alias.
WS_TRANSPORT_PARAMS = {'ws': False, 'wss': True}
#: the port a WebSocket URL or an RFC 7118 §5.5 target uses when none is given
WS_DEFAULT_PORTS = {'ws': 80, 'wss': 443}


def ws_scheme_for(uri_scheme: str, transport_param: str | None) -> str | None:
    """``ws``/``wss`` for a SIP URI's scheme and ``transport=`` value, else None.

    A ``sips:`` URI never goes over plain ``ws`` (RFC 7118 §9.2, RFC 3261 §26.2.2).
    """
    if transport_param is None:
        return None
    secure = WS_TRANSPORT_PARAMS.get(transport_param.lower())
    if secure is None:
        return None
    return 'wss' if secure or uri_scheme.lower() == 'sips' else 'ws'


def is_ws_url(value: object) -> bool:
    """True for a ``ws://`` or ``wss://`` URL string."""
    return isinstance(value, str) and value[:6].lower().startswith(('ws://', 'wss://'))


def is_sip_uri(text: str) -> bool:
    """True if ``text`` looks like a ``sip:``/``sips:`` URI (rather than a ws:// URL)."""
    head = text.strip().lstrip('<').lower()
    return head.startswith(('sip:', 'sips:'))


def strip_brackets(host: str) -> str:
    """``[::1]`` -> ``::1``; any other host unchanged."""
    if host.startswith('[') and host.endswith(']'):
        return host[1:-1]
    return host


def url_host(host: str) -> str:
    """``host`` as written in a URL authority or a SIP URI (IPv6 literals bracketed)."""
    host = strip_brackets(host)
    return '[%s]' % host if ':' in host else host


def ip_literal(host: str) -> str | None:
    """The normalised IP address if ``host`` is a numeric (possibly bracketed) address."""
    try:
        return str(ipaddress.ip_address(strip_brackets(host)))
    except ValueError:
        return None
