"""Conversion between codec messages and aiosip 0.2.0's ``Request``/``Response``.

aiosip's parser and ``str(msg)`` are never used on the wire (D1-D7, D10, D11, D21
of ``docs/aiosip-0.2.0.rst``): :mod:`aiosip_ws.core.codec` parses and writes,
:func:`to_aiosip` and :func:`to_wire` convert, keeping header order, repeated
headers, the Request-URI, the CSeq number and the exact body.
"""
from __future__ import annotations

import functools
import re
from typing import Any

from multidict import CIMultiDict

from .._version import __version__
from ..core.codec import SIPMessage
from ..core.grammar import TOKEN_CLASS
from ..core.sipuri import NameAddr, SipURI, format_params
from ..core.transaction import new_branch
from ..errors import SIPParseError
from ..transport.websocket import WSConnection
from .compat import import_aiosip

aiosip = import_aiosip()

__all__ = ['to_aiosip', 'to_wire', 'aiosip_safe_text', 'server_header', 'has_surrogates',
           'header_values']
_FLAG_PARAM = re.compile(r';' + TOKEN_CLASS + r'+\s*(?=[;>,?]|$)')


def aiosip_safe_text(text: str) -> str:
    """``text`` itself when aiosip's regexes can parse it, else a cleaned copy (D7)."""
    if '[' not in text and '"' not in text and ',' not in text and not _FLAG_PARAM.search(text):
        return text
    return _aiosip_safe(NameAddr.parse(text))


def _aiosip_safe(name_addr: NameAddr) -> str:
    """A From/To/Contact value aiosip's regexes can parse (D7): flags and IPv6 removed."""
    uri = name_addr.uri
    host = uri.host
    if host.startswith('['):                    # aiosip's URI regex has no IPv6 literals
        host = 'ipv6-' + host.strip('[]').replace(':', '-').replace('.', '-') + '.invalid'
    params = tuple((k, v) for k, v in uri.params if v is not None)
    safe_uri = SipURI(uri.scheme if uri.scheme in ('sip', 'sips') else 'sip', uri.user,
                      host if uri.scheme in ('sip', 'sips') else 'non-sip-uri.invalid',
                      uri.port, params)
    header_params = format_params(tuple((k, v) for k, v in name_addr.params if v is not None))
    return '<%s>%s' % (safe_uri, header_params)


_BODY: Any = object()          # to_aiosip: take the payload from the message body


def _details(message: SIPMessage) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ('From', 'To', 'Contact'):
        value = message.get_all(name)[:1] if name == 'Contact' else [message.get(name)]
        if not value or value[0] is None:
            continue
        try:
            parsed = NameAddr.parse(value[0])
        except SIPParseError:
            if name == 'Contact':
                continue
            raise
        if parsed.star:
            continue
        out[name.lower() + '_details'] = aiosip.Contact.from_header(_aiosip_safe(parsed))
    return out


def to_aiosip(message: SIPMessage, *, payload: Any = _BODY) -> Any:
    """Build an ``aiosip.Request``/``aiosip.Response`` from a parsed message.

    Needs a running loop (aiosip's ``Request`` creates a Future).  The codec
    message stays reachable as ``msg.raw``; a request's URI as ``msg.request_uri``.
    ``payload``, when given, is used instead of the decoded body.
    """
    headers: CIMultiDict[str] = CIMultiDict(message.headers)
    if payload is _BODY:
        payload = message.body.decode('utf-8', 'surrogateescape') if message.body else None
    try:
        # What aiosip would parse itself from From, To and the first Contact (its
        # Contact.from_header), parsed once per distinct text; when its regexes fail
        # (D7: ;ob, ;lr, IPv6, several Contacts) we hand it details built from ours.
        details = {}
        for name, attribute in _DETAILS:
            text = headers.get(name)
            if text is not None:
                details[attribute] = aiosip_contact(text)
        msg = _construct(message, headers, payload, details)
    except (ValueError, AttributeError, TypeError, KeyError):
        msg = _construct(message, CIMultiDict(message.headers), payload, _details(message))
    msg.raw = message
    return msg


_DETAILS = (('From', 'from_details'), ('To', 'to_details'), ('Contact', 'contact_details'))


def aiosip_contact(text: str) -> Any:
    """``aiosip.Contact.from_header(text)``, for a fresh object each time: aiosip changes
    them (``add_tag``), so the parse of each distinct text is remembered (the last
    :data:`CONTACT_CACHE_SIZE`) and handed out as a copy, which costs a fraction of
    aiosip's regexes.  Raises what aiosip raises for a text its regexes refuse."""
    return _copy_contact(_parsed_contact(text))


