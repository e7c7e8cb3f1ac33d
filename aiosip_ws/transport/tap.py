"""The bytes of every SIP message a transport receives or sends, for whoever asks.

A transport (WebSocket connection, UDP endpoint, TCP/TLS connection) takes its
:class:`WireTap` from its handler's ``wire_tap`` attribute when it is made (none:
:data:`NO_TAP`).  Each SIP message it receives (before it is parsed: a malformed one too)
or sends (each retransmission too) is given to the tap's ``sink``, when one is set, as
``sink(direction, connection, data)``: ``'in'`` or ``'out'``, the transport's connection
or flow (its ``transport_name``, ``local_addr`` and ``remote_addr`` say where it went),
and the message's bytes as they are on the wire, decrypted (a text frame's UTF-8).
Keep-alives are not SIP messages and are not given.  While ``sink`` is None a message
costs one attribute test.  serve sets it while a consumer wants
:class:`~aiosip_ws.serve.events.WireMessage` events (HEP, traces).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ['WireTap', 'WireSink', 'NO_TAP', 'tap_of']

#: ``sink(direction, connection, data)``: see the module
WireSink = Callable[[str, Any, bytes], None]


class WireTap:
    """Where a transport's SIP bytes go: ``sink``, or nowhere while it is None."""

    __slots__ = ('sink',)

    def __init__(self) -> None:
        self.sink: WireSink | None = None


#: the tap of a transport whose handler has none: its ``sink`` is never set
NO_TAP = WireTap()


def tap_of(handler: Any) -> WireTap:
    """``handler``'s ``wire_tap``, or :data:`NO_TAP`."""
    tap = getattr(handler, 'wire_tap', None)
    return tap if isinstance(tap, WireTap) else NO_TAP
