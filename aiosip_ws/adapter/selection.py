"""Which transport, and where: choosing from a config name, a URL or a SIP URI.

All three ways of selecting a transport end in the registry
(:mod:`aiosip_ws.adapter.registry`):

* a config name: ``transport='ws'`` / ``'wss'`` / ``'udp'``;
* a URL scheme: ``ws://...`` selects ``ws``, ``wss://...`` selects ``wss``;
* a SIP URI: ``sip:...;transport=ws`` selects ``ws`` and ``sips:...;transport=ws``
  selects ``wss`` (RFC 7118 5.2 defines only ``ws``, used over TLS too; the
  non-standard ``transport=wss`` some stacks emit is accepted as an alias of
  WebSocket over TLS).  A ``sips:`` URI never goes over plain ``ws`` (RFC 7118 9.2).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..core.grammar import WS_DEFAULT_PORTS, WS_SCHEMES, is_sip_uri, is_ws_url, url_host, ws_scheme_for
from ..core.sipuri import SipURI, user_uri
from ..errors import ConfigurationError
from ..transport.websocket import split_ws_url
from .registry import WS, get_transport

__all__ = ['Selection', 'select', 'uri_from_string']

@dataclass(frozen=True)
class Selection:
    name: str                 # registry name: 'ws', 'wss', 'udp', ...
    implementation: Any       # what the registry holds for it
    target: str | None        # ws(s):// URL or SIP URI to connect to (WebSocket transports)

    @property
    def is_websocket(self) -> bool:
        return isinstance(self.implementation, type) and issubclass(self.implementation, WS)


def uri_from_string(value: str) -> SipURI:
    """A URI given as a string (see :func:`aiosip_ws.core.sipuri.user_uri`); raises
    :class:`~aiosip_ws.errors.InvalidURIError`."""
    return user_uri(value, 'remote_addr/To')


def transport_of_uri(uri: SipURI) -> str | None:
    """``ws``/``wss`` if ``uri`` asks for WebSocket, else None (other or no transport)."""
    return ws_scheme_for(uri.scheme, uri.transport)


def select(*, transport: Any = None, remote_addr: Any = None, to_uri: str | None = None) -> Selection:
    """Choose the transport for a new dialog.

    ``transport`` is a registry name (or None); ``remote_addr`` may be a
    ``ws(s)://`` URL, a SIP URI or aiosip's ``(host, port)``; ``to_uri`` is the
    dialog's To, consulted for ``;transport=ws`` when nothing else decides.
    """
    named = None
    if transport is not None:
        if not isinstance(transport, str):
            raise ConfigurationError('transport must be a name such as "ws", not %r' % (transport,))
        named = transport.strip().lower()
        get_transport(named)                                   # fail early on unknown names
    if is_ws_url(remote_addr):
        secure, _, _, _ = split_ws_url(remote_addr)
        by_url = 'wss' if secure else 'ws'
        if named is not None and named in WS_SCHEMES and named != by_url:
            raise ConfigurationError('transport=%r conflicts with the URL %s; use a %s:// URL'
                                     % (named, remote_addr, named))
        if named is not None and named not in WS_SCHEMES:
            raise ConfigurationError('transport=%r cannot use the WebSocket URL %s'
                                     % (named, remote_addr))
        return Selection(by_url, get_transport(by_url), remote_addr)
    if isinstance(remote_addr, str) and is_sip_uri(remote_addr):
        uri = uri_from_string(remote_addr)
        by_uri = transport_of_uri(uri)
        if by_uri is None and uri.transport is not None:
            raise ConfigurationError('%s asks for transport %r, not WebSocket: use ;transport=ws '
                                     'or remove the parameter' % (remote_addr, uri.transport))
        if by_uri is None:
            # No transport parameter: DNS discovery (NAPTR SIP+D2W/SIPS+D2W) decides.
            by_uri = 'wss' if (named == 'wss' or uri.scheme == 'sips') else 'ws'
        if named == 'ws' and by_uri == 'wss' and uri.scheme == 'sips':
            raise ConfigurationError('%s is a sips: URI; it must not be reached over plain ws '
                                     '(RFC 7118 9.2)' % remote_addr)
        return Selection(by_uri, get_transport(by_uri), str(uri))
    if named is not None:
        implementation = get_transport(named)
        selection = Selection(named, implementation, None)
        if selection.is_websocket:
            if isinstance(remote_addr, tuple) and len(remote_addr) == 2:
                host, port = remote_addr
                target = '%s://%s:%d/' % (named, url_host(str(host)), int(port or WS_DEFAULT_PORTS[named]))
                return Selection(named, implementation, target)
            if remote_addr is None and to_uri:
                uri = uri_from_string(to_uri)
                return Selection(named, implementation, str(uri.with_param('transport', 'ws')))
            raise ConfigurationError('transport=%r needs a server: pass remote_addr as a ws(s):// '
                                     'URL or a SIP URI' % named)
        return selection
    if remote_addr is None and to_uri:
        uri = uri_from_string(to_uri)
        by_uri = transport_of_uri(uri)
        if by_uri is not None:
            return Selection(by_uri, get_transport(by_uri), str(uri))
    return Selection('udp', get_transport('udp'), None)
