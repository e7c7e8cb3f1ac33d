"""The transport registry aiosip 0.2.0 lacks: transport name -> implementation.

aiosip 0.2.0 knows one transport, the ``aiosip.UDP`` class passed as
``protocol=``.  aiosip-ws names transports: ``udp`` (aiosip's own), ``ws`` and
``wss``.  Selection by a config name (``transport='ws'``), by a URI's
``transport`` parameter and by a URL scheme all go through :func:`get_transport`.

Other packages add transports with :func:`register_transport` or, without
any import-order concerns, through the setuptools entry point group
``aiosip_ws.transports``::

    [options.entry_points]
    aiosip_ws.transports =
        tcp = my_package.tcp:TCPTransport

An entry point's object is what :func:`get_transport` returns for its name: a
protocol class that :class:`aiosip_ws.Application` hands to aiosip's own
``create_connection`` (aiosip 0.2.0 calls it with ``app=`` and ``loop=``).
"""
from __future__ import annotations

import logging
import threading
from importlib import metadata
from typing import Any

from ..errors import ConfigurationError, UnknownTransportError

__all__ = ['register_transport', 'unregister_transport', 'get_transport', 'transport_names',
           'transport_name_of', 'ENTRY_POINT_GROUP', 'WS', 'WSS']

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = 'aiosip_ws.transports'


class WS:
    """Marker class: SIP over plain WebSocket (``ws://``, Via ``WS``)."""

    name = 'ws'
    secure = False


class WSS(WS):
    """Marker class: SIP over WebSocket over TLS (``wss://``, Via ``WSS``)."""

    name = 'wss'
    secure = True


_registry: dict[str, Any] = {}
_lock = threading.Lock()
_entry_points_loaded = False


def _normalise(name: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ConfigurationError('a transport name must be a non-empty string, not %r' % (name,))
    return name.strip().lower()


def register_transport(name: str, implementation: Any, *, replace: bool = False) -> None:
    """Register ``implementation`` under ``name`` (case-insensitive).

    Raises :class:`ConfigurationError` if the name is taken by another
    implementation, unless ``replace=True``.
    """
    key = _normalise(name)
    with _lock:
        current = _registry.get(key)
        if current is not None and current is not implementation and not replace:
            raise ConfigurationError('transport %r is already registered (%r); pass replace=True '
                                     'to override it' % (key, current))
        _registry[key] = implementation


def unregister_transport(name: str) -> None:
    with _lock:
        _registry.pop(_normalise(name), None)


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    try:
        entry_points = metadata.entry_points(group=ENTRY_POINT_GROUP)
    except Exception:  # noqa: BLE001 - broken metadata of an unrelated package
        logger.exception('cannot read the %s entry points', ENTRY_POINT_GROUP)
        return
    for entry_point in entry_points:
        key = entry_point.name.lower()
        if key in _registry:
            continue
        try:
            _registry[key] = entry_point.load()
        except Exception:  # noqa: BLE001
            logger.exception('cannot load transport %r from entry point %s', key, entry_point.value)


def get_transport(name: str) -> Any:
    """The implementation registered under ``name``; raises :class:`UnknownTransportError`."""
    key = _normalise(name)
    with _lock:
        if key not in _registry:
            _load_entry_points()
        try:
            return _registry[key]
        except KeyError:
            raise UnknownTransportError('unknown transport %r; registered transports: %s'
                                        % (name, ', '.join(sorted(_registry)))) from None


def transport_names() -> list[str]:
    with _lock:
        _load_entry_points()
        return sorted(_registry)


def transport_name_of(implementation: Any) -> str | None:
    """The name ``implementation`` is registered under, if any."""
    with _lock:
        for key, value in _registry.items():
            if value is implementation:
                return key
    return None


def _register_builtins(aiosip_module: Any) -> None:
    register_transport('udp', aiosip_module.UDP)
    register_transport('ws', WS)
    register_transport('wss', WSS)
