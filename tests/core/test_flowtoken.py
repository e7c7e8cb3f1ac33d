"""RFC 5626 flow tokens (aiosip_ws.core.flowtoken)."""
from __future__ import annotations

import pytest

from aiosip_ws.core.flowtoken import FlowTokenError, FlowTokens
from aiosip_ws.core.sipuri import SipURI
from aiosip_ws.errors import ConfigurationError


def test_a_token_names_its_flow_and_is_a_sip_user_part():
    tokens = FlowTokens(b'secret')
    token = tokens.issue(42)
    assert tokens.check(token) == 42 and FlowTokens.looks_like(token)
    assert SipURI.parse('sip:%s@edge.example.com;lr' % token).user == token
    assert tokens.check(token.upper()) == 42                 # case does not matter
    assert tokens.issue(43) != token


def test_another_start_with_the_same_secret_is_valid_but_not_ours_and_forgeries_fail():
    first = FlowTokens(b'secret')
    token = first.issue(7)
    assert FlowTokens(b'secret').check(token) is None          # after a restart: 430
    with pytest.raises(FlowTokenError) as refused:
        FlowTokens(b'other secret').check(token)
    assert refused.value.status == 403
    flipped = token[:10] + ('a' if token[10] != 'a' else 'b') + token[11:]
    for bad in (flipped, token[:-8], 'not-base32!', ''):
        with pytest.raises(FlowTokenError):
            first.check(bad)
    assert not FlowTokens.looks_like('alice') and not FlowTokens.looks_like(token + 'x')
    with pytest.raises(ConfigurationError):
        FlowTokens(b'x', start=b'short')
