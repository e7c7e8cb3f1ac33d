"""SIP URIs and name-addr header values (RFC 3261 19.1, 20.10, 25.1), pure and I/O-free.

aiosip 0.2.0's own URI code cannot parse flag parameters such as ``;ob`` or
``;lr``, IPv6 hosts or ``Contact: *`` and drops URI parameters when it writes a
URI back (defects D7 and D17 in ``docs/aiosip-0.2.0.rst``), so aiosip-ws parses and
formats URIs here and never round-trips a URI through aiosip.

>>> uri = SipURI.parse('sips:alice@[2001:db8::1]:5061;transport=ws;ob')
>>> uri.scheme, uri.user, uri.host, uri.port, uri.param('transport'), uri.has_param('ob')
('sips', 'alice', '[2001:db8::1]', 5061, 'ws', True)
>>> str(uri)
'sips:alice@[2001:db8::1]:5061;transport=ws;ob'
"""
from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace

from ..errors import InvalidURIError, SIPParseError
from .grammar import SCHEME_CLASS

__all__ = ['SipURI', 'NameAddr', 'split_header_values', 'parse_params', 'format_params']

Params = tuple[tuple[str, 'str | None'], ...]

_SCHEME = re.compile(r'^(' + SCHEME_CLASS + r'):')
_HOSTPORT = re.compile(r'^(\[[0-9A-Fa-f:.]+\]|[^:\[\]]+)(?::(\d{1,5}))?$')


def _split_outside_quotes(text: str, sep: str) -> Iterator[str]:
    """Split on ``sep`` except inside double quotes or angle brackets."""
    if sep not in text:
        yield text
        return
    if '"' not in text and '<' not in text:     # the common case: nothing to protect
        yield from text.split(sep)
        return
    depth = 0
    quoted = False
    start = 0
    i = 0
    while i < len(text):
        ch = text[i]
        if quoted:
            if ch == '\\':
                i += 1
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif ch == '<':
            depth += 1
        elif ch == '>':
            depth = max(0, depth - 1)
        elif ch == sep and depth == 0:
            yield text[start:i]
            start = i + 1
        i += 1
    yield text[start:]


def split_header_values(value: str) -> list[str]:
    """Split a comma-joined header value (``Via: a, b`` or ``Contact: <x>, <y>``)."""
    return [part.strip() for part in _split_outside_quotes(value, ',') if part.strip()]


def parse_params(text: str) -> Params:
    """``;a=1;ob;b="x;y"`` (leading ``;`` optional) -> ``(('a', '1'), ('ob', None), ('b', '"x;y"'))``."""
    out = []
    for item in _split_outside_quotes(text, ';'):
        item = item.strip()
        if not item:
            continue
        name, sep, value = item.partition('=')
        out.append((name.strip(), value.strip() if sep else None))
    return tuple(out)


def format_params(params: Params) -> str:
    return ''.join(';%s' % name if value is None else ';%s=%s' % (name, value)
                   for name, value in params)


def param_value(params: Params, name: str) -> str | None:
    """The value of parameter ``name`` (case-insensitive, RFC 3261 §7.3.1); None if absent
    or a flag."""
    name = name.lower()
    for key, value in params:
        if key.lower() == name:
            return value
    return None


def has_param(params: Params, name: str) -> bool:
    """True if parameter ``name`` is present (case-insensitive), with or without a value."""
    name = name.lower()
    return any(key.lower() == name for key, _ in params)


