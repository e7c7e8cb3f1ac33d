"""Digest authentication for ``aiosip-ws serve`` (RFC 3261 §22, RFC 7616, RFC 8760).

The user file
-------------
One user per line, ``#`` starts a comment::

    alice:example.com:8a1b...                       an htdigest line: the MD5 HA1
    bob:example.com:3f2c...:9e7d...                 MD5 and SHA-256 HA1
    carol:example.com::9e7d...                      SHA-256 only
    dave:example.com:5c1a...:1b0e...:sip:d@example.com   the AOR dave may use

An HA1 is ``H(user:realm:password)`` in hex (32 digits for MD5, 64 for SHA-256); the
file never holds a password.  Apache's ``htdigest`` writes the first form, and
``aiosip-ws passwd FILE USER --realm REALM`` writes the second.  Without an AOR, a user
owns ``sip:USER@DOMAIN`` for each local domain.

What is challenged
------------------
REGISTER gets 401 with ``WWW-Authenticate``; any other out-of-dialog request whose From
is in a local domain gets 407 with ``Proxy-Authenticate``; ACK and CANCEL never are
(§22.1), nor in-dialog requests, nor a peer in a ``trusted`` network.  One challenge per
algorithm the user file can answer, in the configured order: by default SHA-256, then
MD5.  RFC 8760 §2.4 lists challenges most preferred first, and clients that follow it
(aiosip-ws among them) take SHA-256; JsSIP 3.13 and SIP.js 0.21 keep only the *last*
``WWW-Authenticate``/``Proxy-Authenticate`` of a response and answer only MD5, so MD5
comes last.  Nonces carry their issue
time and an HMAC made with the nonce secret, so every node and worker sharing that secret
accepts them; an expired one gets the challenge again with ``stale=true``.  The highest
``nc`` seen per nonce is kept (in memory, bounded, forgotten with the nonce), so a
replayed answer is refused.
"""
from __future__ import annotations

import collections
import logging
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..core import digest
from ..core.codec import SIPMessage
from ..core.grammar import address_in, parse_networks
from ..core.sipuri import SipURI
from ..errors import ConfigurationError, DigestError, HandshakeRefused, SIPParseError

__all__ = ['User', 'UserFile', 'Identity', 'AuthOutcome', 'DigestAuthenticator', 'user_line',
           'aor_key', 'TokenAuthenticator']

logger = logging.getLogger(__name__)

#: HA1 length (hex digits) per algorithm
_HA1_LENGTH = {'MD5': 32, 'SHA-256': 64}
#: the algorithms serve knows, in the order a user file line holds their HA1s
ALGORITHMS = ('MD5', 'SHA-256')
#: the challenges serve offers by default, in this order (see the module's documentation)
DEFAULT_CHALLENGES = ('SHA-256', 'MD5')


@dataclass(frozen=True)
class User:
    name: str
    realm: str
    #: algorithm -> HA1 (hex)
    ha1: dict[str, str]
    #: the AOR the file names, or None: ``sip:NAME@DOMAIN`` for every local domain
    aor: str | None = None
    #: several AORs the user may use (an app's credentials), or None
    aors: frozenset[str] | None = None


def aor_key(uri: SipURI) -> str:
    """The AOR of ``uri`` as ownership compares it: ``sip:user@host``, host lower-cased."""
    return SipURI(uri.scheme, uri.user, uri.host.lower()).aor


def _aor_key(value: str) -> str:
    uri = SipURI.parse(value)
    if uri.scheme not in ('sip', 'sips') or not uri.user:
        raise SIPParseError('an AOR is sip:USER@DOMAIN, not %r' % value)
    return aor_key(uri)


def user_line(name: str, realm: str, password: str, *, aor: str | None = None,
              algorithms: Iterable[str] = ALGORITHMS) -> str:
    """A user file line for ``name`` (``aiosip-ws passwd``): HA1s, never the password."""
    wanted = {a.upper() for a in algorithms}
    if ':' in name or ':' in realm:
        raise ConfigurationError('a user name or realm in the user file cannot contain ":"')
    fields = [name, realm] + [digest.ha1(name, realm, password, a) if a in wanted else ''
                              for a in ALGORITHMS]
    if aor is not None:
        _aor_key(aor)                                          # raises if it is no SIP URI
        fields.append(aor)
    while fields[-1] == '':
        fields.pop()
    return ':'.join(fields)


