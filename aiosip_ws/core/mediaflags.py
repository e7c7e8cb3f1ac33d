"""What rtpengine is told for each leg of a call (sans-I/O): the leg's media profile and
the ng flags that turn the other leg's SDP into what this leg speaks.

A *WebRTC* leg (a browser: JsSIP, SIP.js) speaks ICE, DTLS-SRTP and rtcp-mux over
``UDP/TLS/RTP/SAVPF``; a *plain* leg (a desk phone, a PBX trunk, a carrier) speaks
``RTP/AVP`` without ICE.  :func:`sdp_profile` tells them apart from an SDP body;
:func:`leg_flags` gives the ng dictionary for an offer or an answer sent towards a leg
(the flags Kamailio and OpenSIPS users write by hand, here chosen by serve):

====================  =====================================================================
towards               ng flags
====================  =====================================================================
a WebRTC leg          ``ICE: force``, ``transport-protocol: UDP/TLS/RTP/SAVPF``,
                      ``SDES: [off]``, ``replace: [origin, session-connection]``; in an
                      offer also ``rtcp-mux: [offer]`` and ``flags: [generate-mid]``
a plain leg           ``ICE: remove``, ``transport-protocol: RTP/AVP``,
                      ``rtcp-mux: [demux]``, ``replace: [origin, session-connection]``
====================  =====================================================================

An offer from a WebRTC leg towards a plain one also carries ``DTLS-reverse: passive``:
rtpengine then waits for the calling browser's DTLS ClientHello instead of starting
DTLS towards it as soon as it sees the offer (with rtpengine 10.5 that early ClientHello
breaks a forked call that another browser answers).  ``DTLS: passive`` is never sent
towards a browser: rtpengine 10.5 writes ``a=setup:passive`` and still sends the
ClientHello itself, and the call has no audio.

Operators who have their own flags (``--rtpengine-flags-webrtc``, ``-plain``) write them
as Kamailio's rtpengine module does; :func:`parse_kamailio_flags` turns that string into
the ng dictionary by this table:

=================================================  ========================================
Kamailio's word                                    ng
=================================================  ========================================
``RTP/AVP``, ``RTP/SAVP``, ``RTP/AVPF``,           ``transport-protocol``
``RTP/SAVPF``, ``UDP/TLS/RTP/SAVP(F)``
``replace-X`` (``origin``, ``session-connection``) ``replace: [X]``
``rtcp-mux-X`` (``offer``, ``demux``, ``accept``,  ``rtcp-mux: [X]``
``reject``, ``require``)
``SDES-X`` (``off``, ``no``, a suite name)         ``SDES: [X]``
``codec-X-Y`` (``strip``, ``offer``, ``mask``,     ``codec: {X: [Y]}``
``transcode``, ``except``)
``direction=X``                                    ``direction: [X]`` (repeatable)
``KEY=VALUE`` (``ICE=force``, ``DTLS=off``,        ``KEY: VALUE``
``DTLS-reverse=passive``, ``via-branch=...``)
any other word (``trust-address``, ``symmetric``,  ``flags: [word]``
``generate-mid``, ``strict-source``...)
=================================================  ========================================
"""
from __future__ import annotations

import re
from typing import Any

from ..errors import ConfigurationError

__all__ = ['WEBRTC', 'PLAIN', 'sdp_profile', 'leg_flags', 'parse_kamailio_flags',
           'check_flags']

WEBRTC = 'webrtc'
PLAIN = 'plain'

_PROTOCOLS = ('RTP/AVP', 'RTP/SAVP', 'RTP/AVPF', 'RTP/SAVPF', 'UDP/TLS/RTP/SAVP',
              'UDP/TLS/RTP/SAVPF')
_MEDIA_LINE = re.compile(r'^m=\S+ \d+(?:/\d+)? (\S+)', re.MULTILINE)
_REPLACE = ['origin', 'session-connection']


def sdp_profile(sdp: str | bytes | None) -> str | None:
    """``webrtc`` when the SDP has ICE candidates, a DTLS fingerprint or a SAVPF profile,
    ``plain`` for other SDP with a media line, None without SDP (a late offer)."""
    if not sdp:
        return None
    text = sdp.decode('utf-8', 'replace') if isinstance(sdp, bytes) else sdp
    protocols = _MEDIA_LINE.findall(text)
    if not protocols:
        return None
    if ('a=candidate:' in text or 'a=fingerprint:' in text or 'a=ice-ufrag:' in text
            or any('SAVPF' in p or p.startswith('UDP/TLS') for p in protocols)):
        return WEBRTC
    return PLAIN


def leg_flags(towards: str, *, offer: bool, source: str | None = None) -> dict[str, Any]:
    """The ng flags of an ``offer`` (else an answer) sent towards a ``towards`` leg, the
    SDP coming from a ``source`` leg (see the module's table)."""
    if towards == WEBRTC:
        flags: dict[str, Any] = {'ICE': 'force', 'transport-protocol': 'UDP/TLS/RTP/SAVPF',
                                 'SDES': ['off'], 'replace': list(_REPLACE)}
        if offer:
            flags['rtcp-mux'] = ['offer']
            flags['flags'] = ['generate-mid']
        return flags
    if towards == PLAIN:
        flags = {'ICE': 'remove', 'transport-protocol': 'RTP/AVP', 'rtcp-mux': ['demux'],
                 'replace': list(_REPLACE)}
        if offer and source == WEBRTC:
            flags['DTLS-reverse'] = 'passive'
        return flags
    raise ConfigurationError('a leg is %s or %s, not %r' % (WEBRTC, PLAIN, towards))


def parse_kamailio_flags(text: str) -> dict[str, Any]:
    """Kamailio's rtpengine flag string (``ICE=remove RTP/AVP rtcp-mux-demux``) as the
    ng dictionary (see the module's table)."""
    flags: dict[str, Any] = {}

    def add(key: str, value: str) -> None:
        flags.setdefault(key, [])
        if value not in flags[key]:
            flags[key].append(value)
    for word in text.split():
        if word in _PROTOCOLS:
            flags['transport-protocol'] = word
        elif '=' in word:
            key, _, value = word.partition('=')
            if not key or not value:
                raise ConfigurationError('rtpengine flags: %r is not KEY=VALUE' % word)
            if key == 'direction':
                add('direction', value)
            else:
                flags[key] = value
        elif word.startswith('replace-'):
            add('replace', word[len('replace-'):])
        elif word.startswith('rtcp-mux-'):
            add('rtcp-mux', word[len('rtcp-mux-'):])
        elif word.startswith('SDES-'):
            add('SDES', word[len('SDES-'):])
        elif word.startswith('codec-') and word.count('-') >= 2:
            _, action, codec = word.split('-', 2)
            flags.setdefault('codec', {}).setdefault(action, [])
            flags['codec'][action].append(codec)
        else:
            add('flags', word)
    return flags


def check_flags(flags: dict[str, Any], towards: str) -> dict[str, Any]:
    """``flags`` for a ``towards`` leg, refused when they would break its calls (``DTLS:
    passive`` towards a browser: see the module)."""
    if towards == WEBRTC and str(flags.get('DTLS', '')).lower() == 'passive':
        raise ConfigurationError('rtpengine flags towards a browser must not say DTLS=passive: '
                                 'rtpengine 10.5 then still starts DTLS itself and the call '
                                 'has no audio (use DTLS-reverse=passive on the offer from '
                                 'the browser instead)')
    return flags