@dataclass(frozen=True)
class SipURI:
    """A ``sip:``/``sips:`` URI (or any ``scheme:`` URI kept opaque in ``host``)."""

    scheme: str
    user: str | None
    host: str
    port: int | None = None
    params: Params = ()
    headers: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, text: str) -> SipURI:
        """Parse a ``sip:``/``sips:`` URI (any other scheme is kept opaque).  The result
        is immutable, so the last :data:`PARSE_CACHE_SIZE` texts parsed are remembered:
        the Request-URIs, From, To and Contact of a busy server repeat."""
        if cls is SipURI:
            return _cached_uri(text)
        return cls._parse(text)

    @classmethod
    def _parse(cls, text: str) -> SipURI:
        text = text.strip()
        if text.startswith('<') and text.endswith('>'):
            text = text[1:-1].strip()
        match = _SCHEME.match(text)
        if not match:
            raise SIPParseError('not a URI (no scheme): %r' % text)
        scheme = match.group(1).lower()
        rest = text[match.end():]
        if scheme not in ('sip', 'sips'):
            # tel:, urn:, http: ... are kept whole; aiosip-ws only routes sip(s).
            return cls(scheme=scheme, user=None, host=rest)
        rest, qmark, headers = rest.partition('?')
        userinfo, at, hostpart = rest.rpartition('@')
        if not at:
            userinfo, hostpart = '', rest
        hostport, _, paramtext = hostpart.partition(';')
        m = _HOSTPORT.match(hostport.strip())
        if not m or not m.group(1):
            raise SIPParseError('bad host or port in SIP URI %r' % text)
        user, password = None, None
        if at:
            user, colon, pw = userinfo.partition(':')
            password = pw if colon else None
        port = int(m.group(2)) if m.group(2) else None
        if port is not None and not 0 < port < 65536:
            raise SIPParseError('port out of range in SIP URI %r' % text)
        return cls(scheme=scheme, user=user, host=m.group(1).lower(), port=port,
                   params=parse_params(paramtext), headers=headers if qmark else None,
                   password=password)

    # -- parameters -----------------------------------------------------------
    def param(self, name: str) -> str | None:
        return param_value(self.params, name)

    def has_param(self, name: str) -> bool:
        return has_param(self.params, name)

    def with_param(self, name: str, value: str | None = None) -> SipURI:
        kept = tuple(p for p in self.params if p[0].lower() != name.lower())
        return replace(self, params=kept + ((name, value),))

    def without_param(self, name: str) -> SipURI:
        return replace(self, params=tuple(p for p in self.params if p[0].lower() != name.lower()))

    @property
    def transport(self) -> str | None:
        value = self.param('transport')
        return value.lower() if value else None

    @property
    def hostport(self) -> str:
        return self.host if self.port is None else '%s:%d' % (self.host, self.port)

    @functools.cached_property
    def aor(self) -> str:
        """The address-of-record key: ``scheme:user@host`` (RFC 3261 10.3 comparison)."""
        scheme = 'sip' if self.scheme == 'sips' else self.scheme
        if self.user is None:
            return '%s:%s' % (scheme, self.host)
        return '%s:%s@%s' % (scheme, self.user, self.host)

    def __str__(self) -> str:
        return self._text

    @functools.cached_property
    def _text(self) -> str:
        """The URI written out, once per (immutable) instance."""
        if self.scheme not in ('sip', 'sips'):
            return '%s:%s' % (self.scheme, self.host)
        out = self.scheme + ':'
        if self.user is not None:
            out += self.user
            if self.password is not None:
                out += ':' + self.password
            out += '@'
        out += self.hostport + format_params(self.params)
        if self.headers is not None:
            out += '?' + self.headers
        return out