class UserFile:
    """The users of a user file (see the module's documentation), by (name, realm)."""

    def __init__(self, users: Iterable[User] = ()) -> None:
        self.users: dict[tuple[str, str], User] = {(u.name, u.realm): u for u in users}

    @classmethod
    def load(cls, path: str | Path) -> UserFile:
        try:
            text = Path(path).read_text(encoding='utf-8')
        except OSError as exc:
            raise ConfigurationError('cannot read the user file %s: %s' % (path, exc)) from None
        return cls.parse(text, str(path))

    @classmethod
    def parse(cls, text: str, source: str = '<users>') -> UserFile:
        users = []
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith('#'):
                continue
            users.append(cls._parse_line(line, '%s:%d' % (source, number)))
        return cls(users)

    @staticmethod
    def _parse_line(line: str, where: str) -> User:
        fields = line.split(':', 4)
        if len(fields) < 3:
            raise ConfigurationError('%s: expected USER:REALM:MD5-HA1[:SHA256-HA1[:AOR]], got %r'
                                     % (where, line))
        name, realm, hashes = fields[0], fields[1], fields[2:4]
        if not name:
            raise ConfigurationError('%s: the user name is empty' % where)
        ha1 = {}
        for algorithm, value in zip(ALGORITHMS, hashes, strict=False):
            value = value.strip().lower()
            if not value:
                continue
            if len(value) != _HA1_LENGTH[algorithm] or any(c not in '0123456789abcdef'
                                                           for c in value):
                raise ConfigurationError('%s: the %s HA1 must be %d hex digits (an HA1, not a '
                                         'password: see aiosip-ws passwd)'
                                         % (where, algorithm, _HA1_LENGTH[algorithm]))
            ha1[algorithm] = value
        if not ha1:
            raise ConfigurationError('%s: user %r has no HA1' % (where, name))
        aor = fields[4].strip() if len(fields) == 5 else None
        if aor:
            try:
                _aor_key(aor)
            except SIPParseError as exc:
                raise ConfigurationError('%s: the AOR %r is no SIP URI: %s' % (where, aor, exc)
                                         ) from None
        return User(name, realm, ha1, aor or None)

    def get(self, name: str, realm: str, *, needed: bool = True) -> User | None:
        """The user, or None (``needed``: whether the caller cannot do without; a file
        always knows)."""
        return self.users.get((name, realm))

    def __len__(self) -> int:
        return len(self.users)


@dataclass(frozen=True)
class Identity:
    """Who sent a request: an authenticated user and the AORs they own, or a trusted
    peer (``user`` None), who may use any."""

    user: str | None
    aors: frozenset[str] = frozenset()
    #: when the credential behind it expires (a token's ``exp``, Unix time), or None
    expires_at: float | None = None

    def owns(self, aor: str) -> bool:
        return self.user is None or aor in self.aors


@dataclass
class AuthOutcome:
    """``identity`` when the request may go on; otherwise the answer to send."""

    identity: Identity | None = None
    status: int = 0
    reason: str | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    #: credentials were given and refused (not a first challenge, not a stale nonce)
    failed: bool = False
    #: accepted credentials: their nonce and nonce count (a cluster checks the count
    #: against the other nodes too, :meth:`DigestAuthenticator.replayed`)
    nonce: str | None = None
    nc: int = 0


class FailureCount(Protocol):
    """Where a connection's failed Digest attempts are counted (serve's FlowState)."""

    auth_failures: int


def _set_failures(state: FailureCount | dict[str, object], count: int) -> None:
    if isinstance(state, dict):
        if count:
            state['auth_failures'] = count
        else:
            state.pop('auth_failures', None)
    else:
        state.auth_failures = count


