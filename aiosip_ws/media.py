"""``aiosip_ws.media``: WebRTC media for calls (``pip install "aiosip-ws[media]"``).

A face of the package, like ``aiosip_ws`` itself: the names live in
:mod:`aiosip_ws.adapter.media` (aiortc glue) and :mod:`aiosip_ws.core.sdp` (SDP and
DTMF helpers), and importing this module is what loads aiortc.
"""
from __future__ import annotations

from .adapter.media import Call, CallEvent, MediaOptions, ToneTrack, answer, call
from .core.sdp import Candidate, candidates, direction, dtmf_relay_body, parse_dtmf

__all__ = ['Call', 'CallEvent', 'MediaOptions', 'ToneTrack', 'answer', 'call', 'Candidate',
           'candidates', 'direction', 'dtmf_relay_body', 'parse_dtmf']