#: distinct From/To/Contact texts whose aiosip parse is remembered
CONTACT_CACHE_SIZE = 4096


@functools.lru_cache(maxsize=CONTACT_CACHE_SIZE)
def _parsed_contact(text: str) -> Any:
    return aiosip.Contact.from_header(text)


def _copy_dict(value: Any) -> Any:
    """A copy of one of aiosip's dict subclasses (Contact, Uri, Param: their state is
    their items) without running its parsing constructor."""
    copy = dict.__new__(type(value))
    dict.update(copy, value)
    return copy


def _copy_contact(contact: Any) -> Any:
    copy = _copy_dict(contact)
    uri = copy['uri'] = _copy_dict(contact['uri'])
    if isinstance(uri.get('params'), dict):
        uri['params'] = _copy_dict(uri['params'])
    copy['params'] = _copy_dict(contact['params'])
    return copy


def _construct(message: SIPMessage, headers: Any, payload: Any,
               details: dict[str, Any]) -> Any:
    if message.is_request:
        number, _ = message.cseq
        msg = aiosip.Request(message.method, cseq=number, headers=headers, payload=payload,
                             **details)                                # D11: the real CSeq
        msg.request_uri = message.uri                                  # D10: keep it
        return msg
    return aiosip.Response(message.status, message.reason, headers=headers, payload=payload,
                           **details)


def header_values(value: Any) -> list[str]:
    if isinstance(value, (list, tuple)):                               # D4
        return [str(item) for item in value]
    return [str(value)]


_AIOSIP_ALLOW_EVENTS = 'talk,hold,conference,refer,check-sync'
_HEADER_ORDER = {name: index for index, name in enumerate((
    'via', 'max-forwards', 'route', 'record-route', 'from', 'to', 'call-id', 'cseq', 'contact',
    'expires', 'supported', 'require', 'allow', 'allow-events', 'authorization',
    'proxy-authorization', 'user-agent', 'server', 'content-type'))}


def server_header() -> str:
    """The User-Agent/Server value of aiosip-ws requests and responses (D21)."""
    return 'aiosip-ws/%s aiosip/0.2.0' % __version__


def _is_aiosip_user_agent(value: str) -> bool:
    return value.startswith('Python/') and 'aiosip/' in value


def to_wire(msg: Any, conn: WSConnection, *, request_uri: str | None = None) -> SIPMessage:
    """Turn an aiosip message into the codec message to send on ``conn``.

    Fills aiosip's Via template (D6), keeps header order and repeated headers
    (D4, D21), writes the Request-URI (D10), and leaves Content-Length to the codec.
    """
    is_request = not isinstance(msg, aiosip.Response)
    headers: list[tuple[str, str]] = []
    for name, value in list(msg.headers.items()):
        lname = name.lower()
        if lname == 'content-length':
            continue
        for item in header_values(value):
            if lname == 'via' and '%(protocol)s' in item:
                item = conn.via(new_branch())
                msg.headers['Via'] = item                # what went on the wire, for later use
            elif lname == 'user-agent' and _is_aiosip_user_agent(item):
                item = server_header()                                         # D21
                if not is_request:
                    name = 'Server'
            elif lname == 'max-forwards' and not is_request:
                continue                                                   # D21
            elif lname == 'allow-events' and item == _AIOSIP_ALLOW_EVENTS:
                continue             # aiosip's register() claims event packages we do not serve
            headers.append((name, item))
    # aiosip inserts headers in an arbitrary order; write the usual one (stable
    # sort, so repeated headers such as Via keep their relative order).
    headers.sort(key=lambda item: _HEADER_ORDER.get(item[0].lower(), len(_HEADER_ORDER)))
    payload = msg.payload
    if payload is None:
        body = b''
    elif isinstance(payload, bytes):
        body = payload
    else:
        body = str(payload).encode('utf-8', 'surrogateescape')
    if not is_request:
        return SIPMessage(status=int(msg.status_code), reason=str(msg.status_message),
                          headers=headers, body=body)
    return SIPMessage(method=msg.method, uri=request_uri or _request_uri(msg), headers=headers,
                      body=body)


def _request_uri(msg: Any) -> str:
    """D10: the Request-URI aiosip throws away."""
    explicit = getattr(msg, 'request_uri', None)
    if explicit:
        return str(explicit)
    to_uri = NameAddr.parse(str(msg.headers['To'])).uri
    if msg.method == 'REGISTER':                      # RFC 3261 10.2: no userinfo
        return str(SipURI(to_uri.scheme, None, to_uri.host, to_uri.port))
    return str(to_uri)


def has_surrogates(text: str) -> bool:
    try:
        text.encode('utf-8')
    except UnicodeEncodeError:
        return True
    return False