class DigestAuthenticator:
    """Checks requests against a :class:`UserFile` (see the module's documentation)."""

    def __init__(self, users: UserFile, realm: str, *, domains: Iterable[str] = (),
                 algorithms: Iterable[str] = DEFAULT_CHALLENGES, nonce_secret: bytes | None = None,
                 nonce_lifetime: float = 300.0, trusted: Iterable[str] = (),
                 max_nonces: int = 100_000, max_failures: int = 3,
                 clock: Callable[[], float] = time.time) -> None:
        #: where users come from: a :class:`UserFile`, or an app's credentials
        #: (:class:`~aiosip_ws.serve.credentials.CredentialStore`)
        self.users: Any = users
        self.realm = realm
        self.domains = frozenset(d.lower() for d in (list(domains) or [realm]))
        self.algorithms = tuple(a.upper() for a in algorithms)
        for algorithm in self.algorithms:
            if algorithm not in ALGORITHMS:
                raise ConfigurationError('unknown digest algorithm %r: choose from %s'
                                         % (algorithm, ', '.join(ALGORITHMS)))
        if not self.algorithms:
            raise ConfigurationError('at least one digest algorithm is needed')
        self.nonce_secret = nonce_secret or secrets.token_bytes(32)
        self.nonce_lifetime = float(nonce_lifetime)
        self.trusted = parse_networks(trusted, '--trusted-peer')
        self.max_nonces = max_nonces
        #: failed answers on one connection before 403 instead of a new challenge
        self.max_failures = max_failures
        self.clock = clock
        #: nonce -> highest nc accepted, oldest first use first
        self._nc: collections.OrderedDict[str, int] = collections.OrderedDict()
        #: nonces issued up to this time (ms) may have been forgotten: treated as stale
        self._forgotten_before = 0
        without = [u.name for u in getattr(users, 'users', {}).values()
                   if not set(u.ha1) & set(self.algorithms)]
        if without:
            logger.warning('%d user(s) have no HA1 for %s and cannot log in: %s', len(without),
                           '/'.join(self.algorithms), ', '.join(sorted(without)[:10]))

    # -- the policy -------------------------------------------------------------------
    def is_trusted(self, address: str) -> bool:
        return address_in(address, self.trusted)

    def is_local(self, uri: SipURI) -> bool:
        return uri.host.lower() in self.domains

    def needs_challenge(self, request: SIPMessage, address: str) -> bool:
        """REGISTER, and out-of-dialog requests from a local domain; never ACK or CANCEL,
        never from a trusted peer."""
        if request.method in ('ACK', 'CANCEL') or self.is_trusted(address):
            return False
        if request.method == 'REGISTER':
            return True
        try:
            return self.is_local(request.from_addr().uri)
        except SIPParseError:
            return True

    def aors_of(self, user: User) -> frozenset[str]:
        if user.aors:
            return user.aors
        if user.aor is not None:
            return frozenset({_aor_key(user.aor)})
        return frozenset('sip:%s@%s' % (user.name, domain) for domain in self.domains)

    # -- checking a request --------------------------------------------------------------
    def check(self, request: SIPMessage, state: FailureCount | dict[str, object]) -> AuthOutcome:
        """The credentials of ``request`` (which :meth:`needs_challenge`); ``state`` is the
        connection's, where failed attempts are counted (its ``auth_failures``; a dict's
        ``'auth_failures'`` key)."""
        proxy = request.method != 'REGISTER'
        header = 'Proxy-Authorization' if proxy else 'Authorization'
        credentials = None
        for value in request.get_all(header):
            try:
                params = digest.parse_credentials(value)
            except DigestError as exc:
                return AuthOutcome(status=400, reason='Bad Request (%s: %s)' % (header, exc))
            if params is not None and params.get('realm') == self.realm:
                credentials = params
                break
        if credentials is None:
            return self._challenge(proxy, self._named_user(request))
        # what serve can check alone first: a made-up nonce never costs a user lookup
        algorithm = credentials.get('algorithm', 'MD5').upper()
        nonce = credentials.get('nonce', '')
        age = digest.nonce_age(self.nonce_secret, nonce, self.clock(), self.realm)
        if age is None or age < -5:
            return self._failed(state, proxy, None, 'a nonce serve did not make')
        if credentials.get('uri') != request.uri:
            return AuthOutcome(status=400, reason='Bad Request (the digest uri is not the '
                               'Request-URI)')
        user = self.users.get(credentials.get('username', ''), self.realm)
        if age > self.nonce_lifetime or self._forgotten(nonce):
            return self._challenge(proxy, user, stale=True)
        if credentials.get('qop', '').lower() != 'auth' or not credentials.get('cnonce'):
            return self._failed(state, proxy, user, 'no qop=auth answer')
        try:
            nc = int(credentials.get('nc', ''), 16)
        except ValueError:
            return self._failed(state, proxy, user, 'a malformed nc')
        if user is None or algorithm not in user.ha1 or algorithm not in self.algorithms:
            return self._failed(state, proxy, user, 'unknown user or algorithm')
        try:
            expected = digest.expected_response(credentials, method=request.method or '',
                                                ha1_value=user.ha1[algorithm])
        except DigestError as exc:
            return self._failed(state, proxy, user, str(exc))
        if not secrets.compare_digest(expected, credentials.get('response', '').lower()):
            return self._failed(state, proxy, user, 'wrong password')
        if nc <= self._nc.get(nonce, 0):
            return self._failed(state, proxy, user, 'a replayed nc (%d)' % nc)
        self._remember(nonce, nc)
        _set_failures(state, 0)
        return AuthOutcome(Identity(user.name, self.aors_of(user)), nonce=nonce, nc=nc)

    def _named_user(self, request: SIPMessage) -> User | None:
        """The user a request without credentials names (To of a REGISTER, From of other
        requests, in a local domain): a first challenge offers only the algorithms of that
        user's HA1s, so a user with an MD5 HA1 alone (an htdigest line) is offered MD5 only."""
        try:
            uri = (request.to_addr() if request.method == 'REGISTER' else request.from_addr()).uri
        except SIPParseError:
            return None
        if not uri.user or not self.is_local(uri):
            return None
        user: User | None = self.users.get(uri.user, self.realm, needed=False)
        return user

    def replayed(self, request: SIPMessage, state: FailureCount | dict[str, object],
                 user: str) -> AuthOutcome:
        """Credentials accepted here whose nonce count another node had already seen (the
        cluster's shared store): refused as a replay, like one seen here."""
        return self._failed(state, request.method != 'REGISTER',
                            self.users.get(user, self.realm, needed=False),
                            'a replayed nc (seen by another node)')

    def _challenge(self, proxy: bool, user: User | None, *, stale: bool = False
                   ) -> AuthOutcome:
        nonce = digest.make_nonce(self.nonce_secret, self.clock(), self.realm)
        offered = [a for a in self.algorithms if user is None or a in user.ha1] or \
            list(self.algorithms)
        name = 'Proxy-Authenticate' if proxy else 'WWW-Authenticate'
        headers = [(name, digest.challenge_value(self.realm, nonce, a, stale=stale))
                   for a in offered]
        if proxy:
            return AuthOutcome(status=407, headers=headers)
        return AuthOutcome(status=401, headers=headers)

    def _failed(self, state: FailureCount | dict[str, object], proxy: bool, user: User | None,
                why: str) -> AuthOutcome:
        if isinstance(state, dict):
            failures = int(state.get('auth_failures', 0)) + 1     # type: ignore[call-overload]
        else:
            failures = state.auth_failures + 1
        _set_failures(state, failures)
        logger.info('authentication failed (%s)%s', why,
                    '' if user is None else ' for %s' % user.name)
        if failures >= self.max_failures:
            return AuthOutcome(status=403, reason='Forbidden (authentication failed %d times '
                               'on this connection)' % failures, failed=True)
        outcome = self._challenge(proxy, user)
        outcome.failed = True
        return outcome

    # -- the nc store --------------------------------------------------------------------
    def _forgotten(self, nonce: str) -> bool:
        """A nonce the store may have dropped while it was still valid: stale, not a
        fresh start for replays."""
        if nonce in self._nc:
            return False
        return (digest.nonce_issued(nonce) or 0) <= self._forgotten_before

    def _remember(self, nonce: str, nc: int) -> None:
        store = self._nc
        store[nonce] = nc
        store.move_to_end(nonce)
        horizon = (self.clock() - self.nonce_lifetime) * 1000
        while store:
            oldest = next(iter(store))
            stamp = digest.nonce_issued(oldest) or 0
            if stamp >= horizon and len(store) <= self.max_nonces:
                break
            del store[oldest]
            if stamp >= horizon:          # dropped for room while still valid
                self._forgotten_before = max(self._forgotten_before, stamp)


