"""``aiosip-ws options`` and ``aiosip-ws message`` over UDP, TCP and TLS: the targets
``udp://HOST[:PORT]``, ``tcp://HOST[:PORT]`` and ``tls://HOST[:PORT]`` (5060, 5060 and 5061
by default).

:class:`NetProbe` has the interface of :class:`aiosip_ws.tools.probe.Probe` for these
transports, on the project's own codec and transaction layer (UDP retransmission per RFC
3261 §17, answering 401/407 with Digest), so that the probe speaks to any SIP server, not
only a WebSocket one.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import ssl as _ssl
import time
from dataclasses import dataclass
from typing import Any

from ..core import codec
from ..core.codec import SIPMessage
from ..core.dialog import new_request
from ..core.digest import authorized_retry
from ..core.grammar import split_net_url, url_host
from ..core.sipuri import NameAddr, SipURI, user_uri
from ..core.transaction import new_branch
from ..errors import (
    ConfigurationError,
    ConnectionLost,
    DigestError,
    TransactionTimeout,
    TransportError,
)
from ..transport.tcp import StreamConnection, connect_tcp
from ..transport.transactions import TransactionLayer
from ..transport.udp import UDPEndpoint, UDPFlow, listen_udp
from .probe import Transaction

__all__ = ['NetProbe', 'NetTimings']

logger = logging.getLogger(__name__)

@dataclass
class NetTimings:
    url: str
    address: str
    connect: float | None
    total: float
    dns: float = 0.0

    def describe(self) -> str:
        parts = []
        if self.dns >= 0.0005:
            parts.append('dns %.1f ms' % (self.dns * 1e3))
        parts.append('connect %.1f ms' % (self.connect * 1e3) if self.connect is not None
                     else 'UDP (no connection)')
        return '%s (total %.1f ms)' % (', '.join(parts), self.total * 1e3)

    def as_dict(self) -> dict[str, Any]:
        return {'url': self.url, 'address': self.address, 'dns_ms': round(self.dns * 1e3, 3),
                'connect_ms': None if self.connect is None else round(self.connect * 1e3, 3),
                'total_ms': round(self.total * 1e3, 3)}


class NetProbe:
    """A few transactions with a SIP server over UDP, TCP or TLS."""

    def __init__(self, target: str, *, timeout: float = 10.0,
                 ssl_context: _ssl.SSLContext | None = None) -> None:
        if timeout <= 0:
            raise ConfigurationError('timeout must be a positive number of seconds')
        self.target = target
        self.scheme, self.host, self.port = split_net_url(target)
        self.timeout = timeout
        self.ssl_context = ssl_context if self.scheme == 'tls' else None
        if self.scheme == 'tls' and self.ssl_context is None:
            self.ssl_context = _ssl.create_default_context()
        self.layer = TransactionLayer()
        self.flow: UDPFlow | StreamConnection | None = None
        self._endpoint: UDPEndpoint | None = None
        self.timings: NetTimings | None = None
        self.watch: dict[str, Transaction] = {}

    async def __aenter__(self) -> NetProbe:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> NetTimings:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            infos = await asyncio.wait_for(loop.getaddrinfo(
                self.host, self.port, type=socket.SOCK_DGRAM if self.scheme == 'udp'
                else socket.SOCK_STREAM), self.timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            raise TransportError('cannot resolve %s: %s' % (self.host, exc)) from None
        family, address = infos[0][0], infos[0][4]
        resolved = time.perf_counter()
        connect = None
        if self.scheme == 'udp':
            # bound to the address that routes to the server: it is our Via's sent-by
            with socket.socket(family, socket.SOCK_DGRAM) as route:
                route.connect(address)                    # (sends nothing)
                local = route.getsockname()[0]
            self._endpoint = await listen_udp(local, 0, self)
            self.flow = self._endpoint.flow((address[0], address[1]))
        else:
            self.flow = await connect_tcp(address[0], address[1], self,
                                          ssl_context=self.ssl_context,
                                          server_hostname=self.host, timeout=self.timeout)
            connect = time.perf_counter() - resolved
        self.timings = NetTimings(self.target, '%s:%d' % (address[0], address[1]), connect,
                                  time.perf_counter() - started, dns=resolved - started)
        return self.timings

    # the handler of the UDP endpoint and the TCP/TLS connection
    def connection_made(self, conn: StreamConnection) -> None:
        pass

    def connection_lost(self, conn: StreamConnection, exc: BaseException | None) -> None:
        self.layer.flow_lost(conn)

    def message_received(self, flow: Any, message: SIPMessage) -> None:
        if message.is_request:
            if message.method != 'ACK':                    # a probe serves nothing
                flow.send(codec.make_response(message, 405, headers=[('Allow', '')]))
            return
        call_id = message.get('Call-ID') or ''
        txn = self.watch.get(call_id)
        if txn is not None and message.status is not None:
            now = time.perf_counter()
            txn.responses.append((message.status, message.reason, now))
            if txn.first_response_at is None:
                txn.first_response_at = now
            if message.status >= 200:
                txn.final_at = now
        if not self.layer.response_received(message):
            logger.info('dropped a response for no transaction (%s %s)', message.status,
                        message.reason)

    async def close(self) -> None:
        self.layer.close()
        if isinstance(self.flow, StreamConnection):
            self.flow.close()
            await self.flow.wait_closed()
        if self._endpoint is not None:
            self._endpoint.close()
            await self._endpoint.wait_closed()
        self.flow = self._endpoint = None

    # -- transactions -------------------------------------------------------------------
    def default_request_uri(self) -> str:
        """The server itself, with the transport it is reached over."""
        host = url_host(self.host)
        if self.scheme == 'tls':
            return str(SipURI('sips', None, host, self.port))
        params = (('transport', 'tcp'),) if self.scheme == 'tcp' else ()
        return str(SipURI('sip', None, host, self.port, params))

    async def _transact(self, method: str, request_uri: str, from_uri: str, to_uri: str, *,
                        body: bytes = b'', content_type: str | None = None,
                        user: str | None = None, password: str | None = None) -> Transaction:
        if self.flow is None:
            raise ConnectionLost('not connected: call connect() first')
        flow = self.flow
        request = new_request(method, request_uri, from_='<%s>' % user_uri(from_uri, '--from'),
                              to=to_uri, body=body,
                              content_type=content_type)
        txn = Transaction(method=method, request_uri=request_uri, sent_at=time.perf_counter())
        self.watch[request.get('Call-ID') or ''] = txn
        answered = 0
        try:
            while True:
                sent = SIPMessage(method=request.method, uri=request.uri, body=request.body,
                                  headers=[('Via', flow.via(new_branch())), *request.headers])
                future = self.layer.send_request(flow, sent)
                response = await asyncio.wait_for(future, self.timeout)
                txn.response = response
                if response.status in (401, 407) and password and answered < 2:
                    request = authorized_retry(request, response, password=password,
                                               username=user or NameAddr.parse(from_uri).uri.user
                                               or '')
                    answered += 1
                    continue
                break
        except TransactionTimeout as exc:
            txn.error = 'timeout: %s' % exc
        except asyncio.TimeoutError:
            txn.error = 'no final response within %.1f s' % self.timeout
        except (ConnectionLost, TransportError) as exc:
            txn.error = 'connection lost: %s' % exc
        except DigestError as exc:
            txn.error = 'cannot answer the challenge: %s' % exc
        finally:
            self.watch.pop(request.get('Call-ID') or '', None)
        if txn.response is not None and txn.final_at is None:
            txn.final_at = time.perf_counter()
        return txn

    async def options(self, to_uri: str | None = None, from_uri: str | None = None) -> Transaction:
        uri = user_uri(to_uri or self.default_request_uri(), '--to')
        from_uri = from_uri or 'sip:aiosip-ws@%s' % url_host(self.host)
        return await self._transact('OPTIONS', str(uri), from_uri, '<%s>' % uri)

    async def message(self, from_uri: str, to_uri: str, body: str, *,
                      content_type: str = 'text/plain', user: str | None = None,
                      password: str | None = None) -> Transaction:
        uri = user_uri(to_uri, '--to')
        return await self._transact('MESSAGE', str(uri), from_uri, '<%s>' % uri,
                                    body=body.encode('utf-8', 'surrogateescape'),
                                    content_type=content_type, user=user, password=password)
