"""RFC 3261 grammar pieces and protocol constants, each named once.

Everything that several layers need to agree on lives here: the token
character set, the branch magic cookie, the default Max-Forwards, and the rules
that tie URI schemes, ``transport=`` values, WebSocket URL schemes, Via
transports and default ports together (RFC 7118 §5.2, §5.5, §9.2; RFC 6455 §3).
"""
from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from urllib.parse import urlsplit

from ..errors import ConfigurationError, SIPParseError

__all__ = [
    'TOKEN_CHARS', 'TOKEN_CLASS', 'TOKEN_RE', 'TOKEN_BYTES_RE', 'SCHEME_CLASS', 'MAGIC_COOKIE',
    'DEFAULT_MAX_FORWARDS', 'SIP_SCHEMES',
    'WS_SCHEMES', 'WS_TRANSPORT_PARAMS', 'WS_DEFAULT_PORTS', 'ws_scheme_for',
    'is_ws_url', 'is_sip_uri', 'strip_brackets', 'url_host', 'show_address', 'ip_literal',
    'ip_of',
    'DELTA_SECONDS_MAX', 'CSEQ_LIMIT', 'MAX_FORWARDS_MAX', 'parse_delta_seconds',
    'parse_cseq_number', 'parse_max_forwards', 'parse_content_length', 'parse_qvalue',
    'retry_after_seconds', 'parse_networks', 'address_in', 'NET_SCHEMES', 'is_net_url',
    'split_net_url',
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


def show_address(address: object) -> str:
    """A socket address for a log line: ``host:port`` (IPv6 bracketed), or as it is."""
    if isinstance(address, tuple) and len(address) >= 2 and isinstance(address[0], str):
        return '%s:%s' % (url_host(address[0]), address[1])
    return str(address)


def ip_literal(host: str) -> str | None:
    """The normalised IP address if ``host`` is a numeric (possibly bracketed) address."""
    try:
        return str(ipaddress.ip_address(strip_brackets(host)))
    except ValueError:
        return None


def ip_of(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The IP address a socket reported (``[v6]`` and a zone allowed); an IPv4-mapped
    IPv6 address as IPv4, as a capture shows it.  :class:`ValueError` for a name."""
    ip = ipaddress.ip_address(strip_brackets(text).split('%', 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


# ---------------------------------------------------------------------------- numbers
#: RFC 3261 §10.2.1.1 / §20.19: delta-seconds above this are taken as this
DELTA_SECONDS_MAX = 2 ** 32 - 1
#: RFC 3261 §8.1.1.5: a CSeq number is below 2**31
CSEQ_LIMIT = 2 ** 31
#: RFC 3261 §20.22: Max-Forwards is 0-255
MAX_FORWARDS_MAX = 255


def _digits(value: str, what: str) -> str:
    """``value`` stripped; its ASCII digits without leading zeros, or SIPParseError.

    ``str.isdigit`` alone is also true for ``²`` and ``٣``, which RFC 3261's DIGIT is not.
    """
    text = value.strip()
    if not text or not text.isascii() or not text.isdigit():
        raise SIPParseError('bad %s %r: digits 0-9 only' % (what, text[:20]))
    return text.lstrip('0') or '0'


def parse_delta_seconds(value: str, what: str = 'delta-seconds') -> int:
    """RFC 3261 delta-seconds (Expires, ``expires=``, Retry-After, Min-Expires).

    ASCII digits only; a value above 2**32-1 is taken as 2**32-1 (RFC 3261 §10.2.1.1),
    however many digits it has (no ``int()`` of a huge string).
    """
    if len(value) < 10 and value.isdigit() and value.isascii():
        return int(value)                   # the common case: a few plain digits, in range
    digits = _digits(value, what)
    if len(digits) > 10:
        return DELTA_SECONDS_MAX
    return min(int(digits), DELTA_SECONDS_MAX)


def parse_cseq_number(value: str) -> int:
    """A CSeq sequence number: ASCII digits, below 2**31 (RFC 3261 §8.1.1.5)."""
    digits = _digits(value, 'CSeq number')
    if len(digits) > 10 or int(digits) >= CSEQ_LIMIT:
        raise SIPParseError('CSeq number %s is not below 2**31' % digits[:20])
    return int(digits)


def parse_max_forwards(value: str) -> int:
    """A Max-Forwards value, 0-255 (RFC 3261 §20.22)."""
    digits = _digits(value, 'Max-Forwards')
    if len(digits) > 3 or int(digits) > MAX_FORWARDS_MAX:
        raise SIPParseError('Max-Forwards %s is above 255' % digits[:20])
    return int(digits)


def parse_content_length(value: str, limit: int = 2 ** 62) -> int:
    """A Content-Length: ASCII digits; anything at or above ``limit`` is ``limit``."""
    digits = _digits(value, 'Content-Length')
    if len(digits) > 18:
        return limit
    return min(int(digits), limit)


_QVALUE = re.compile(r'(?:0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?)\Z')


def parse_qvalue(value: str) -> float:
    """An RFC 3261 §25.1 qvalue: ``0`` [``.`` 0-3 digits] or ``1`` [``.`` 0-3 zeros]."""
    text = value.strip()
    if not _QVALUE.match(text):
        raise SIPParseError('bad qvalue %r: 0 to 1 with at most 3 decimals' % text[:20])
    return float(text.rstrip('.') or '0')


def retry_after_seconds(value: str | None) -> float | None:
    """The delta-seconds of a ``Retry-After`` (RFC 3261 §20.33, with its comment and
    parameters; RFC 7231 §7.1.3 for HTTP), or None when absent or not delta-seconds."""
    if value is None:
        return None
    try:
        return float(parse_delta_seconds(value.split(';', 1)[0].split('(', 1)[0], 'Retry-After'))
    except SIPParseError:
        return None




def parse_networks(values: Iterable[str], what: str
                   ) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """Addresses or CIDR networks (``10.0.0.0/8``, ``::1``) as networks; a value that is
    neither raises ConfigurationError naming the option ``what``."""
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ConfigurationError('%s %r is no address or CIDR network (write 10.0.0.0/8 '
                                     'or 192.0.2.7)' % (what, value)) from None
    return networks


def address_in(address: str, networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]
               ) -> bool:
    """True if ``address`` (an IP literal) is in one of ``networks``; False for a name."""
    try:
        ip = ipaddress.ip_address(strip_brackets(address))
    except ValueError:
        return False
    return any(ip in network for network in networks)


#: the schemes of SIP over UDP, TCP and TLS URLs (``udp://HOST:PORT``) -> default port
NET_SCHEMES: dict[str, int] = {'udp': 5060, 'tcp': 5060, 'tls': 5061}


def is_net_url(value: str) -> bool:
    """Whether ``value`` is a ``udp://``, ``tcp://`` or ``tls://`` URL."""
    return value.split(':', 1)[0].lower() in NET_SCHEMES and '://' in value


def split_net_url(url: str) -> tuple[str, str, int]:
    """``tcp://h:5070`` -> ``('tcp', 'h', 5070)``; ConfigurationError when it is not one."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in NET_SCHEMES or not parts.hostname:
        raise ConfigurationError('%r is not a udp://, tcp:// or tls:// URL with a host' % url)
    if parts.path not in ('', '/') or parts.query:
        raise ConfigurationError('%r: a %s:// target has no path' % (url, scheme))
    try:
        port = parts.port
    except ValueError as exc:
        raise ConfigurationError('%r has a bad port: %s' % (url, exc)) from None
    return scheme, parts.hostname, NET_SCHEMES[scheme] if port is None else port
