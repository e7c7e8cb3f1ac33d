"""HTTP Digest authentication for SIP (RFC 3261 22.4, RFC 2617, RFC 7616, RFC 8760), pure.

aiosip 0.2.0 splits challenges on ``', '`` and ``'='`` (a nonce with base64
padding or a quoted comma breaks it) and ignores ``qop``, so registrars that
ask for ``qop=auth`` (most of them) refuse its answers (defect D16).  This
module parses challenges properly and computes answers with ``qop=auth`` (or
``auth-int``), ``nc`` and ``cnonce``, for MD5, SHA-256 and SHA-512-256 and
their ``-sess`` variants.

The server side is here too, as pure functions: HA1 values (what a user file stores
instead of passwords), challenges, stateless nonces (a timestamp and an HMAC of it, so
every node holding the secret can check them), parsed credentials and the expected
``response`` of an answer.

>>> challenge = parse_challenges('Digest realm="example.com", nonce="YWJj==", qop="auth,auth-int"')[0]
>>> challenge.realm, challenge.nonce, challenge.qops
('example.com', 'YWJj==', ('auth', 'auth-int'))
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..errors import DigestError
from .codec import SIPMessage

__all__ = ['Challenge', 'DigestError', 'parse_challenges', 'choose_challenge', 'authorization',
           'authorized_retry',
           'ALGORITHMS', 'ha1', 'challenge_value', 'make_nonce', 'nonce_age', 'nonce_issued',
           'parse_credentials',
           'expected_response']


def _hash_for(name: str):  # type: ignore[no-untyped-def]
    def digest(data: str) -> str:
        return hashlib.new(name, data.encode('utf-8')).hexdigest()
    return digest


#: Supported algorithms, strongest first (RFC 8760 3: prefer the first supported).
ALGORITHMS = {
    'SHA-512-256': 'sha512_256',
    'SHA-256': 'sha256',
    'MD5': 'md5',
}
_PREFERENCE = ['SHA-512-256', 'SHA-256', 'MD5']


def _available(algorithm: str) -> bool:
    base = algorithm.upper().removesuffix('-SESS')
    name = ALGORITHMS.get(base)
    if name is None:
        return False
    try:
        hashlib.new(name)
    except ValueError:                      # e.g. sha512_256 missing from this OpenSSL
        return False
    return True


@dataclass(frozen=True)
class Challenge:
    """One ``WWW-Authenticate``/``Proxy-Authenticate`` Digest challenge."""

    params: dict[str, str] = field(default_factory=dict)
    proxy: bool = False

    @property
    def realm(self) -> str:
        return self.params.get('realm', '')

    @property
    def nonce(self) -> str:
        return self.params.get('nonce', '')

    @property
    def opaque(self) -> str | None:
        return self.params.get('opaque')

    @property
    def algorithm(self) -> str:
        return self.params.get('algorithm', 'MD5')

    @property
    def stale(self) -> bool:
        return self.params.get('stale', '').lower() == 'true'

    @property
    def qops(self) -> tuple[str, ...]:
        value = self.params.get('qop')
        if value is None:
            return ()
        return tuple(q.strip().lower() for q in value.split(',') if q.strip())


def _parse_params(text: str, start: int) -> tuple[dict[str, str], int]:
    """auth-params from ``text[start:]``: ``name=token`` or ``name="quoted, with \\" escapes"``.

    Stops before the next ``Scheme`` of a comma-joined list of challenges.
    """
    params: dict[str, str] = {}
    i, n = start, len(text)
    while i < n:
        while i < n and text[i] in ' \t,':
            i += 1
        j = i
        while j < n and text[j] not in '=, \t':
            j += 1
        name = text[i:j]
        k = j
        while k < n and text[k] in ' \t':
            k += 1
        if not name or k >= n or text[k] != '=':
            return params, i                # a new scheme (or garbage): stop here
        k += 1
        while k < n and text[k] in ' \t':
            k += 1
        if k < n and text[k] == '"':
            k += 1
            value = []
            while k < n and text[k] != '"':
                if text[k] == '\\' and k + 1 < n:
                    k += 1
                value.append(text[k])
                k += 1
            if k >= n:
                raise DigestError('unterminated quoted string in %r' % text)
            k += 1
            params[name.lower()] = ''.join(value)
        else:
            m = k
            while m < n and text[m] != ',':
                m += 1
            params[name.lower()] = text[k:m].strip()     # tokens, or a bare nonce with '=='
            k = m
        i = k
    return params, i


def parse_challenges(value: str, *, proxy: bool = False) -> list[Challenge]:
    """Every Digest challenge in one header value (other schemes are skipped)."""
    out: list[Challenge] = []
    i, n = 0, len(value)
    while i < n:
        while i < n and value[i] in ' \t,':
            i += 1
        j = i
        while j < n and value[j] not in ' \t':
            j += 1
        scheme = value[i:j]
        if not scheme:
            break
        params, i = _parse_params(value, j)
        if scheme.lower() == 'digest':
            out.append(Challenge(params, proxy))
    return out


def choose_challenge(values: Iterable[str], *, proxy: bool = False) -> Challenge:
    """The challenge to answer: the strongest supported algorithm (RFC 8760 3)."""
    challenges = [c for v in values for c in parse_challenges(v, proxy=proxy)]
    if not challenges:
        raise DigestError('no Digest challenge in the %s header'
                          % ('Proxy-Authenticate' if proxy else 'WWW-Authenticate'))
    usable = [c for c in challenges if _available(c.algorithm)]
    if not usable:
        raise DigestError('no supported Digest algorithm among %s (supported: %s)'
                          % (', '.join(sorted({c.algorithm for c in challenges})),
                             ', '.join(_PREFERENCE)))
    def rank(challenge: Challenge) -> int:
        return _PREFERENCE.index(challenge.algorithm.upper().removesuffix('-SESS'))
    return sorted(usable, key=rank)[0]


def _quote(value: str) -> str:
    return '"%s"' % value.replace('\\', '\\\\').replace('"', '\\"')


def authorization(challenge: Challenge, *, method: str, uri: str, username: str, password: str,
                  nc: int = 1, cnonce: str | None = None, body: bytes = b'') -> str:
    """The ``Authorization`` (or ``Proxy-Authorization``) value answering ``challenge``."""
    algorithm = challenge.algorithm
    if not _available(algorithm):
        raise DigestError('unsupported Digest algorithm %r' % algorithm)
    digest = _hash_for(ALGORITHMS[algorithm.upper().removesuffix('-SESS')])
    qop = None
    if challenge.qops:
        if 'auth' in challenge.qops:
            qop = 'auth'
        elif 'auth-int' in challenge.qops:
            qop = 'auth-int'
        else:
            raise DigestError('unsupported qop %r' % challenge.params.get('qop'))
    cnonce = cnonce or secrets.token_hex(8)
    ha1 = digest('%s:%s:%s' % (username, challenge.realm, password))
    if algorithm.upper().endswith('-SESS'):
        ha1 = digest('%s:%s:%s' % (ha1, challenge.nonce, cnonce))
    if qop == 'auth-int':
        body_hash = hashlib.new(ALGORITHMS[algorithm.upper().removesuffix('-SESS')], body).hexdigest()
        ha2 = digest('%s:%s:%s' % (method, uri, body_hash))
    else:
        ha2 = digest('%s:%s' % (method, uri))
    nc_text = '%08x' % nc
    if qop:
        response = digest('%s:%s:%s:%s:%s:%s' % (ha1, challenge.nonce, nc_text, cnonce, qop, ha2))
    else:
        response = digest('%s:%s:%s' % (ha1, challenge.nonce, ha2))
    parts = ['username=%s' % _quote(username), 'realm=%s' % _quote(challenge.realm),
             'nonce=%s' % _quote(challenge.nonce), 'uri=%s' % _quote(uri),
             'response=%s' % _quote(response), 'algorithm=%s' % algorithm]
    if qop:
        parts += ['cnonce=%s' % _quote(cnonce), 'qop=%s' % qop, 'nc=%s' % nc_text]
    if challenge.opaque is not None:
        parts.append('opaque=%s' % _quote(challenge.opaque))
    return 'Digest ' + ', '.join(parts)



def authorized_retry(request: SIPMessage, response: SIPMessage, *, username: str,
                     password: str, nonce_counts: dict[str, int] | None = None) -> SIPMessage:
    """``request`` again, answering its 401 or 407 ``response`` (RFC 3261 §22.2): the
    credentials for the challenge chosen, the CSeq one higher, its Via and any earlier
    credentials gone (the sender adds a new Via: a new transaction).  ``nonce_counts``
    (nonce -> last nc) counts the uses of a nonce across retries; without it nc is 1.
    Raises :class:`DigestError` when the challenge cannot be answered."""
    proxy = response.status == 407
    challenge = choose_challenge(response.get_all(
        'Proxy-Authenticate' if proxy else 'WWW-Authenticate'), proxy=proxy)
    nc = 1
    if nonce_counts is not None:
        nc = nonce_counts[challenge.nonce] = nonce_counts.get(challenge.nonce, 0) + 1
    method = request.method or ''
    credentials = authorization(challenge, method=method, uri=request.uri or '',
                                username=username, password=password, nc=nc, body=request.body)
    retry = SIPMessage(method=method, uri=request.uri, body=request.body, headers=[
        (k, v) for k, v in request.headers
        if k.lower() not in ('via', 'authorization', 'proxy-authorization')])
    retry.set('CSeq', '%d %s' % (request.cseq[0] + 1, method))
    retry.headers.append(('Proxy-Authorization' if proxy else 'Authorization', credentials))
    return retry


# -- the server side ----------------------------------------------------------------------
def ha1(username: str, realm: str, password: str, algorithm: str = 'MD5') -> str:
    """``H(username:realm:password)`` (RFC 7616 §3.4.2), what a user file keeps."""
    name = ALGORITHMS.get(algorithm.upper())
    if name is None or not _available(algorithm):
        raise DigestError('unsupported Digest algorithm %r (supported: %s)'
                          % (algorithm, ', '.join(_PREFERENCE)))
    return str(_hash_for(name)('%s:%s:%s' % (username, realm, password)))


def challenge_value(realm: str, nonce: str, algorithm: str, *, stale: bool = False,
                    opaque: str | None = None) -> str:
    """One ``WWW-Authenticate``/``Proxy-Authenticate`` value offering ``qop=auth``."""
    parts = ['realm=%s' % _quote(realm), 'nonce=%s' % _quote(nonce), 'algorithm=%s' % algorithm,
             'qop="auth"']
    if opaque is not None:
        parts.append('opaque=%s' % _quote(opaque))
    if stale:
        parts.append('stale=true')
    return 'Digest ' + ', '.join(parts)


def _nonce_mac(secret: bytes, stamp: str, salt: str, realm: str) -> str:
    data = ('%s:%s:%s' % (stamp, salt, realm)).encode('utf-8')
    return base64.urlsafe_b64encode(hmac.new(secret, data, hashlib.sha256).digest()[:18]
                                    ).decode('ascii')


def make_nonce(secret: bytes, now: float, realm: str) -> str:
    """A nonce anyone holding ``secret`` can check without state: the issue time (hex
    milliseconds), a random salt (no two challenges share a nonce, so neither do their
    ``nc`` counts) and an HMAC-SHA-256 of them and the realm."""
    stamp = '%x' % int(now * 1000)
    salt = secrets.token_hex(6)
    return '%s.%s.%s' % (stamp, salt, _nonce_mac(secret, stamp, salt, realm))


def nonce_issued(nonce: str) -> int | None:
    """The issue time of a nonce in the form :func:`make_nonce` makes (milliseconds), or
    None (not checked: see :func:`nonce_age`)."""
    stamp = nonce.split('.', 1)[0]
    if not stamp or len(stamp) > 16 or any(c not in '0123456789abcdef' for c in stamp):
        return None
    return int(stamp, 16)


def nonce_age(secret: bytes, nonce: str, now: float, realm: str) -> float | None:
    """Seconds since ``nonce`` was made with ``secret`` for ``realm``; None if it was not
    (a forged, altered or foreign nonce)."""
    parts = nonce.split('.')
    issued = nonce_issued(nonce)
    if len(parts) != 3 or issued is None:
        return None
    if not hmac.compare_digest(parts[2], _nonce_mac(secret, parts[0], parts[1], realm)):
        return None
    return now - issued / 1000.0


def parse_credentials(value: str) -> dict[str, str] | None:
    """The parameters of a Digest ``Authorization``/``Proxy-Authorization`` value (names
    lower-cased); None when it is another scheme.  Raises DigestError when malformed."""
    text = value.strip()
    scheme, _, _ = text.partition(' ')
    if scheme.lower() != 'digest':
        return None
    params, _ = _parse_params(text, len(scheme))
    return params


def expected_response(credentials: dict[str, str], *, method: str, ha1_value: str) -> str:
    """The ``response`` a client knowing the password sends with these ``credentials``
    (``qop=auth`` or none; not ``-sess``, which serve does not offer)."""
    algorithm = credentials.get('algorithm', 'MD5')
    name = ALGORITHMS.get(algorithm.upper())
    if name is None or not _available(algorithm):
        raise DigestError('unsupported Digest algorithm %r' % algorithm)
    digest = _hash_for(name)
    ha2 = digest('%s:%s' % (method, credentials.get('uri', '')))
    qop = credentials.get('qop')
    if qop:
        return str(digest(':'.join([ha1_value, credentials.get('nonce', ''),
                                    credentials.get('nc', ''), credentials.get('cnonce', ''),
                                    qop, ha2])))
    return str(digest('%s:%s:%s' % (ha1_value, credentials.get('nonce', ''), ha2)))
