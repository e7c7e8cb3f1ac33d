"""``aiosip_ws.media``: WebRTC media for calls (``pip install "aiosip-ws[media]"``).

The media layer, above the adapter: :mod:`.webrtc` ties a dialog of
:class:`aiosip_ws.Application` to an aiortc peer connection, typed against what it uses
of the application (:class:`.webrtc.SIPApplication`, :class:`.webrtc.SIPDialog`) rather
than importing the adapter; :mod:`aiosip_ws.core.sdp` has the SDP and DTMF helpers.
Importing this package is what loads aiortc (:class:`~aiosip_ws.errors.MediaError`, with
the install hint, when it is missing).
"""
from __future__ import annotations

from ..core.sdp import Candidate, candidates, direction, dtmf_relay_body, parse_dtmf
from .webrtc import Call, CallEvent, MediaOptions, ToneTrack, answer, call

__all__ = ['Call', 'CallEvent', 'MediaOptions', 'ToneTrack', 'answer', 'call', 'Candidate',
           'candidates', 'direction', 'dtmf_relay_body', 'parse_dtmf']
