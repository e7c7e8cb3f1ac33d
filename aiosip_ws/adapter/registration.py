"""A registration that survives: refresh, reconnection with backoff, SIP Outbound (RFC 5626).

:class:`Registration` keeps one AOR registered over WebSocket.  It refreshes
before the binding expires; when the connection is lost it reconnects with
exponential backoff and jitter (between ``recovery_min`` and ``recovery_max``
seconds, like JsSIP's ``connection_recovery_min_interval``/``max_interval``)
and registers again.  With ``outbound=True`` (the default) the REGISTER carries
``Supported: outbound, path`` and a Contact with ``+sip.instance`` and
``reg-id`` (RFC 5626 4.2), so the registrar replaces the old flow's binding
instead of adding one.  The instance URN stays the same for the life of the
object; pass ``instance_id`` to keep it across restarts (RFC 5626 4.1).

    registration = Registration(app, 'sip:alice@example.com', 'wss://edge.example.com/ws',
                                password='secret')
    await registration.start()          # first registration, or an exception
    ...
    await registration.stop()           # un-registers and stops
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from multidict import CIMultiDict

from ..core.grammar import retry_after_seconds
from ..core.register import granted_expires
from ..core.sipuri import NameAddr, ws_contact
from ..errors import AiosipWSError, ConfigurationError, RegistrationError, TransportError

__all__ = ['Registration', 'RegistrationError']

logger = logging.getLogger(__name__)





class Registration:
    """Keep ``aor`` registered through ``target`` (a ws(s):// URL or a SIP URI)."""

    def __init__(self, app: Any, aor: str, target: str, *, password: str | None = None,
                 username: str | None = None, expires: int = 600, outbound: bool = True,
                 instance_id: str | None = None, reg_id: int = 1,
                 recovery_min: float = 2.0, recovery_max: float = 30.0,
                 refresh_ratio: float = 0.8, rng: random.Random | None = None,
                 on_registered: Callable[[Registration], Any] | None = None,
                 on_response: Callable[[Registration, int, Any, float], Any] | None = None,
                 connect: Callable[[], Awaitable[Any]] | None = None,
                 reconnect: bool = True) -> None:
        if not 0 < recovery_min <= recovery_max:
            raise ConfigurationError('need 0 < recovery_min <= recovery_max, got %r and %r'
                                     % (recovery_min, recovery_max))
        if expires <= 0:
            raise ConfigurationError('expires must be a positive number of seconds')
        self.app = app
        self.aor = aor
        self.target = target
        self.password = password
        self.username = username
        self.expires = expires
        self.outbound = outbound
        self.instance_id = instance_id or 'urn:uuid:%s' % uuid.uuid4()
        self.reg_id = reg_id
        self.recovery_min, self.recovery_max = recovery_min, recovery_max
        self.refresh_ratio = refresh_ratio
        self.rng = rng or random.Random()
        self.on_registered = on_registered
        #: called as ``on_response(registration, expires, response, seconds)`` after every
        #: REGISTER this object sends (the first, each refresh, the un-REGISTER)
        self.on_response = on_response
        #: how to get a connection (default ``app.connect(target)``)
        self._connect = connect
        #: whether a lost flow is recovered (RFC 5626 §4.5); else the loop ends with it
        self.reconnect = reconnect
        #: how many times a connection was (re)established and registered
        self.registrations = 0
        #: consecutive failed attempts (reset by a successful registration)
        self.failures = 0
        self.last_response: Any = None
        self.registered = asyncio.Event()
        self._dialog: Any = None
        self._contact: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._first: asyncio.Future[None] | None = None
        self._stopping = False

    @property
    def connection(self) -> Any:
        return None if self._dialog is None else self._dialog.protocol

    @property
    def contact(self) -> str | None:
        """The Contact currently registered."""
        return self._contact

    def backoff(self) -> float:
        """RFC 5626 4.5 style: W = min(max, min * 2**failures), wait uniform in [W/2, W]."""
        ceiling = min(self.recovery_max, self.recovery_min * 2 ** max(0, self.failures - 1))
        return self.rng.uniform(max(self.recovery_min, ceiling / 2), ceiling)

    async def start(self, timeout: float | None = 30) -> None:
        """Register, then keep the registration alive in the background.

        Waits for the first registration (up to ``timeout``); a refusal by the
        registrar raises :class:`RegistrationError`, and so does running out of time.
        """
        if self._task is not None:
            raise ConfigurationError('this Registration is already started')
        loop = asyncio.get_running_loop()
        self._first = loop.create_future()
        self._task = loop.create_task(self._run())
        try:
            await asyncio.wait_for(asyncio.shield(self._first), timeout)
        except asyncio.TimeoutError:
            await self.stop(unregister=False)
            raise RegistrationError('%s: not registered within %s s (last error: %s)'
                                    % (self.aor, timeout, self._last_error)) from None
        except BaseException:
            await self.stop(unregister=False)
            raise

    _last_error: object = None

    async def stop(self, *, unregister: bool = True, timeout: float = 5) -> None:
        """Stop refreshing; un-register first (Expires: 0) when connected."""
        self._stopping = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if unregister and self._dialog is not None and self.connection is not None \
                and self.connection.is_open and self.registered.is_set():
            try:
                await asyncio.wait_for(self._register(0), timeout)
            except (AiosipWSError, asyncio.TimeoutError, ConnectionError) as exc:
                logger.info('%s: un-REGISTER failed: %s', self.aor, exc)
        self.registered.clear()

    # -- the loop ---------------------------------------------------------------------
    async def _run(self) -> None:
        while not self._stopping:
            retry_after: float | None = None
            try:
                await self._connect_and_register()
            except RegistrationError as exc:
                self._last_error = exc
                retry_after = _retry_after_503(exc.response)
                if retry_after is None and self._first is not None and not self._first.done():
                    self._first.set_exception(exc)
                    return
                logger.warning('%s: %s%s', self.aor, exc, '' if retry_after is None
                               else ' (retrying after %g s, as the registrar asked)' % retry_after)
            except (TransportError, ConnectionError, OSError, asyncio.TimeoutError) as exc:
                self._last_error = exc
                retry_after = getattr(exc, 'retry_after', None)
                if (not self.reconnect and retry_after is None and self._first is not None
                        and not self._first.done()):
                    self._first.set_exception(exc)
                    return
                logger.info('%s: registration attempt failed: %s%s', self.aor, exc,
                            '' if retry_after is None else ' (Retry-After: %g s)' % retry_after)
            else:
                await self._keep_alive()
                if not self.reconnect:
                    self.registered.clear()
                    return
                logger.info('%s: flow lost, reconnecting', self.aor)
            self.registered.clear()
            self.failures += 1
            # A server that said when to come back (503 + Retry-After, to the REGISTER or to
            # the handshake) is not asked sooner: that is what spreads a reconnection storm.
            await asyncio.sleep(max(self.backoff(), min(retry_after or 0.0, MAX_RETRY_AFTER)))

    async def _connect_and_register(self) -> None:
        conn = await (self._connect() if self._connect is not None else self.app.connect(self.target))
        self._dialog = await self.app.start_dialog(self.aor, self.aor, protocol=conn,
                                                   password=self.password)
        if self.username:
            self._dialog.auth_username = self.username
        self._contact = ws_contact(conn.via_host, NameAddr.parse(self.aor).uri.user,
                                   outbound=self.outbound,
                                   reg_id=self.reg_id if self.outbound else None,
                                   instance=self.instance_id)
        response = await self._register(self.expires)
        self.failures = 0
        self.registrations += 1
        self.registered.set()
        if self._first is not None and not self._first.done():
            self._first.set_result(None)
        if self.on_registered is not None:
            self.on_registered(self)
        if self.outbound and 'outbound' not in response.headers.get('Require', ''):
            logger.info('%s: the registrar did not confirm SIP Outbound (no Require: outbound)',
                        self.aor)

    async def _register(self, expires: int) -> Any:
        headers: CIMultiDict[str] = CIMultiDict()
        headers['Contact'] = self._contact or ''
        if self.outbound:
            headers['Supported'] = 'outbound, path'
        started = time.perf_counter()
        response = await asyncio.wait_for(
            self._dialog.register(headers=headers, expires=expires),
            self.connection.options.transaction_timeout + 5)
        self.last_response = response
        if self.on_response is not None:
            self.on_response(self, expires, response, time.perf_counter() - started)
        if not 200 <= response.status_code < 300:
            raise RegistrationError('%s: REGISTER refused: %d %s' % (
                self.aor, response.status_code, response.status_message), response)
        return response

    def granted(self) -> int:
        """Seconds the registrar granted our Contact (its ;expires, else Expires, else ours)."""
        raw = getattr(self.last_response, 'raw', None)
        if raw is None:
            return self.expires
        own = NameAddr.parse(self._contact).uri.host if self._contact else None
        return granted_expires(raw, own, self.expires)

    def refresh_delay(self) -> float:
        """When to refresh: ``refresh_ratio`` of the granted time, at least one second."""
        return max(1.0, self.granted() * self.refresh_ratio)

    @property
    def stopped(self) -> bool:
        """True once the background loop has ended (stopped, refused or, without
        ``reconnect``, the flow was lost)."""
        return self._task is None or self._task.done()

    async def wait_stopped(self) -> None:
        """Wait until the background loop ends."""
        if self._task is not None:
            await asyncio.wait({self._task})

    async def _keep_alive(self) -> None:
        """Refresh before expiry until the connection is lost."""
        conn = self.connection
        while not self._stopping and conn.is_open:
            delay = self.refresh_delay()
            try:
                await asyncio.wait_for(asyncio.shield(conn.closed), delay)
                return                                            # connection lost
            except asyncio.TimeoutError:
                pass
            try:
                await self._register(self.expires)
            except RegistrationError as exc:
                logger.warning('%s: refresh refused: %s', self.aor, exc)
                await conn.close(1000, 'registration refused')
                return
            except (TransportError, ConnectionError, asyncio.TimeoutError) as exc:
                logger.info('%s: refresh failed: %s', self.aor, exc)
                return


#: the longest Retry-After honoured (seconds); a longer one is taken as this
MAX_RETRY_AFTER = 3600.0


def _retry_after_503(response: Any) -> float | None:
    """The Retry-After of a 503 (aiosip response), or None: a 503 with Retry-After is a
    "come back later", not a refusal (RFC 3261 §21.5.4)."""
    if response is None or getattr(response, 'status_code', None) != 503:
        return None
    return retry_after_seconds(response.headers.get('Retry-After'))