@dataclass(frozen=True)
class NameAddr:
    """A From/To/Contact/Route value: optional display name, URI, header parameters."""

    uri: SipURI
    display_name: str | None = None
    params: Params = ()
    star: bool = False            # ``Contact: *``
    bracketed: bool = True

    @classmethod
    def parse(cls, text: str) -> NameAddr:
        """Parse a name-addr or addr-spec value (remembered as :meth:`SipURI.parse` is)."""
        if cls is NameAddr:
            return _cached_name_addr(text)
        return cls._parse(text)

    @classmethod
    def _parse(cls, text: str) -> NameAddr:
        text = text.strip()
        if text == '*':
            return cls(uri=SipURI('sip', None, '*'), star=True, bracketed=False)
        lt = -1
        if '"' not in text:                         # no display name in quotes: find '<'
            lt = text.find('<')
        else:
            quoted = False
            for i, ch in enumerate(text):
                if ch == '"' and (i == 0 or text[i - 1] != '\\'):
                    quoted = not quoted
                elif ch == '<' and not quoted:
                    lt = i
                    break
        if lt >= 0:
            gt = text.find('>', lt)
            if gt < 0:
                raise SIPParseError('unbalanced "<" in %r' % text)
            display = text[:lt].strip() or None
            if display and display.startswith('"') and display.endswith('"') and len(display) >= 2:
                display = display[1:-1]
            uri = SipURI.parse(text[lt + 1:gt])
            return cls(uri=uri, display_name=display, params=parse_params(text[gt + 1:]))
        # addr-spec form: parameters after the URI belong to the header (RFC 3261 20.10)
        uri_text, _, paramtext = text.partition(';')
        if ' ' in uri_text.strip() or '"' in uri_text:
            raise SIPParseError('bad name-addr %r' % text)
        return cls(uri=SipURI.parse(uri_text), params=parse_params(paramtext), bracketed=False)

    def param(self, name: str) -> str | None:
        """A header parameter's value (case-insensitive name); None if absent or a flag."""
        return self._by_name.get(name.lower())

    def has_param(self, name: str) -> bool:
        return name.lower() in self._by_name

    @functools.cached_property
    def _by_name(self) -> dict[str, str | None]:
        """Lower-case parameter name -> the first value: one dictionary per (immutable,
        remembered) instance instead of a scan of the parameters per question."""
        by_name: dict[str, str | None] = {}
        for key, value in self.params:
            by_name.setdefault(key.lower(), value)
        return by_name

    @property
    def tag(self) -> str | None:
        return self.param('tag')

    def with_param(self, name: str, value: str | None = None) -> NameAddr:
        kept = tuple(p for p in self.params if p[0].lower() != name.lower())
        return replace(self, params=kept + ((name, value),))

    def __str__(self) -> str:
        return self._text

    @functools.cached_property
    def _text(self) -> str:
        """The value written out, once per (immutable) instance."""
        if self.star:
            return '*'
        out = ''
        if self.display_name:
            out = '"%s" ' % self.display_name
        return out + '<%s>' % self.uri + format_params(self.params)



def ws_contact(host: str, user: str | None = None, *, outbound: bool = False,
               reg_id: int | None = None, instance: str | None = None) -> str:
    """The Contact header value of a WebSocket UA (RFC 7118 §5.2, RFC 5626 §4.2).

    ``<sip:USER@HOST;transport=ws>``, with ``;ob`` when ``outbound`` and, with a
    ``reg_id`` and ``instance`` (a URN), ``;reg-id=N;+sip.instance="<URN>"``.
    ``host`` is normally the connection's random ``.invalid`` name (RFC 7118 Appendix B.1).
    """
    params: Params = (('transport', 'ws'),) + ((('ob', None),) if outbound else ())
    value = '<%s>' % SipURI('sip', user or None, host, None, params)
    if reg_id is not None and instance is not None:
        value += ';reg-id=%d;+sip.instance="<%s>"' % (reg_id, instance)
    return value


def user_uri(value: str, what: str = 'URI') -> SipURI:
    """A SIP URI given by a user (an option, ``remote_addr``, ``--to``).

    ``<...>`` is a name-addr; anything else is a bare URI whose ``;params`` are URI
    parameters (what a user writing ``sip:h;transport=ws`` means).  Raises
    :class:`~aiosip_ws.errors.InvalidURIError` (a ``ConfigurationError`` and a
    ``SIPParseError``) naming ``what`` and the accepted form.
    """
    try:
        if '<' in value:
            return NameAddr.parse(value).uri
        return SipURI.parse(value)
    except SIPParseError as exc:
        raise InvalidURIError('%s %r is not a valid SIP URI (%s); write it as sip:user@host '
                              'or sip:user@host;transport=ws' % (what, value, exc)) from None


#: How many distinct texts :meth:`SipURI.parse` and :meth:`NameAddr.parse` each remember
#: (least recently used first out; errors are never remembered).
PARSE_CACHE_SIZE = 8192
_cached_uri = functools.lru_cache(maxsize=PARSE_CACHE_SIZE)(SipURI._parse)
_cached_name_addr = functools.lru_cache(maxsize=PARSE_CACHE_SIZE)(NameAddr._parse)
