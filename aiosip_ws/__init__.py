"""aiosip-ws: SIP over WebSocket (RFC 7118) for aiosip.

Import this package before anything runs a bare ``import aiosip``: it makes
aiosip 0.2.0 importable on Python 3.10-3.13 (see :mod:`aiosip_ws.compat`) and
re-exports the shimmed module as ``aiosip_ws.aiosip``.
"""
from __future__ import annotations

__version__ = '0.1.0'

from .compat import import_aiosip

aiosip = import_aiosip()

from .adapter import Application, Dialog, to_aiosip, to_wire  # noqa: E402
from .codec import SIPMessage, Via  # noqa: E402
from .errors import (AiosipWSError, ConfigurationError, ConnectionLost, DiscoveryError,  # noqa: E402
                     HandshakeError, SIPParseError, TransactionTimeout, TransportError,
                     UnknownTransportError)
from .options import ClientOptions, ServerOptions  # noqa: E402
from .registration import Registration, RegistrationError  # noqa: E402
from .registry import (WS, WSS, get_transport, register_transport,  # noqa: E402
                       transport_names, unregister_transport)
from .sipuri import NameAddr, SipURI  # noqa: E402
from .transport import WSConnection, WSListener  # noqa: E402

__all__ = [
    '__version__', 'aiosip', 'Application', 'Dialog', 'to_aiosip', 'to_wire', 'SIPMessage', 'Via',
    'AiosipWSError', 'ConfigurationError', 'ConnectionLost', 'DiscoveryError', 'HandshakeError',
    'SIPParseError', 'TransactionTimeout', 'TransportError', 'UnknownTransportError',
    'ClientOptions', 'ServerOptions', 'Registration', 'RegistrationError', 'WS', 'WSS', 'get_transport', 'register_transport',
    'transport_names', 'unregister_transport', 'NameAddr', 'SipURI', 'WSConnection', 'WSListener',
]
