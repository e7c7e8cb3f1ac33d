"""aiosip-ws: SIP over WebSocket (RFC 7118) for aiosip.

The package is built in five layers, each a subpackage that imports only from
the layers below it (``tests/test_layers.py`` checks this):

``core``       sans-I/O SIP: grammar, URIs, messages, parser, RFC 7118 framing, digest,
               transactions as data;
``transport``  asyncio: the WebSocket connection and listener, RFC 3263 discovery;
``adapter``    the only code that imports aiosip: the compat shim, conversion, Dialog,
               Application, the transport registry, Registration;
``serve``      ``aiosip-ws serve``: registrar and relay;
``tools``      the command line, the probe and the load generator.

Importing this package installs an import hook (:mod:`aiosip_ws.adapter.compat`)
so that a later bare ``import aiosip`` works on Python 3.10-3.13; aiosip itself
is imported only when an aiosip-facing name (``Application``, ``aiosip``, ...)
is first used, so ``import aiosip_ws.core`` never loads it.
"""
from __future__ import annotations

import importlib
from typing import Any

from ._version import __version__
from .adapter.compat import install_import_hook
from .errors import (
    AiosipWSError,
    ConfigurationError,
    ConnectionLost,
    DiscoveryError,
    HandshakeError,
    InvalidURIError,
    RegistrationError,
    SIPParseError,
    TransactionTimeout,
    TransportError,
    UnknownTransportError,
)
from .options import ClientOptions, ServerOptions

install_import_hook()

#: public name -> the module that defines it, imported on first use (PEP 562)
_LAZY = {
    'SIPMessage': 'aiosip_ws.core.codec',
    'Via': 'aiosip_ws.core.codec',
    'NameAddr': 'aiosip_ws.core.sipuri',
    'SipURI': 'aiosip_ws.core.sipuri',
    'WSConnection': 'aiosip_ws.transport.websocket',
    'WSListener': 'aiosip_ws.transport.listener',
    'aiosip': 'aiosip_ws.adapter.application',
    'Application': 'aiosip_ws.adapter.application',
    'Dialog': 'aiosip_ws.adapter.application',
    'to_aiosip': 'aiosip_ws.adapter.convert',
    'to_wire': 'aiosip_ws.adapter.convert',
    'Registration': 'aiosip_ws.adapter.registration',
    'WS': 'aiosip_ws.adapter.registry',
    'WSS': 'aiosip_ws.adapter.registry',
    'get_transport': 'aiosip_ws.adapter.registry',
    'register_transport': 'aiosip_ws.adapter.registry',
    'transport_names': 'aiosip_ws.adapter.registry',
    'unregister_transport': 'aiosip_ws.adapter.registry',
}

__all__ = [
    '__version__', 'AiosipWSError', 'ConfigurationError', 'ConnectionLost', 'DiscoveryError',
    'HandshakeError', 'InvalidURIError', 'RegistrationError', 'SIPParseError',
    'TransactionTimeout', 'TransportError', 'UnknownTransportError', 'ClientOptions',
    'ServerOptions', *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError('module %r has no attribute %r' % (__name__, name))
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
