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

INVITE is refused with 501: relaying a call needs Record-Route and in-dialog
routing by flow token, which this release does not do yet.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any

from .adapter import Application
from .codec import SIPMessage
from .errors import ConnectionLost, SIPParseError, TransactionTimeout
from .options import ServerOptions
from .registrar import Registrar
from .sipuri import NameAddr, split_header_values
from .transport import WSConnection, WSListener

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
        if raw.method == 'INVITE':
            dialog.reply(msg, 501, 'Not Implemented (aiosip-ws serve does not relay calls yet)')
            return
        max_forwards = (raw.get('Max-Forwards') or '70').strip()
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
        response = await self._relay(raw, int(max_forwards) - 1, bindings)
        if response is None:
            dialog.reply(msg, 480)
            return
        if conn.is_open:
            conn.send(response)
        else:
            logger.warning('dropped the %d response to %s: the requester left', response.status,
                           raw.method)

    async def _relay(self, raw: SIPMessage, max_forwards: int, bindings: list[Any]) -> SIPMessage | None:
        """Forward to the newest binding; on a dead flow try the next one."""
        assert self.app is not None
        for binding in bindings:
            forwarded = SIPMessage(method=raw.method, uri=str(binding.uri),
                                   headers=list(raw.headers), body=raw.body)
            forwarded.set('Max-Forwards', str(max_forwards))
            forwarded.remove('Route')                  # loose routes pointing at us end here
            try:
                response = await self.app.send_request(binding.connection, forwarded)
            except (ConnectionLost, TransactionTimeout) as exc:
                logger.info('relaying %s to %s failed: %s', raw.method, binding.uri, exc)
                continue
            response.headers = _without_top_via(response.headers)
            return response
        return None


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

    def ws_connection_lost(self, conn: WSConnection, exc: BaseException | None) -> None:
        removed = self._relay.registrar.remove_connection(conn)
        if removed:
            logger.info('%r closed: removed %d binding(s)', conn, removed)

