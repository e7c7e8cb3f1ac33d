"""Users from the operator's own store: an app's ``credentials(user, realm)`` coroutine
in place of ``--users FILE`` (docs/routing.rst, "Identity from Python").

:class:`CredentialStore` is what :class:`~aiosip_ws.serve.auth.DigestAuthenticator` reads
users from, as it reads a :class:`~aiosip_ws.serve.auth.UserFile`, with a cache in front
of the app:

* answers are kept ``ttl`` seconds, misses too (a user who does not exist costs one
  lookup per ``ttl``, as one who does), at most ``size`` users, the least recently used
  forgotten first;
* lookups are bounded to ``rate`` per second (a burst of as many): a REGISTER flood with
  made-up user names cannot become load on the store.  A first challenge over the rate
  offers every algorithm without a lookup; credentials that need one get 503 with
  Retry-After;
* concurrent requests for one user wait on one lookup;
* a store that fails or is slow (``timeout``) caches nothing and answers 503.

:meth:`CredentialStore.get` is synchronous (the Digest check is): a user not cached raises
:class:`~aiosip_ws.errors.CredentialsPending`; the admission stage awaits
:meth:`CredentialStore.wait` before it checks the request again.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable

from ..core import digest
from ..core.ratelimit import TokenBucket
from ..core.sipuri import SipURI
from ..errors import (
    ConfigurationError,
    CredentialsPending,
    CredentialsUnavailable,
    SIPParseError,
)
from ..transport.throttle import LogThrottle
from .auth import ALGORITHMS, User
from .routing import Credentials

__all__ = ['CredentialStore']

logger = logging.getLogger(__name__)
store_log = LogThrottle(logger)

#: ``provider(user, realm)`` -> the user's credentials, or None: no such user
Provider = Callable[[str, str], Awaitable[Credentials | None]]


def _retrieved(task: asyncio.Future[User | None]) -> None:
    """A lookup whose waiters all left: its failure is not "never retrieved"."""
    if not task.cancelled():
        task.exception()


class CredentialStore:
    """See the module."""

    def __init__(self, provider: Provider, realm: str, *, size: int = 10000,
                 ttl: float = 60.0, rate: float = 50.0, timeout: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if size < 1 or ttl <= 0 or rate <= 0 or timeout <= 0:
            raise ConfigurationError('--credentials-cache, --credentials-ttl and '
                                     '--credentials-rate: give positive numbers')
        self.provider, self.realm = provider, realm
        self.size, self.ttl, self.timeout = size, ttl, timeout
        self.clock = clock
        self._bucket = TokenBucket(rate, max(1.0, rate), clock())
        #: name -> (until when, the user or None: no such user)
        self._cache: collections.OrderedDict[str, tuple[float, User | None]] = \
            collections.OrderedDict()
        self._pending: dict[str, asyncio.Future[User | None]] = {}
        #: name -> until when a first challenge does without it (its lookup failed)
        self._failed: dict[str, float] = {}
        #: lookups made, refused for the rate, failed
        self.lookups = self.refused = self.failures = 0

    # -- what DigestAuthenticator reads --------------------------------------------------
    def get(self, name: str, realm: str, *, needed: bool = True) -> User | None:
        """The user ``name`` of ``realm`` (None: no such user), when cached.  Otherwise
        :class:`CredentialsPending` for a lookup, or, when none may start now (over the
        rate), :class:`CredentialsUnavailable` if ``needed``, else None."""
        if realm != self.realm:
            return None
        entry = self._cache.get(name)
        if entry is not None:
            until, user = entry
            if until > self.clock():
                self._cache.move_to_end(name)
                return user
            del self._cache[name]
        if self._failed.get(name, 0.0) > self.clock():     # its store failed just now
            if needed:
                raise CredentialsUnavailable('the user store failed')
            return None                                   # a challenge of every algorithm
        if name in self._pending or self._bucket.take(self.clock()):
            if name not in self._pending:
                task = self._pending[name] = asyncio.ensure_future(self._look_up(name))
                task.add_done_callback(_retrieved)
            raise CredentialsPending(self, name)
        self.refused += 1
        store_log.warning('credentials rate', 'more than %g user lookups a second: %s',
                          self._bucket.rate, 'refused with 503' if needed
                          else 'challenged with every algorithm')
        if needed:
            raise CredentialsUnavailable('too many user lookups')
        return None

    def __len__(self) -> int:
        return len(self._cache)

    def clear(self) -> None:
        """Forget every answer (a reload: the store may say otherwise now)."""
        self._cache.clear()

    async def close(self) -> None:
        """End the lookups in progress (serve stops)."""
        pending = list(self._pending.values())
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    # -- lookups --------------------------------------------------------------------------
    async def wait(self, name: str) -> bool:
        """Until the lookup of ``name`` ended: True; False when it failed (a first
        challenge then goes without it for a second; credentials get 503)."""
        try:
            await self.lookup(name)
        except CredentialsUnavailable:
            return False
        return True

    def lookup(self, name: str) -> asyncio.Future[User | None]:
        """The lookup of ``name`` in progress (shielded: a waiter's cancellation does not
        end it for the others)."""
        pending = self._pending.get(name)
        if pending is None:
            future: asyncio.Future[User | None] = asyncio.get_running_loop().create_future()
            entry = self._cache.get(name)
            future.set_result(entry[1] if entry is not None else None)
            return future
        return asyncio.shield(pending)

    async def _look_up(self, name: str) -> User | None:
        self.lookups += 1
        try:
            try:
                found = await asyncio.wait_for(self.provider(name, self.realm), self.timeout)
                user = None if found is None else self.user_of(name, found)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the store's failure is a 503
                self.failures += 1
                if len(self._failed) >= self.size:
                    self._failed.clear()
                self._failed[name] = self.clock() + 1.0
                store_log.warning('credentials failed', 'the credentials of %s could not be '
                                  'looked up: %s', name, exc or type(exc).__name__)
                raise CredentialsUnavailable('the user store failed') from None
            self._cache[name] = (self.clock() + self.ttl, user)
            self._cache.move_to_end(name)
            while len(self._cache) > self.size:
                self._cache.popitem(last=False)
            return user
        finally:
            self._pending.pop(name, None)

    def user_of(self, name: str, found: Credentials) -> User:
        """A :class:`User` of the app's :class:`Credentials` (HA1s from a password for
        every algorithm; the HA1s given, checked)."""
        if found.password is not None:
            ha1 = {a: digest.ha1(name, self.realm, found.password, a) for a in ALGORITHMS}
        else:
            ha1 = {}
            for algorithm, value in found.ha1.items():
                algorithm = algorithm.upper()
                value = value.strip().lower()
                if algorithm not in ALGORITHMS or not value or \
                        any(c not in '0123456789abcdef' for c in value):
                    raise ValueError('an HA1 is %s: hex digits' % '/'.join(ALGORITHMS))
                ha1[algorithm] = value
        if not ha1:
            raise ValueError('the credentials of %s have neither an HA1 nor a password' % name)
        aors = []
        for aor in found.aors:
            try:
                uri = SipURI.parse(aor)
            except SIPParseError as exc:
                raise ValueError('%r is not a SIP URI (%s)' % (aor, exc)) from None
            aors.append(SipURI(uri.scheme, uri.user, uri.host.lower()).aor)
        return User(name, self.realm, ha1, aors[0] if len(aors) == 1 else None,
                    frozenset(aors) if len(aors) > 1 else None)