class TokenAuthenticator:
    """Handshake authentication with a JWT (HS256, PyJWT: ``pip install aiosip-ws[jwt]``),
    for ``ServerOptions.authenticate`` (``serve --jwt-secret``).

    Browsers cannot set headers on a WebSocket, so the token comes in the URL query
    (``wss://host/?token=...``) or in a ``token`` cookie.  It must be signed with the
    secret, carry ``exp`` and ``sub`` (the AOR the connection may use: a SIP URI, or a
    user name taken in the first local domain), and pass ``nbf``, and ``aud``/``iss``
    when configured, within ``leeway`` seconds.  Missing or expired: HTTP 401; otherwise
    invalid: 403.  The token itself never reaches a log line.
    """

    def __init__(self, secret: str, *, leeway: float = 0.0, audience: str | None = None,
                 issuer: str | None = None, domain: str | None = None) -> None:
        try:
            import jwt
        except ImportError:
            raise ConfigurationError('--jwt-secret needs PyJWT: pip install "aiosip-ws[jwt]"'
                                     ) from None
        if not secret:
            raise ConfigurationError('the JWT secret is empty')
        self._jwt = jwt
        self.secret, self.leeway = secret, leeway
        self.audience, self.issuer, self.domain = audience, issuer, domain
        #: an app's ``token_identity``: who verified claims stand for (None: refused),
        #: in place of the ``sub`` rule
        self.claims_hook: Callable[[dict[str, Any]], Any] | None = None

    def __call__(self, request: Any) -> Identity:
        token = request.query.get('token') or request.cookies.get('token')
        if not token:
            raise HandshakeRefused(401, 'a token is required (?token= or a token cookie)')
        jwt = self._jwt
        try:
            claims = jwt.decode(token, self.secret, algorithms=['HS256'], leeway=self.leeway,
                                audience=self.audience, issuer=self.issuer,
                                options={'require': ['exp', 'sub']})
        except jwt.ExpiredSignatureError:
            raise HandshakeRefused(401, 'the token has expired') from None
        except jwt.InvalidTokenError as exc:
            raise HandshakeRefused(403, 'invalid token (%s)' % type(exc).__name__) from None
        if self.claims_hook is not None:
            return self._from_hook(claims)
        subject = str(claims['sub'])
        if ':' not in subject and self.domain:
            subject = 'sip:%s@%s' % (subject, self.domain)
        try:
            aor = _aor_key(subject)
        except SIPParseError:
            raise HandshakeRefused(403, 'the token\'s sub is no SIP AOR') from None
        return Identity(aor, frozenset({aor}), float(claims['exp']))

    def _from_hook(self, claims: dict[str, Any]) -> Identity:
        assert self.claims_hook is not None
        user = self.claims_hook(claims)
        if user is None:
            raise HandshakeRefused(403, 'the token stands for no user here')
        aors = set()
        for aor in user.aors:
            text = str(aor)
            if ':' not in text and self.domain:
                text = 'sip:%s@%s' % (text, self.domain)
            try:
                aors.add(_aor_key(text))
            except SIPParseError:
                raise HandshakeRefused(403, 'the token stands for an AOR that is no SIP '
                                       'URI') from None
        if not aors:
            raise HandshakeRefused(403, 'the token stands for no AOR')
        return Identity(str(user.user), frozenset(aors), float(claims['exp']))
