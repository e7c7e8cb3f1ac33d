"""The aiosip 0.2.0 integration, all in one place.

:class:`Application` subclasses ``aiosip.Application`` and overrides five of its
public methods (``start_dialog``, ``create_connection``, ``handle_incoming``,
``dispatch``, ``send_message``); :class:`Dialog` subclasses ``aiosip.Dialog``.
Each override falls through to aiosip for anything that is not WebSocket, so
aiosip's UDP keeps working.  No aiosip code is copied and nothing is patched.

Where aiosip 0.2.0 is wrong for a connection-oriented transport, this module
owns that part.  Every workaround is named after the defect it answers (the
D-numbers of ``docs/aiosip-0.2.0.rst``) and has a test in
``tests/adapter/test_aiosip_workarounds.py``:

* D1-D7, D10, D11, D21 - aiosip's parser and ``str(msg)`` are never used on the
  wire: :mod:`aiosip_ws.core.codec` parses and writes, :func:`to_aiosip` and
  :func:`to_wire` convert, keeping header order, repeated headers, the
  Request-URI, the CSeq number and the exact body.
* D6 - the ``%(protocol)s`` Via template becomes ``SIP/2.0/WS <token>.invalid``
  (or ``WSS``) with a fresh RFC 3261 branch.
* D7 - From/To/Contact details are built from a copy without flag parameters
  (``;ob``, ``;lr``) that aiosip cannot parse; the headers stay as received.
* D8 - responses are matched to their transaction; a stray one is dropped and
  logged, never routed as a request; in-dialog requests (To tag) go to their
  dialog, others to the router; a request for an unknown dialog gets 481.
* D9 - a request's dialog is bound to the connection it arrived on: replies and
  later requests go back over it, whatever Via and Contact say.
* D12 - :meth:`Dialog.reply` copies Via, From, To, Call-ID and CSeq.
* D13 - provisional responses other than 100/180 do not end a transaction.
* D15/D20 - :meth:`Application.close` tears everything down.
* D17 - outgoing Contact headers are written whole (``;transport=ws`` kept).
* D19 - route handlers run in tracked tasks; their exceptions are logged.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from multidict import CIMultiDict

from ..core import codec
from ..core.codec import SIPMessage
from ..core.digest import authorization, choose_challenge
from ..core.sipuri import NameAddr, SipURI, ws_contact
from ..core.transaction import new_branch, new_tag
from ..errors import ConfigurationError, ConnectionLost, DigestError, SIPParseError
from ..options import ClientOptions, ServerOptions
from ..transport.connect import connect
from ..transport.discovery import Resolver
from ..transport.listener import WSListener, listen, shut_down
from ..transport.transactions import TransactionLayer
from ..transport.websocket import WSConnection
from .convert import (
    aiosip,
    aiosip_safe_text,
    has_surrogates,
    header_values,
    server_header,
    to_aiosip,
    to_wire,
)
from .registry import WS, _register_builtins, get_transport
from .selection import select, uri_from_string

_register_builtins(aiosip)

__all__ = ['Application', 'Dialog', 'to_aiosip', 'to_wire', 'aiosip']

logger = logging.getLogger(__name__)

#: The aiosip "protocol" key type of every WebSocket dialog (``type(dialog.protocol)``).
CONNECTION_TYPES = (WSConnection,)
_DIALOG_FORMING = frozenset({'INVITE', 'SUBSCRIBE', 'REFER', 'NOTIFY'})


# ---------------------------------------------------------------------------- dialog
class _Sent:
    """What a Dialog needs to answer a challenge to a request it sent (D16)."""

    __slots__ = ('method', 'headers', 'payload', 'content_type', 'future', 'answered', 'stale')

    def __init__(self, method: str, headers: Any, payload: Any, content_type: Any,
                 future: Any, answered: int, stale: int) -> None:
        self.method, self.headers, self.payload = method, headers, payload
        self.content_type, self.future = content_type, future
        self.answered, self.stale = answered, stale


class Dialog(aiosip.Dialog):
    """``aiosip.Dialog`` for WebSocket flows.

    Adds :meth:`reply` (D12), writes the whole Contact (D17), chooses the
    Request-URI (D10), answers Digest challenges properly (D16), keeps
    provisional responses from ending a transaction (D13), and ACKs non-2xx
    final responses to INVITE.
    """

    #: the Contact header value sent on requests of this dialog (D17)
    contact_header: str | None = None
    #: where in-dialog requests go: the peer's Contact (RFC 3261 12.1)
    remote_target: str | None = None
    #: the To URI as given, with its URI parameters (aiosip keeps a lossy copy)
    to_uri: str | None = None
    #: Digest username; None uses the user part of the From URI
    auth_username: str | None = None
    #: the request aiosip is answering right now (see receive_message)
    answering: SIPMessage | None = None
    #: D13 hook: when set, in-dialog requests of this dialog (and ACK and CANCEL) are given
    #: to it as codec messages instead of aiosip's ``receive_message``, which answers every
    #: one 200 before any callback runs (a re-INVITE then gets a 200 without its SDP
    #: answer).  The handler answers each request itself (``aiosip_ws.media`` does).
    request_handler: Callable[[SIPMessage], None] | None = None
    #: called with the exception (or None) when this dialog's connection is gone
    lost_handler: Callable[[BaseException | None], None] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sent: dict[tuple[str, int], _Sent] = {}
        self._nonce_counts: dict[str, int] = {}

    def request_uri_for(self, method: str) -> str:
        """The Request-URI of a request of this dialog (D10)."""
        to_uri = uri_from_string(self.to_uri) if self.to_uri else None
        if method == 'REGISTER' and to_uri is not None:     # RFC 3261 10.2: no userinfo
            return str(SipURI(to_uri.scheme, None, to_uri.host, to_uri.port))
        if self.remote_target:
            return self.remote_target
        if to_uri is not None:
            return str(to_uri)
        return str(self.to_details['uri'])

    def send_message(self, method: str, to_details: Any = None, from_details: Any = None,
                     contact_details: Any = None, headers: Any = None, content_type: Any = None,
                     payload: Any = None, future: Any = None, *,
                     _auth: tuple[int, int] = (0, 0)) -> Any:
        headers = CIMultiDict(headers) if headers else CIMultiDict()
        conn = self.protocol
        if isinstance(conn, WSConnection):
            vias = headers.getall('Via', [])
            if vias and conn.via_host in str(vias[0]):
                # aiosip re-sends a challenged request with its old headers: a new
                # transaction needs a new branch (RFC 3261 8.1.3.5), so drop our Via.
                del headers['Via']
            if self.contact_header and 'Contact' not in headers:
                headers['Contact'] = self.contact_header
        if isinstance(payload, (bytes, bytearray)) or (
                isinstance(payload, str) and not payload.isascii() and has_surrogates(payload)):
            # D5: aiosip computes Content-Length with payload.encode(), which fails
            # for bytes; a preset value skips that (the codec writes the real one).
            body = bytes(payload) if not isinstance(payload, str) else payload.encode(
                'utf-8', 'surrogateescape')
            headers['Content-Length'] = str(len(body))
        result = super().send_message(method, to_details=to_details, from_details=from_details,
                                      contact_details=contact_details, headers=headers,
                                      content_type=content_type, payload=payload, future=future)
        if method != 'ACK' and result is not None:
            key = (method, self.cseqs[method])
            self._sent[key] = _Sent(method, headers, payload, content_type, result, *_auth)
            result.add_done_callback(lambda _, key=key: self._sent.pop(key, None))
        return result

    def register(self, headers: Any = None, attempts: int = 3, expires: int = 360) -> Any:
        """aiosip's ``register``, advertising the methods this application really takes.

        aiosip 0.2.0 puts a fixed ``Allow`` without MESSAGE in every REGISTER; a
        registrar that honours it (Kamailio) then refuses to deliver MESSAGE (405).
        """
        headers = CIMultiDict(headers) if headers else CIMultiDict()
        if 'Allow' not in headers:
            methods = set(self.app.router.routes) | {'ACK', 'BYE', 'CANCEL'}
            headers['Allow'] = ', '.join(sorted(methods))
        return super().register(headers=headers, attempts=attempts, expires=expires)

    def reply(self, request: Any, status_code: int, status_message: str | None = None, *,
              headers: Any = None, content_type: str | None = None, payload: Any = None) -> None:
        """Answer ``request`` (RFC 3261 8.2.6): all Vias, From, To with tag, Call-ID, CSeq."""
        raw: SIPMessage | None = getattr(request, 'raw', None)
        if raw is None:
            raw = SIPMessage(method=request.method, uri='', headers=[
                (k, str(v)) for k, vs in request.headers.items() for v in header_values(vs)])
        self.to_details.add_tag()
        tag = self.to_details['params']['tag']
        pairs = headers.items() if hasattr(headers, 'items') else (headers or ())
        extra = [(str(k), str(v)) for k, v in pairs]
        if (raw.method in _DIALOG_FORMING and 100 < status_code < 300 and self.contact_header
                and not any(k.lower() in ('contact', 'm') for k, _ in extra)):
            extra.append(('Contact', self.contact_header))      # RFC 3261 12.1.1: a must
        if content_type:
            extra.append(('Content-Type', content_type))
        response = codec.make_response(raw, status_code, status_message,
                                       to_tag=tag if status_code > 100 else None, headers=extra)
        conn = self.protocol
        if isinstance(conn, WSConnection):
            # Straight to the wire: the codec message is the response; an aiosip
            # Response would only be converted back (and costs its regex parsers).
            if not any(k.lower() == 'server' for k, _ in extra):
                response.headers.append(('Server', server_header()))
            if payload is not None:
                response.body = payload if isinstance(payload, bytes) else str(payload).encode(
                    'utf-8', 'surrogateescape')
            if conn.is_open:
                conn.send(response)
            else:                                     # RFC 3261 §18.2.2: cannot reconnect to a WS client
                logger.warning('dropped %d %s: the WebSocket connection is gone', status_code,
                               response.reason)
            return
        msg = to_aiosip(response, payload=payload)
        self.app.send_message(type(self.protocol), self.local_addr, self.remote_addr, msg)

    def receive_message(self, msg: Any) -> Any:
        if isinstance(msg, aiosip.Response):
            status = msg.status_code
            if 100 < status < 200 and status != 180:
                logger.debug('%s: provisional %d kept the transaction open (D13)',
                             self.call_id, status)
                return None
            if msg.method == 'INVITE' and status >= 300:
                self._ack_non_2xx(msg)
            if status in (401, 407) and (msg.method, msg.cseq) in self._sent:
                if not self._answer_challenge(msg):
                    self._deliver_final(msg)
                return None
            if msg.method == 'INVITE' and 200 <= status < 300:
                if 'Contact' in msg.headers:
                    self.remote_target = str(NameAddr.parse(msg.headers['Contact']).uri)
                remote_tag = NameAddr.parse(msg.headers['To']).tag
                if remote_tag:                       # aiosip never learns the remote tag
                    self.to_details['params']['tag'] = remote_tag
            return super().receive_message(msg)
        # aiosip answers in-dialog requests itself (200), copying only the first Via
        # (D4); while it does, the adapter restores every Via from this request.
        self.answering = getattr(msg, 'raw', None)
        try:
            return super().receive_message(msg)
        finally:
            self.answering = None

    # -- Digest (D16) -----------------------------------------------------------------
    def _answer_challenge(self, msg: Any) -> bool:
        """Re-send the challenged request with credentials; False to give up."""
        sent = self._sent[(msg.method, msg.cseq)]
        proxy = msg.status_code == 407
        header = 'Proxy-Authenticate' if proxy else 'WWW-Authenticate'
        raw: SIPMessage | None = getattr(msg, 'raw', None)
        values = raw.get_all(header) if raw is not None else msg.headers.getall(header, [])
        if not values or not self.password:
            logger.info('%s %s: %d and no password to answer it', self.call_id, msg.method,
                        msg.status_code)
            return False
        try:
            challenge = choose_challenge(values, proxy=proxy)
        except DigestError as exc:
            logger.warning('%s %s: cannot answer the challenge: %s', self.call_id, msg.method, exc)
            return False
        answered, stale = sent.answered, sent.stale
        if answered and not challenge.stale:
            logger.warning('%s %s: credentials refused (%d %s)', self.call_id, msg.method,
                           msg.status_code, msg.status_message)
            return False
        if challenge.stale:
            if stale:
                return False
            stale += 1
        nc = self._nonce_counts.get(challenge.nonce, 0) + 1
        self._nonce_counts = {challenge.nonce: nc}          # only the current nonce counts
        username = self.auth_username or self.from_details['uri']['user'] or ''
        payload = sent.payload
        body = payload if isinstance(payload, bytes) else (payload or '').encode(
            'utf-8', 'surrogateescape')
        credentials = authorization(challenge, method=msg.method,
                                    uri=self.request_uri_for(msg.method), username=username,
                                    password=self.password, nc=nc, body=body)
        headers = CIMultiDict(sent.headers)
        for name in ('Via', 'CSeq', 'Content-Length',
                     'Proxy-Authorization' if proxy else 'Authorization'):
            headers.popall(name, None)
        headers['Proxy-Authorization' if proxy else 'Authorization'] = credentials
        self._msgs[msg.method].pop(msg.cseq, None)          # aiosip's record of it (D16)
        self.send_message(msg.method, headers=headers, payload=payload,
                          content_type=None, future=sent.future, _auth=(answered + 1, stale))
        return True

    def _deliver_final(self, msg: Any) -> None:
        """End the transaction with ``msg``, as aiosip would for any other final response."""
        sent = self._sent.pop((msg.method, msg.cseq), None)
        self._msgs[msg.method].pop(msg.cseq, None)          # aiosip's record of it (D16)
        if msg.method == 'REGISTER':
            self.register_current_attempt = None
        elif msg.method == 'INVITE':
            self.invite_current_attempt = None
        if sent is not None and not sent.future.done():
            sent.future.set_result(msg)

    def _ack_non_2xx(self, msg: Any) -> None:
        """RFC 3261 17.1.1.3: the ACK of a non-2xx final response to INVITE."""
        raw: SIPMessage | None = getattr(msg, 'raw', None)
        conn = self.protocol
        if raw is None or not isinstance(conn, WSConnection) or not conn.is_open:
            return
        conn.send(codec.invite_companion('ACK', raw, uri=self.request_uri_for('INVITE')))


# ---------------------------------------------------------------------------- application
class Application(aiosip.Application):
    """An aiosip 0.2.0 ``Application`` that speaks SIP over WebSocket (RFC 7118).

    Build it inside a running loop.  Client role: ``await app.start_dialog(...,
    remote_addr='wss://edge.example.com/ws')`` (or ``transport='ws'``, or a
    ``sip:...;transport=ws`` URI).  Server role: ``await app.listen('ws://0.0.0.0:8080/')``
    and ``app.router.add_route(...)``.  ``await app.close()`` when done.
    """

    def __init__(self, *, loop: asyncio.AbstractEventLoop | None = None,
                 client_options: ClientOptions | None = None,
                 server_options: ServerOptions | None = None,
                 dialog_class: type = Dialog, resolver: Resolver | None = None,
                 **kwargs: Any) -> None:
        super().__init__(loop=loop or asyncio.get_running_loop(), **kwargs)
        self.client_options = client_options or ClientOptions()
        self.server_options = server_options or ServerOptions()
        self.client_options.validate()
        self.server_options.validate()
        self.dialog_class = dialog_class
        self._resolver = resolver
        #: option tags a request may Require (RFC 3261 8.2.2.3); others get 420
        self.supported_extensions: set[str] = {'outbound', 'path'}
        self._ws_routes: dict[tuple[Any, Any, Any], WSConnection] = {}
        self._client_connections: dict[str, WSConnection] = {}
        self._connecting: dict[str, asyncio.Future[WSConnection]] = {}
        self._listeners: list[WSListener] = []
        self._connections: set[WSConnection] = set()
        #: the requests sent (aiosip's and a proxy's), until their final response:
        #: the project's one transaction table
        self._transactions = TransactionLayer()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False

    # -- connections ------------------------------------------------------------
    async def connect(self, url: str, options: ClientOptions | None = None) -> WSConnection:
        """The open client connection to ``url``, opening it if needed (RFC 5626 §4.3: reuse).

        ``url`` is a ``ws://``/``wss://`` URL, or a SIP URI that RFC 3263 / RFC 7118
        discovery (NAPTR ``SIP+D2W``/``SIPS+D2W``, SRV, A/AAAA; see
        :mod:`aiosip_ws.transport.discovery`) turns into targets tried in order.
        """
        conn = self._client_connections.get(url)
        if conn is not None and conn.is_open:
            return conn
        if self._closing:
            raise ConnectionLost('the application is closed')
        pending = self._connecting.get(url)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[WSConnection] = self.loop.create_future()
        self._connecting[url] = future
        try:
            conn = await self._open(url, options or self.client_options)
        except BaseException as exc:
            if not future.done():
                future.set_exception(exc)
                future.exception()                   # retrieved: waiters re-raise their own
            raise
        else:
            future.set_result(conn)
        finally:
            self._connecting.pop(url, None)
        self._client_connections[url] = conn
        return conn

    async def _open(self, target: str, options: ClientOptions) -> WSConnection:
        return await connect(target, self, options, resolver=self.resolver, logger=logger)

    @property
    def resolver(self) -> Resolver:
        """The RFC 3263 resolver used for SIP URI targets (system DNS unless configured)."""
        if self._resolver is None:
            self._resolver = Resolver()
        return self._resolver

    async def listen(self, url: str, options: ServerOptions | None = None) -> WSListener:
        """Accept SIP WebSocket clients on ``url`` (``ws://host:port/path`` or ``wss://``)."""
        listener = await listen(url, self, options or self.server_options)
        self._listeners.append(listener)
        return listener

    @property
    def connections(self) -> set[WSConnection]:
        """Every open WebSocket connection, both roles."""
        return set(self._connections)

    # ConnectionHandler -----------------------------------------------------------
    def connection_made(self, conn: WSConnection) -> None:
        self._connections.add(conn)
        self._ws_routes[(type(conn), conn.local_addr, conn.remote_addr)] = conn
        self.ws_connection_made(conn)

    def connection_lost(self, conn: WSConnection, exc: BaseException | None) -> None:
        self._connections.discard(conn)
        for key in [k for k, v in self._ws_routes.items() if v is conn]:
            del self._ws_routes[key]
        for target in [k for k, v in self._client_connections.items() if v is conn]:
            del self._client_connections[target]
        lost = list(conn.dialogs.values())
        for call_id, dialog in list(conn.dialogs.items()):
            if self._dialogs.get(call_id) is dialog:
                del self._dialogs[call_id]
        conn.dialogs.clear()
        for dialog in lost:
            handler = getattr(dialog, 'lost_handler', None)
            if handler is not None:
                try:
                    handler(exc)
                except Exception:  # noqa: BLE001
                    logger.exception('the lost_handler of dialog %s failed', dialog.call_id)
        self._transactions.flow_lost(conn, 'the WebSocket connection %r closed (code %s) '
                                     'before the final response' % (conn, conn.close_code))
        self.ws_connection_lost(conn, exc)

    def message_received(self, conn: WSConnection, message: SIPMessage) -> None:
        if message.is_request:
            self._request_received(conn, message)
        else:
            self._response_received(conn, message)

    # Hooks for subclasses ----------------------------------------------------------
    def ws_connection_made(self, conn: WSConnection) -> None:
        """Called for every new WebSocket connection, both roles."""

    def ws_connection_lost(self, conn: WSConnection, exc: BaseException | None) -> None:
        """Called when a WebSocket connection is gone (after its state is cleaned up)."""

    # -- aiosip overrides -----------------------------------------------------------
    async def start_dialog(self, from_uri: str, to_uri: str, contact_uri: str | None = None,
                           call_id: str | None = None, protocol: Any = None,
                           local_addr: Any = None, remote_addr: Any = None,
                           password: str | None = '', dialog: type | None = None, *,
                           transport: str | None = None) -> Any:
        """aiosip's ``start_dialog`` plus transport selection.

        ``protocol`` may also be a registry name or a connection; ``transport``
        names a registered transport; ``remote_addr`` may be a ``ws(s)://`` URL
        or a SIP URI; a To URI with ``;transport=ws`` selects WebSocket too.
        """
        conn: WSConnection | None = protocol if isinstance(protocol, WSConnection) else None
        if conn is None:
            if isinstance(protocol, str):
                transport, protocol = protocol, None
            if protocol is None:
                selection = select(transport=transport, remote_addr=remote_addr, to_uri=to_uri)
                if not selection.is_websocket:
                    return await super().start_dialog(
                        from_uri, to_uri, contact_uri, call_id, selection.implementation,
                        local_addr, remote_addr, password, dialog or aiosip.Dialog)
                conn = await self._connect_target(selection.target, selection.name)
            elif isinstance(protocol, type) and issubclass(protocol, WS):
                selection = select(transport=protocol.name, remote_addr=remote_addr, to_uri=to_uri)
                conn = await self._connect_target(selection.target, selection.name)
            else:
                return await super().start_dialog(from_uri, to_uri, contact_uri, call_id, protocol,
                                                  local_addr, remote_addr, password,
                                                  dialog or aiosip.Dialog)
        from_addr = NameAddr.parse(from_uri)
        if contact_uri is None:
            contact_header = ws_contact(conn.via_host, from_addr.uri.user)
        else:
            contact_header = str(NameAddr.parse(contact_uri))
        dlg = await super().start_dialog(
            aiosip_safe_text(from_uri), aiosip_safe_text(to_uri),
            aiosip_safe_text(contact_header), call_id, conn,
            conn.local_addr, conn.remote_addr, password, dialog or self.dialog_class)
        if isinstance(dlg, Dialog):
            dlg.contact_header = contact_header
            dlg.to_uri = to_uri
        conn.dialogs[dlg.call_id] = dlg                    # app._dialogs is weak (D8)
        return dlg

    async def _connect_target(self, target: str | None, name: str) -> WSConnection:
        if target is None:
            raise ConfigurationError('transport %r needs a ws(s):// URL or SIP URI' % name)
        return await self.connect(target)

    async def create_connection(self, protocol: Any, local_addr: Any, remote_addr: Any,
                                mode: str = 'client') -> Any:
        """aiosip's hook, extended: a connection object, a WS class, or a transport name."""
        if isinstance(protocol, WSConnection):
            self._ws_routes[(type(protocol), local_addr, remote_addr)] = protocol
            return protocol
        if isinstance(protocol, str):
            protocol = get_transport(protocol)
        if isinstance(protocol, type) and issubclass(protocol, WS):
            scheme = 'wss' if protocol.secure else 'ws'
            if mode == 'server':            # D18: aiosip's own server mode is broken
                host, port = local_addr if local_addr else ('127.0.0.1', 0)
                return await self.listen('%s://%s:%d/' % (scheme, host, port))
            url = remote_addr if isinstance(remote_addr, str) else '%s://%s:%d/' % (
                scheme, remote_addr[0], remote_addr[1])
            conn = await self.connect(url)
            self._ws_routes[(type(conn), local_addr, remote_addr)] = conn
            return conn
        return await super().create_connection(protocol, local_addr, remote_addr, mode)

    def dispatch(self, protocol: Any, msg: Any, addr: Any) -> None:
        if not isinstance(protocol, WSConnection):
            return super().dispatch(protocol, msg, addr)
        raw = getattr(msg, 'raw', None)
        if raw is None:
            raw = to_wire(msg, protocol)
        self.message_received(protocol, raw)

    async def handle_incoming(self, protocol: Any, msg: Any, addr: Any, route: Any) -> None:
        if not isinstance(protocol, WSConnection):
            return await super().handle_incoming(protocol, msg, addr, route)
        conn = protocol
        dlg = await self.start_dialog(msg.headers['From'], msg.headers['To'],
                                      call_id=msg.headers['Call-ID'], protocol=conn,
                                      password=None, contact_uri=ws_contact(conn.via_host))
        if isinstance(dlg, Dialog):
            # aiosip builds the server-side dialog from the peer's From (D14): requests
            # the server sends in it go to the peer's Contact, else its From URI.
            dlg.to_uri = str(NameAddr.parse(msg.headers['From']).uri)
        contact = msg.raw.get_all('Contact')
        if contact and isinstance(dlg, Dialog):
            with contextlib.suppress(SIPParseError):
                dlg.remote_target = str(NameAddr.parse(contact[0]).uri)
        try:
            await route(dlg, msg)                                           # D19
        except Exception:  # noqa: BLE001
            logger.exception('route for %s %s failed', msg.method, msg.request_uri)
            if msg.method != 'ACK' and conn.is_open:
                self._reply_raw(conn, msg.raw, 500)
        finally:
            # Out-of-dialog requests do not keep their dialog: the handler keeps
            # it (a reference) if it wants to stay in it, as aiosip intends.
            if conn.dialogs.get(dlg.call_id) is dlg and msg.method not in _DIALOG_FORMING:
                del conn.dialogs[dlg.call_id]

    def send_message(self, protocol: Any, local_addr: Any, remote_addr: Any, msg: Any) -> None:
        if not (isinstance(protocol, type) and issubclass(protocol, CONNECTION_TYPES)):
            return super().send_message(protocol, local_addr, remote_addr, msg)
        conn = self._ws_routes.get((protocol, local_addr, remote_addr))
        is_request = not isinstance(msg, aiosip.Response)
        if conn is None or not conn.is_open:
            if not is_request:                        # RFC 3261 §18.2.2: cannot reconnect to a WS client
                logger.warning('dropped %d %s: the WebSocket connection to %s is gone',
                               msg.status_code, msg.status_message, remote_addr)
                return None
            raise ConnectionLost('cannot send %s: the WebSocket connection to %s is closed'
                                 % (msg.method, remote_addr))
        request_uri = None
        if is_request and not getattr(msg, 'request_uri', None):
            dialog = conn.dialogs.get(str(msg.headers.get('Call-ID')))
            if isinstance(dialog, Dialog):
                request_uri = dialog.request_uri_for(msg.method)      # D10
        wire = to_wire(msg, conn, request_uri=request_uri)
        if not is_request:
            dialog = conn.dialogs.get(str(msg.headers.get('Call-ID')))
            answering = getattr(dialog, 'answering', None)
            if answering is not None and answering.get('CSeq') == wire.get('CSeq'):
                vias = [(k, v) for k, v in answering.headers if k == 'Via']     # D4
                rest = [(k, v) for k, v in wire.headers if k != 'Via']
                wire.headers = vias + rest
        branch = wire.top_branch if is_request and wire.method != 'ACK' else None
        if not branch:
            conn.send(wire)
            return None
        # aiosip's request: each response goes to the dialog that sent it, even when
        # another dialog with the same Call-ID came along meanwhile (D8); a timeout or a
        # lost connection fails aiosip's own future
        dialog = self._dialogs.get(str(msg.headers.get('Call-ID')))
        sent = self._transactions.send_request(
            conn, wire, branch=branch, timeout=conn.options.transaction_timeout,
            on_response=lambda response: self._to_dialog(conn, response, dialog))
        sent.add_done_callback(lambda done: _fail_with(msg.future, done))
        return None

    def send_request(self, conn: WSConnection, request: SIPMessage, *,
                     on_provisional: Callable[[SIPMessage], None] | None = None
                     ) -> asyncio.Future[SIPMessage]:
        """Send a codec-level request as a stateful proxy would: add our Via, track it.

        The returned future gets the final response (a :class:`SIPMessage`), or
        fails with :class:`TransactionTimeout` / :class:`ConnectionLost`;
        ``on_provisional`` is called with each 1xx response.  An ACK is sent
        untracked and gets a future that is already done (with None).
        """
        branch = new_branch()
        request.headers.insert(0, ('Via', conn.via(branch)))
        if request.method == 'ACK':
            future: asyncio.Future[SIPMessage] = self.loop.create_future()
            future.set_result(None)  # type: ignore[arg-type]  # (an ACK has no answer)
            conn.send(request)
            return future

        def provisional(response: SIPMessage) -> None:
            if on_provisional is not None and (response.status or 0) < 200:
                on_provisional(response)
        return self._transactions.send_request(
            conn, request, branch=branch, timeout=conn.options.transaction_timeout,
            on_response=provisional)

    def end_dialog(self, dialog: Any) -> None:
        """Forget ``dialog`` (D15: aiosip's ``stop_dialog`` and ``Dialog.close`` are broken):
        requests for its Call-ID then get 481."""
        conn = dialog.protocol
        if isinstance(conn, WSConnection) and conn.dialogs.get(dialog.call_id) is dialog:
            del conn.dialogs[dialog.call_id]
        if self._dialogs.get(dialog.call_id) is dialog:
            del self._dialogs[dialog.call_id]

    def spawn(self, coroutine: Any) -> asyncio.Task[Any]:
        """Run ``coroutine`` in a task that :meth:`close` waits for (or cancels)."""
        task = self.loop.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def intercept_request(self, conn: WSConnection, message: SIPMessage) -> bool:
        """Hook for proxies: see every incoming request first; True means handled.

        The default handles nothing, so requests go on to dialogs and routes.
        """
        return False

    def _response_received(self, conn: WSConnection, message: SIPMessage) -> None:
        try:
            branch = message.top_branch or ''
        except SIPParseError as exc:
            logger.warning('%r: dropped a response with a bad Via: %s', conn, exc)
            return
        if self._transactions.response_received(message, conn):
            return                                  # to the request it answers
        if (branch, 'INVITE') in self._transactions:
            return                    # e.g. the 200 to a CANCEL sent untracked: nothing to do
        self._to_dialog(conn, message, None)

    def _to_dialog(self, conn: WSConnection, message: SIPMessage, dialog: Any) -> None:
        """Hand a response to aiosip: to ``dialog``, else the dialog of its Call-ID."""
        call_id = message.get('Call-ID')
        if dialog is None:
            dialog = self._dialogs.get(call_id)
        if dialog is None:                                                  # D8
            logger.info('%r: dropped a response for no known transaction (%s %s, Call-ID %s)',
                        conn, message.status, message.reason, call_id)
            return
        try:
            dialog.receive_message(to_aiosip(message))
        except (ValueError, asyncio.InvalidStateError) as exc:
            # aiosip: "This Response SIP message doesn't have Request", or a late answer
            # to a transaction that already timed out.
            logger.info('%r: dropped a response aiosip could not match: %s', conn, exc)

    def _request_received(self, conn: WSConnection, message: SIPMessage) -> None:
        if self.intercept_request(conn, message):
            return
        try:
            msg = to_aiosip(message)
        except (SIPParseError, ValueError, AttributeError) as exc:
            logger.info('%r: %s request refused: %s', conn, message.method, exc)
            self._reply_raw(conn, message, 400, 'Bad Request (%s)' % str(exc)[:100])
            return
        to_tag = NameAddr.parse(message.get('To') or '').tag if message.get('To') else None
        call_id = message.get('Call-ID')
        if to_tag is not None or message.method in ('ACK', 'CANCEL'):
            dialog = self._dialogs.get(call_id)
            if dialog is not None and dialog.protocol is conn:
                handler = getattr(dialog, 'request_handler', None)
                if handler is not None:                                     # D13
                    handler(message)
                else:
                    dialog.receive_message(msg)
                return
            if message.method == 'ACK':
                logger.debug('%r: dropped an ACK for no known dialog', conn)
                return
            if to_tag is not None or message.method == 'CANCEL':
                self._reply_raw(conn, message, 481)
                return
        unsupported = codec.unsupported_option_tags(message, self.supported_extensions)
        if unsupported:                                          # RFC 3261 8.2.2.3
            self._reply_raw(conn, message, 420, headers=[('Unsupported', ', '.join(unsupported))])
            return
        route = self.router.routes.get(message.method)
        if route is None:
            allow = ', '.join(sorted(self.router.routes))
            self._reply_raw(conn, message, 405 if allow else 501,
                            headers=[('Allow', allow)] if allow else [])
            return
        self.spawn(self.handle_incoming(conn, msg, conn.remote_addr, route))

    def _reply_raw(self, conn: WSConnection, request: SIPMessage, status: int,
                   reason: str | None = None, headers: list[tuple[str, str]] | None = None) -> None:
        if request.method == 'ACK':
            return
        conn.send(codec.make_response(request, status, reason, to_tag=new_tag(),
                                      headers=headers or []))

    # -- shutdown -----------------------------------------------------------------
    async def close(self, code: int = 1001, reason: str = 'going away') -> None:
        """Close listeners and connections (clients see ``code``), end every task (D15/D20)."""
        self._closing = True
        await shut_down(self._listeners, self._connections, self._tasks, code, reason)
        self._transactions.close('the application closed')
        for transport in list(self._transports.values()):        # aiosip's own UDP sockets
            transport.close()
        self._transports.clear()
        self._protocols.clear()
        await self.finish()

    async def __aenter__(self) -> Application:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _fail_with(future: Any, done: asyncio.Future[SIPMessage]) -> None:
    """aiosip's ``future`` of a request fails as its transaction did (Timer F, a lost
    connection); its final response reaches it through the dialog instead."""
    if done.cancelled():
        return
    exc = done.exception()
    if exc is not None and future is not None and not future.done():
        future.set_exception(exc)
