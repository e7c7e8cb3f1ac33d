"""The transport registry and transport selection (config name, URI parameter, URL scheme)."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import aiosip_ws
from aiosip_ws import WS, WSS, ConfigurationError, UnknownTransportError
from aiosip_ws.adapter.registry import (
    get_transport,
    register_transport,
    transport_names,
    unregister_transport,
)
from aiosip_ws.adapter.selection import select


def test_builtin_transports():
    assert {'udp', 'ws', 'wss'} <= set(transport_names())
    assert get_transport('WS') is WS and get_transport('wss') is WSS
    assert get_transport('udp') is aiosip_ws.aiosip.UDP


def test_register_refuses_to_overwrite_silently():
    class Other:
        pass

    with pytest.raises(ConfigurationError, match='already registered'):
        register_transport('ws', Other)
    register_transport('x-test', Other)
    try:
        assert get_transport('X-Test') is Other
    finally:
        unregister_transport('x-test')
    with pytest.raises(UnknownTransportError, match="unknown transport 'x-test'"):
        get_transport('x-test')


@pytest.mark.parametrize('kwargs, name, target', [
    (dict(transport='ws', remote_addr='ws://h:1/p'), 'ws', 'ws://h:1/p'),
    (dict(remote_addr='wss://h/ws'), 'wss', 'wss://h/ws'),
    (dict(remote_addr='sip:example.com;transport=ws'), 'ws', 'sip:example.com;transport=ws'),
    (dict(remote_addr='sips:example.com;transport=ws'), 'wss', 'sips:example.com;transport=ws'),
    (dict(remote_addr='sip:example.com;transport=wss'), 'wss', 'sip:example.com;transport=wss'),
    (dict(remote_addr='sip:example.com;transport=WS'), 'ws', 'sip:example.com;transport=WS'),
    (dict(remote_addr='sips:alice@example.com'), 'wss', 'sips:alice@example.com'),
    (dict(remote_addr='sip:example.com'), 'ws', 'sip:example.com'),
    (dict(to_uri='<sip:bob@example.com;transport=ws>'), 'ws', 'sip:bob@example.com;transport=ws'),
    (dict(transport='ws', remote_addr=('10.0.0.1', 8080)), 'ws', 'ws://10.0.0.1:8080/'),
    (dict(transport='udp', remote_addr=('127.0.0.1', 5060)), 'udp', None),
    (dict(to_uri='sip:bob@example.com'), 'udp', None),
])
def test_selection(kwargs, name, target):
    """RFC 7118 §5.2 (ws, and wss accepted as an alias), §10 (case-insensitive), URL schemes."""
    selection = select(**kwargs)
    assert (selection.name, selection.target) == (name, target)


@pytest.mark.parametrize('kwargs, message', [
    (dict(transport='wss', remote_addr='ws://h/'), 'conflicts'),
    (dict(transport='ws', remote_addr='sips:example.com;transport=ws'), 'RFC 7118 9.2'),
    (dict(transport='nope'), 'unknown transport'),
    (dict(transport='ws'), 'needs a server'),
    (dict(remote_addr='sip:example.com;transport=udp'), "asks for transport 'udp'"),
])
def test_selection_errors_say_what_to_fix(kwargs, message):
    """RFC 7118 §9.2 (RFC7118-9.2-a): a sips: target never goes over plain ws."""
    with pytest.raises(ConfigurationError, match=message):
        select(**kwargs)


def test_entry_point_group_registers_third_party_transports(tmp_path):
    """A package can add a transport through the `aiosip_ws.transports` entry point group."""
    dist = tmp_path / 'demo_transport-1.0.dist-info'
    dist.mkdir()
    (dist / 'METADATA').write_text('Metadata-Version: 2.1\nName: demo-transport\nVersion: 1.0\n')
    (dist / 'entry_points.txt').write_text('[aiosip_ws.transports]\ndemo = demo_transport:Demo\n')
    (tmp_path / 'demo_transport.py').write_text('class Demo:\n    name = "demo"\n')
    code = textwrap.dedent('''
        import sys
        sys.path.insert(0, %r)
        import aiosip_ws
        from aiosip_ws.adapter.registry import get_transport, transport_names
        assert 'demo' in transport_names(), transport_names()
        assert get_transport('demo').__name__ == 'Demo'
        assert get_transport('ws') is aiosip_ws.WS
        print('ok')
    ''' % str(tmp_path))
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == 'ok', result.stderr


def test_a_bad_remote_addr_raises_invalid_uri_error():
    from aiosip_ws import ConfigurationError, InvalidURIError, SIPParseError
    with pytest.raises(InvalidURIError) as caught:
        select(transport='ws', remote_addr='sip:alice@[not-closed')
    assert isinstance(caught.value, ConfigurationError) and isinstance(caught.value, SIPParseError)
    assert 'remote_addr/To' in str(caught.value)
