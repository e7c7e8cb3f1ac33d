"""``aiosip-ws serve``: a WebSocket registrar and relay built on aiosip-ws.

An :class:`aiosip_ws.Application` with aiosip routes:

* ``REGISTER`` goes to the in-memory :class:`~aiosip_ws.registrar.Registrar`;
  the 200 OK lists the AOR's current Contacts with their remaining expiry;
* ``OPTIONS`` to the server itself (a Request-URI without a user part) gets 200;
* any other out-of-dialog request (MESSAGE, OPTIONS, SUBSCRIBE, ...) to a
  registered AOR is relayed, as a stateful proxy does (our Via on top,
  Max-Forwards decremented, Request-URI set to the binding's Contact), over
  that client's own WebSocket connection, and its final response is relayed
  back over the connection the request came in on;
* an unregistered AOR gets 404, an expired hop count 483.

An INVITE is relayed the same way, record-routed; its provisional responses
are relayed as they come, a CANCEL follows it, and the server ACKs a non-2xx
final response itself.  In-dialog requests (ACK, BYE, re-INVITE, ...) are
routed by the connection behind their Request-URI: a WebSocket client's
Contact host is a random ``.invalid`` name, learnt from the Contacts that
cross each connection, never resolved (RFC 7118 B.1, checklist R-B.5).
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any

from ..adapter.application import Application
from ..core.codec import SIPMessage, invite_companion, make_response
from ..core.grammar import DEFAULT_MAX_FORWARDS
from ..core.transaction import cancel_key, new_tag
from ..errors import ConnectionLost, SIPParseError, TransactionTimeout
from ..options import ServerOptions
from .registrar import Registrar
from ..core.sipuri import NameAddr, SipURI, split_header_values
from ..transport.websocket import WSConnection, WSListener

__all__ = ['RelayServer', 'ALLOWED_METHODS']

logger = logging.getLogger(__name__)

#: Methods the relay answers or relays (the Allow header of its responses).
ALLOWED_METHODS = ('REGISTER', 'OPTIONS', 'MESSAGE', 'SUBSCRIBE', 'NOTIFY', 'PUBLISH', 'INFO',
                   'REFER', 'INVITE')


class RelayServer:
    """Registrar + relay; ``await start(url)``, then ``await close()``."""

    def __init__(self, *, server_options: ServerOptions | None = None,
                 registrar: Registrar | None = None) -> None:
        self.server_options = server_options or ServerOptions()
        self.registrar = registrar or Registrar()
        self.app: Application | None = None
        self.listeners: list[WSListener] = []
        #: `.invalid` Contact host -> the connection behind it (in-dialog routing)
        self._contacts: dict[str, WSConnection] = {}
        #: INVITEs being relayed, for CANCEL: (Call-ID, CSeq, branch) -> (peer, forwarded)
        self._invites: dict[tuple[str, int, str], tuple[WSConnection, SIPMessage]] = {}

    async def start(self, *urls: str) -> list[WSListener]:
        self.app = _RelayApplication(self, server_options=self.server_options)
        router = self.app.router
        router.add_route('REGISTER', self._on_register)
        for method in ALLOWED_METHODS:
            if method != 'REGISTER':
                router.add_route(method, self._on_request)
        try:
            for url in urls:
                self.listeners.append(await self.app.listen(url, self._options_for(url)))
        except BaseException:
            await self.app.close()
            raise
        return self.listeners

    def _options_for(self, url: str) -> ServerOptions:
        """The server options with TLS only where the URL is ``wss://``."""
        if url.lower().startswith('wss:') or self.server_options.ssl is None:
            return self.server_options
        return dataclasses.replace(self.server_options, ssl=None)

    async def close(self) -> None:
        """Stop listening; every client gets close code 1001 (going away)."""
        if self.app is not None:
            await self.app.close(1001, 'server shutting down')

    async def __aenter__(self) -> 'RelayServer':
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- routes ---------------------------------------------------------------------
    async def _on_register(self, dialog: Any, msg: Any) -> None:
        conn: WSConnection = dialog.protocol
        result = self.registrar.register(msg.raw, conn)
        if result.status == 200:
            logger.info('REGISTER %s from %s: %d binding(s)', msg.headers.get('To'),
                        conn.remote_addr, len(result.headers))
        dialog.reply(msg, result.status, result.reason, headers=result.headers)

    async def _on_request(self, dialog: Any, msg: Any) -> None:
        conn: WSConnection = dialog.protocol
        raw: SIPMessage = msg.raw
        try:
            target = NameAddr.parse(raw.uri or '').uri
        except SIPParseError as exc:
            dialog.reply(msg, 400, 'Bad Request (%s)' % exc)
            return
        if target.scheme not in ('sip', 'sips'):
            dialog.reply(msg, 416)
            return
        if target.user is None:                                # addressed to the server itself
            if raw.method == 'OPTIONS':
                dialog.reply(msg, 200, headers=[('Allow', ', '.join(ALLOWED_METHODS)),
                                                ('Accept', 'application/sdp, text/plain'),
                                                ('Supported', 'path, outbound')])
            else:
                dialog.reply(msg, 404, 'Not Found (no user in the Request-URI)')
            return
        max_forwards = (raw.get('Max-Forwards') or str(DEFAULT_MAX_FORWARDS)).strip()
        if not max_forwards.isdigit():
            dialog.reply(msg, 400, 'Bad Request (bad Max-Forwards)')
            return
        if int(max_forwards) == 0:
            dialog.reply(msg, 483)
            return
        bindings = self.registrar.lookup(target.aor)
        if not bindings:
            dialog.reply(msg, 404)
            return
        response = await self._relay(raw, int(max_forwards) - 1, bindings, conn)
        if response is None:
            dialog.reply(msg, 480)
            return
        if conn.is_open:
            conn.send(response)
        else:
            logger.warning('dropped the %d response to %s: the requester left', response.status,
                           raw.method)

    async def _relay(self, raw: SIPMessage, max_forwards: int, bindings: list[Any],
                     origin: WSConnection) -> SIPMessage | None:
        """Forward to the newest binding; on a dead flow try the next one.

        An INVITE is record-routed, its provisional responses are relayed as they
        come, a CANCEL for it is followed downstream, and a non-2xx final response
        is ACKed downstream here (RFC 3261 16.7, 17.1.1.3).
        """
        assert self.app is not None
        invite = raw.method == 'INVITE'
        key = cancel_key(raw) if invite else None
        for binding in bindings:
            peer: WSConnection = binding.connection
            forwarded = SIPMessage(method=raw.method, uri=str(binding.uri),
                                   headers=list(raw.headers), body=raw.body)
            forwarded.set('Max-Forwards', str(max_forwards))
            forwarded.remove('Route')                  # loose routes pointing at us end here
            if invite:
                forwarded.headers.insert(0, ('Record-Route', '<sip:%s;transport=ws;lr>'
                                             % peer.via_host))
            relay_provisional = (lambda r: self._relay_provisional(origin, r)) if invite else None
            future = self.app.send_request(peer, forwarded, on_provisional=relay_provisional)
            if key is not None:
                self._invites[key] = (peer, forwarded)
            try:
                response = await future
            except (ConnectionLost, TransactionTimeout) as exc:
                logger.info('relaying %s to %s failed: %s', raw.method, binding.uri, exc)
                continue
            finally:
                if key is not None:
                    self._invites.pop(key, None)
            self._learn_contact(peer, response)
            if invite and (response.status or 0) >= 300:
                peer.send(invite_companion('ACK', forwarded, uri=forwarded.uri or '',
                                           to=response.get('To') or ''))    # hop by hop
            response.headers = _without_top_via(response.headers)
            return response
        return None

    def _relay_provisional(self, origin: WSConnection, response: SIPMessage) -> None:
        if response.status == 100 or not origin.is_open:
            return                                     # 100 Trying is hop-by-hop
        relayed = SIPMessage(status=response.status, reason=response.reason,
                             headers=_without_top_via(response.headers), body=response.body)
        origin.send(relayed)

    # -- in-dialog requests, ACK and CANCEL (the adapter's intercept hook) -------------
    def _learn_contact(self, conn: WSConnection, message: SIPMessage) -> None:
        """Remember which connection a `.invalid` Contact host lives behind (R-B.5)."""
        for value in message.get_all('Contact')[:1]:
            try:
                host = NameAddr.parse(value).uri.host
            except SIPParseError:
                return
            if host.endswith('.invalid'):
                self._contacts[host] = conn

    def intercept(self, conn: WSConnection, message: SIPMessage) -> bool:
        """Route in-dialog requests by the connection behind their Request-URI's host."""
        assert self.app is not None
        method = message.method
        if method == 'CANCEL':
            return self._cancel(conn, message)
        if method != 'ACK' and 'tag=' not in (message.get('To') or ''):
            # out of dialog (the common case, kept cheap): the routes decide; a caller's
            # Contact is worth remembering for the in-dialog requests to come
            if method in _LEARN_FROM:
                self._learn_contact(conn, message)
            return False
        self._learn_contact(conn, message)
        try:
            to_tag = NameAddr.parse(message.get('To') or '').tag
            target = SipURI.parse(message.uri or '')
        except SIPParseError:
            return False
        if to_tag is None and message.method != 'ACK':
            return False                               # out of dialog: the routes decide
        peer = self._contacts.get(target.host)
        if peer is None or not peer.is_open:
            if message.method == 'ACK':
                return True        # the ACK of a non-2xx we relayed (we ACKed downstream)
            return False           # the adapter answers 481
        max_forwards = (message.get('Max-Forwards') or str(DEFAULT_MAX_FORWARDS)).strip()
        if not max_forwards.isdigit() or int(max_forwards) == 0:
            if message.method != 'ACK':
                conn.send(make_response(message, 483 if max_forwards == '0' else 400,
                                        to_tag=to_tag))
            return True
        forwarded = SIPMessage(method=message.method, uri=message.uri, body=message.body,
                               headers=[(k, v) for k, v in message.headers if k != 'Route'])
        forwarded.set('Max-Forwards', str(int(max_forwards) - 1))
        self.app.spawn(self._forward_in_dialog(conn, peer, forwarded, message))
        return True

    async def _forward_in_dialog(self, origin: WSConnection, peer: WSConnection,
                                 forwarded: SIPMessage, original: SIPMessage) -> None:
        assert self.app is not None
        future = self.app.send_request(
            peer, forwarded, on_provisional=lambda r: self._relay_provisional(origin, r))
        if forwarded.method == 'ACK':
            return
        try:
            response = await future
        except (ConnectionLost, TransactionTimeout) as exc:
            logger.info('relaying in-dialog %s failed: %s', forwarded.method, exc)
            response = make_response(original, 408 if isinstance(exc, TransactionTimeout)
                                     else 480)
        else:
            self._learn_contact(peer, response)
            response.headers = _without_top_via(response.headers)
        if origin.is_open:
            origin.send(response)

    def _cancel(self, conn: WSConnection, cancel: SIPMessage) -> bool:
        """RFC 3261 16.10: answer the CANCEL, then cancel the INVITE we forwarded."""
        entry = self._invites.get(cancel_key(cancel))
        if entry is None:
            conn.send(make_response(cancel, 481, to_tag=new_tag()))
            return True
        conn.send(make_response(cancel, 200, to_tag=new_tag()))
        peer, forwarded = entry
        peer.send(invite_companion('CANCEL', forwarded, uri=forwarded.uri or ''))
        return True


#: out-of-dialog requests whose Contact becomes a remote target of a dialog
_LEARN_FROM = frozenset({'INVITE', 'SUBSCRIBE', 'REFER'})


def _without_top_via(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Remove the Via entry we added (the first one), even from a comma-joined value."""
    out: list[tuple[str, str]] = []
    removed = False
    for name, value in headers:
        if not removed and name.lower() == 'via':
            removed = True
            rest = split_header_values(value)[1:]
            if rest:
                out.append((name, ', '.join(rest)))
            continue
        out.append((name, value))
    return out


class _RelayApplication(Application):
    def __init__(self, relay: RelayServer, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._relay = relay

    def intercept_request(self, conn: WSConnection, message: SIPMessage) -> bool:
        return self._relay.intercept(conn, message)

    def ws_connection_lost(self, conn: WSConnection, exc: BaseException | None) -> None:
        contacts = self._relay._contacts
        for host in [h for h, c in contacts.items() if c is conn]:
            del contacts[host]
        removed = self._relay.registrar.remove_connection(conn)
        if removed:
            logger.info('%r closed: removed %d binding(s)', conn, removed)

