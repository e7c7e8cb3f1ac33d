"""Digest responses computed with hashlib alone (RFC 7616 3.4.1, qop=auth, MD5 or SHA-256).

Tests that check aiosip_ws's digest code compare against :func:`independent_response`,
never against aiosip_ws itself; raw-socket tests answer real registrars' challenges with
:func:`digest_authorization`.
"""
from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Mapping

_HASHES = {'MD5': 'md5', 'SHA-256': 'sha256'}


def independent_response(fields: Mapping[str, str], method: str, password: str) -> str:
    """The ``response`` for the Authorization ``fields`` (``username``, ``realm``, ``nonce``,
    ``uri``, ``nc``, ``cnonce``, ``qop``, and ``algorithm``, MD5 when absent)."""
    name = _HASHES[fields.get('algorithm', 'MD5')]

    def h(text: str) -> str:
        return hashlib.new(name, text.encode()).hexdigest()

    ha1 = h('%s:%s:%s' % (fields['username'], fields['realm'], password))
    ha2 = h('%s:%s' % (method, fields['uri']))
    return h(':'.join([ha1, fields['nonce'], fields['nc'], fields['cnonce'], fields['qop'], ha2]))


def digest_authorization(challenge: str, *, method: str, uri: str, username: str, password: str,
                         header: str = 'Authorization', cnonce: str | None = None,
                         nc: int = 1) -> str:
    """An ``Authorization:`` (or ``Proxy-Authorization:``) header line answering the Digest
    ``challenge`` (a WWW-Authenticate value that offers qop=auth), as ``"Name: value"``."""
    params = dict(re.findall(r'(\w+)="?([^",]*)"?', challenge.split(None, 1)[1]))
    if 'auth' not in [q.strip() for q in params.get('qop', '').split(',')]:
        raise ValueError('the challenge offers no qop=auth: %r' % challenge)
    fields = {'username': username, 'realm': params['realm'], 'nonce': params['nonce'],
              'uri': uri, 'algorithm': params.get('algorithm', 'MD5'), 'qop': 'auth',
              'cnonce': cnonce or secrets.token_hex(8), 'nc': '%08x' % nc}
    fields['response'] = independent_response(fields, method, password)
    value = ('username="%(username)s", realm="%(realm)s", nonce="%(nonce)s", uri="%(uri)s", '
             'algorithm=%(algorithm)s, response="%(response)s", qop=auth, '
             'cnonce="%(cnonce)s", nc=%(nc)s' % fields)
    if 'opaque' in params:
        value += ', opaque="%s"' % params['opaque']
    return '%s: Digest %s' % (header, value)
