"""WebRTC media for aiosip calls over WebSocket: an aiosip INVITE dialog tied to an
``aiortc.RTCPeerConnection`` (the ``aiosip-ws[media]`` extra).

A browser softphone (JsSIP, SIP.js) offers WebRTC media: ICE, DTLS-SRTP (RFC 5763
``a=setup``), BUNDLE, rtcp-mux, Opus or PCMU.  :func:`answer` answers an incoming
INVITE with such media and :func:`call` places one; both return a :class:`Call`:

    async def on_invite(dialog, request):
        call = await media.answer(dialog, request, media.MediaOptions(play='hello.wav'))
        async for event in call.events():
            if event.kind == 'dtmf' and event.digit == '#':
                await call.hangup()

What a call does on the wire:

* the SDP answer (or, for an INVITE without SDP, the offer: RFC 3264 late offer, its
  answer then comes in the ACK) is sent with every ICE candidate gathered first: no
  trickle ICE, which SIP over WebSocket does not carry;
* a re-INVITE from the peer puts us on hold or takes us off (``sendonly``/``inactive``,
  or ``c=0.0.0.0``), :meth:`Call.hold` and :meth:`Call.unhold` do it the other way;
* DTMF comes and goes as SIP INFO ``application/dtmf-relay`` (what JsSIP sends by
  default; ``application/dtmf`` is understood too);
* BYE from either side, CANCEL of a ringing call, a call never ACKed (64*T1) and a lost
  connection all end the call, and every path closes the peer connection, the player
  and the recorder.

The aiosip dialog stays the application's handle: in-dialog requests reach the call
through :attr:`aiosip_ws.adapter.application.Dialog.request_handler` (the D13 hook)
instead of aiosip's automatic 200.  This module does not import the adapter: what it
uses of the application, its dialogs and a delivered request is written down as the
protocols :class:`SIPApplication`, :class:`SIPDialog`, :class:`SIPConnection` and
:class:`Delivered`, which ``aiosip_ws.Application``, its ``Dialog`` and connections and
the requests its route handlers get satisfy.
"""
from __future__ import annotations

import asyncio
import contextlib
import fractions
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..core import codec, sdp
from ..core.codec import SIPMessage
from ..core.dialog import DialogState, new_request
from ..core.digest import authorized_retry
from ..core.transaction import TIMER_B, new_tag
from ..errors import (
    AiosipWSError,
    CallFailed,
    ConfigurationError,
    ConnectionLost,
    DigestError,
    MediaError,
    SIPParseError,
    TransactionTimeout,
)

try:
    import aiortc
    from aiortc.contrib.media import MediaPlayer, MediaRecorder, MediaRelay
    from av import AudioFrame
except ImportError as exc:       # the [media] extra is not installed
    raise MediaError('aiosip_ws.media needs aiortc: pip install "aiosip-ws[media]" (%s)'
                     % exc) from None

__all__ = ['Call', 'CallEvent', 'Delivered', 'MediaOptions', 'SIPApplication', 'SIPConnection',
           'SIPDialog', 'ToneTrack', 'answer', 'call']

logger = logging.getLogger(__name__)

SDP_TYPE = 'application/sdp'
#: codecs offered and accepted, in order of preference (``MediaOptions.codecs``)
CODECS = ('opus', 'PCMU')
#: events a call keeps for a slow reader; more are dropped (and logged)
EVENT_QUEUE = 256
#: how long a peer may take to answer an in-dialog request we send
IN_DIALOG_TIMEOUT = TIMER_B


# ------------------------------------------------------- what a call uses of the adapter
class SIPConnection(Protocol):
    """What a call uses of its dialog's connection (a
    :class:`~aiosip_ws.transport.websocket.WSConnection`): the call sends its responses,
    its CANCEL and the ACK of a non-2xx on it, and gives it to
    :meth:`SIPApplication.send_request` for the rest."""

    @property
    def is_open(self) -> bool: ...
    def send(self, message: SIPMessage) -> object: ...


class SIPDialog(Protocol):
    """What a call uses of a dialog (``aiosip_ws.adapter.application.Dialog``)."""

    #: the D13 hook: given every in-dialog request (and ACK, CANCEL) while set
    request_handler: Callable[[SIPMessage], None] | None
    #: called when the dialog's connection is gone
    lost_handler: Callable[[BaseException | None], None] | None

    @property
    def app(self) -> SIPApplication: ...
    @property
    def protocol(self) -> SIPConnection: ...
    @property
    def call_id(self) -> str: ...
    @property
    def contact_header(self) -> str | None: ...
    @property
    def from_details(self) -> Mapping[str, Mapping[str, object]]:
        """aiosip's parsed From: ``['uri']['user']`` is the default Digest username."""
    def request_uri_for(self, method: str) -> str: ...


class SIPApplication(Protocol):
    """What a call uses of an application (``aiosip_ws.Application``)."""

    def start_dialog(self, from_uri: str, to_uri: str, *, remote_addr: str | None = ...,
                     password: str | None = ...) -> Awaitable[SIPDialog]: ...

    def send_request(self, conn: SIPConnection, request: SIPMessage, *,
                     on_provisional: Callable[[SIPMessage], None] | None = ...
                     ) -> Awaitable[SIPMessage]: ...

    def end_dialog(self, dialog: SIPDialog) -> None: ...


class Delivered(Protocol):
    """An aiosip request as a route handler gets it: the codec message is its ``raw``."""

    @property
    def raw(self) -> SIPMessage: ...


@dataclass
class MediaOptions:
    """What a call sends, what it keeps, and how ICE finds the peer."""

    #: a sound file to play (WAV, or anything FFmpeg reads), once
    play: str | None = None
    #: a sine tone of this frequency in Hz, played while the call lasts
    tone: float | None = None
    #: send back what is heard
    echo: bool = False
    #: record what is heard to this file (WAV)
    record: str | None = None
    #: codecs, most preferred first: names from ``opus``, ``PCMU``, ``PCMA``, ``G722``
    codecs: Sequence[str] = CODECS
    #: STUN/TURN servers: URLs (``stun:host:port``) or ``aiortc.RTCIceServer`` objects
    ice_servers: Sequence[str | aiortc.RTCIceServer] = ()
    #: end an answered call after this many seconds (None: when a side hangs up)
    duration: float | None = None

    def validate(self) -> None:
        sources = [name for name, on in (('play', self.play), ('tone', self.tone),
                                         ('echo', self.echo)) if on]
        if len(sources) > 1:
            raise ConfigurationError('a call sends one thing: choose one of play, tone and echo '
                                     '(got %s)' % ', '.join(sources))
        if self.tone is not None and not 20 <= self.tone <= 20000:
            raise ConfigurationError('tone must be 20-20000 Hz, got %r' % self.tone)
        known = {codec.mimeType.split('/', 1)[1].lower()
                 for codec in aiortc.RTCRtpSender.getCapabilities('audio').codecs}
        unknown = [name for name in self.codecs if name.lower() not in known]
        if unknown or not self.codecs:
            raise ConfigurationError('unknown codec(s) %s: aiortc has %s' % (
                ', '.join(unknown) or '(none given)', ', '.join(sorted(known))))
        if self.duration is not None and self.duration <= 0:
            raise ConfigurationError('duration must be positive, got %r' % self.duration)


@dataclass(frozen=True)
class CallEvent:
    """Something that happened to a call.

    ``kind`` is one of ``ringing`` (a 18x, ``status``), ``answered``, ``hold``,
    ``unhold`` (``originator`` says who), ``dtmf`` (``digit``, ``duration`` ms),
    ``ended`` (``cause``, ``originator``, and ``status`` for a call that failed).
    """

    kind: str
    time: float
    status: int | None = None
    reason: str | None = None
    digit: str | None = None
    duration: int | None = None
    cause: str | None = None
    originator: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items() if value is not None}


class ToneTrack(aiortc.MediaStreamTrack):
    """An audio track playing a sine tone, paced in real time (20 ms frames)."""

    kind = 'audio'

    def __init__(self, frequency: float, *, rate: int = 48000, level: float = 0.3) -> None:
        super().__init__()
        self.rate = rate
        self.samples = rate // 50
        one_second = bytearray()
        for i in range(rate):
            value = int(32767 * level * math.sin(2 * math.pi * frequency * i / rate))
            one_second += value.to_bytes(2, 'little', signed=True)
        self._second = bytes(one_second)          # whole periods for an integer frequency
        self._pts = 0
        self._start: float | None = None

    async def recv(self) -> AudioFrame:
        if self.readyState != 'live':
            raise aiortc.mediastreams.MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        wait = self._start + self._pts / self.rate - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        elif wait < -0.1:              # not asked for a while (on hold): no burst to catch up
            self._start = time.monotonic() - self._pts / self.rate
        offset = (self._pts % self.rate) * 2
        chunk = self._second[offset:offset + self.samples * 2]
        if len(chunk) < self.samples * 2:
            chunk += self._second[:self.samples * 2 - len(chunk)]
        frame = AudioFrame(format='s16', layout='mono', samples=self.samples)
        frame.planes[0].update(chunk)
        frame.sample_rate = self.rate
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, self.rate)
        self._pts += self.samples
        return frame


def _ice_servers(servers: Sequence[str | aiortc.RTCIceServer]) -> list[aiortc.RTCIceServer]:
    return [server if isinstance(server, aiortc.RTCIceServer) else aiortc.RTCIceServer(str(server))
            for server in servers]


class Call:
    """One call with WebRTC media; made by :func:`answer` or :func:`call`."""

    def __init__(self, app: SIPApplication, dialog: SIPDialog, options: MediaOptions, *,
                 outgoing: bool,
                 on_event: Callable[[CallEvent], None] | None = None) -> None:
        options.validate()
        #: called with each event instead of queueing it for :meth:`events`
        self.on_event = on_event
        self.app = app
        self.dialog = dialog
        self.conn = dialog.protocol
        self.options = options
        self.outgoing = outgoing
        self.call_id: str = dialog.call_id
        self.state: DialogState | None = None
        self.answered = False
        self.on_hold = False          # we put the peer on hold
        self.held = False             # the peer put us on hold
        self.pc = aiortc.RTCPeerConnection(aiortc.RTCConfiguration(
            iceServers=_ice_servers(options.ice_servers)))
        self._relay = MediaRelay()
        self._player: MediaPlayer | None = None
        self._recorder: MediaRecorder | None = None
        self._remote_track: aiortc.MediaStreamTrack | None = None
        self._events: asyncio.Queue[CallEvent] = asyncio.Queue(EVENT_QUEUE)
        self._ended: asyncio.Future[CallEvent] = asyncio.get_running_loop().create_future()
        self._ack: asyncio.Future[SIPMessage] | None = None
        self._invite: SIPMessage | None = None     # the INVITE being answered (UAS)
        self._negotiating = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._closing = False
        dialog.request_handler = self._request_received
        dialog.lost_handler = self._connection_lost

    # -- what the application sees ------------------------------------------------------
    @property
    def ended(self) -> bool:
        return self._ended.done()

    async def events(self) -> AsyncIterator[CallEvent]:
        """Every event of the call, ending after ``ended`` (none when ``on_event`` is set)."""
        if self.on_event is not None:
            await self.wait_ended()
            return
        while True:
            event = await self._events.get()
            yield event
            if event.kind == 'ended':
                return

    async def wait_ended(self, timeout: float | None = None) -> CallEvent:
        """The ``ended`` event, once the call is over (cleaned up)."""
        return await asyncio.wait_for(asyncio.shield(self._ended), timeout)

    def candidates(self) -> list[sdp.Candidate]:
        """The ICE candidates of both SDPs (ours first)."""
        found: list[sdp.Candidate] = []
        for description in (self.pc.localDescription, self.pc.remoteDescription):
            if description is not None:
                found += sdp.candidates(description.sdp)
        return found

    async def hangup(self) -> None:
        """End the call: BYE when it is answered, else CANCEL (outgoing) or 480 (incoming)."""
        if self.ended:
            return
        if self.answered and self.state is not None:
            await self._end_with_bye()
        elif self.outgoing:
            self._cancel()
        elif self._invite is not None:
            self._respond(self._invite, 480)
            await self._finish('rejected', 'local')

    async def hold(self) -> None:
        """Put the peer on hold: a re-INVITE offering ``sendonly``."""
        await self._reinvite('sendonly')
        self.on_hold = True
        self._emit('hold', originator='local')

    async def unhold(self) -> None:
        """Take the peer off hold: a re-INVITE offering ``sendrecv``."""
        await self._reinvite('sendrecv')
        self.on_hold = False
        self._emit('unhold', originator='local')

    async def send_dtmf(self, digits: str, duration: int = 100, gap: float = 0.1) -> None:
        """Send each digit as a SIP INFO ``application/dtmf-relay``, one after another."""
        for digit in digits:
            body = sdp.dtmf_relay_body(digit, duration)
            response = await self._send_in_dialog('INFO', body=body, content_type=sdp.DTMF_RELAY)
            if not 200 <= (response.status or 0) < 300:
                raise CallFailed('the peer refused DTMF %r: %s %s' % (
                    digit, response.status, response.reason), response.status, response.reason)
            await asyncio.sleep(gap)

    # -- media ------------------------------------------------------------------------------
    def _transceiver(self) -> aiortc.RTCRtpTransceiver:
        transceivers = [t for t in self.pc.getTransceivers() if t.kind == 'audio']
        if not transceivers:
            raise MediaError('the SDP has no audio stream this call could use')
        return transceivers[0]

    def _prefer_codecs(self, transceiver: aiortc.RTCRtpTransceiver) -> None:
        wanted = [name.lower() for name in self.options.codecs]
        available = aiortc.RTCRtpSender.getCapabilities('audio').codecs
        chosen = sorted((c for c in available if c.mimeType.split('/', 1)[1].lower() in wanted),
                        key=lambda c: wanted.index(c.mimeType.split('/', 1)[1].lower()))
        transceiver.setCodecPreferences(chosen)

    def _source(self) -> aiortc.MediaStreamTrack | None:
        options = self.options
        if options.play:
            try:
                self._player = MediaPlayer(options.play)
            except Exception as exc:  # noqa: BLE001 (av raises its own errors)
                raise MediaError('cannot play %s: %s' % (options.play, exc)) from exc
            if self._player.audio is None:
                raise MediaError('%s has no audio stream to play' % options.play)
            return self._player.audio
        if options.tone is not None:
            # at the first codec's clock rate, so that the encoder does not resample
            first = options.codecs[0].lower()
            rate = 8000 if first in ('pcmu', 'pcma') else 16000 if first == 'g722' else 48000
            return ToneTrack(options.tone, rate=rate)
        return None

    def _attach(self, transceiver: aiortc.RTCRtpTransceiver) -> None:
        """The track we send on ``transceiver``, before an offer or answer is made."""
        self._prefer_codecs(transceiver)
        transceiver.direction = 'sendrecv'     # aiortc answers recvonly while it has no track
        if self.options.echo:
            heard = transceiver.receiver.track  # known to the answerer of an offer
            if heard is not None:
                transceiver.sender.replaceTrack(self._relay.subscribe(heard))
            return
        source = self._source()
        if source is not None:
            transceiver.sender.replaceTrack(source)

    async def _start_receiving(self) -> None:
        """Once the remote description is set: record (and echo) the peer's track."""
        transceiver = self._transceiver()
        track = transceiver.receiver.track
        if self._remote_track is not None or track is None:
            return
        self._remote_track = track
        if self.options.echo and transceiver.sender.track is None:
            transceiver.sender.replaceTrack(self._relay.subscribe(track))
        if self.options.record:
            try:
                self._recorder = MediaRecorder(self.options.record)
                self._recorder.addTrack(self._relay.subscribe(track))
                await self._recorder.start()
            except Exception as exc:  # noqa: BLE001
                self._recorder = None
                raise MediaError('cannot record to %s: %s' % (self.options.record, exc)) from exc

    async def _local(self, kind: str) -> str:
        """Our offer or answer, with every ICE candidate in it (aiortc gathers first)."""
        description = await (self.pc.createOffer() if kind == 'offer' else self.pc.createAnswer())
        await self.pc.setLocalDescription(description)
        return str(self.pc.localDescription.sdp)

    async def _remote(self, kind: str, body: bytes) -> None:
        try:
            sdp.direction(body)                        # an audio stream, or SIPParseError
            await self.pc.setRemoteDescription(aiortc.RTCSessionDescription(
                body.decode('utf-8', 'replace'), kind))
        except (SIPParseError, ValueError) as exc:
            raise MediaError('cannot use the peer\'s SDP %s: %s' % (kind, exc)) from exc

    # -- SIP plumbing -----------------------------------------------------------------------
    def _respond(self, request: SIPMessage, status: int, reason: str | None = None, *,
                 body: bytes = b'', headers: list[tuple[str, str]] | None = None) -> None:
        extra = list(headers or [])
        if body:
            extra.append(('Content-Type', SDP_TYPE))
        local_tag = self.state.local_tag if self.state is not None else None
        response = codec.make_response(request, status, reason, to_tag=local_tag,
                                       headers=extra, body=body)
        if self.conn.is_open:
            self.conn.send(response)

    def _contact(self) -> list[tuple[str, str]]:
        """Our Contact, for a 2xx to a (re-)INVITE (RFC 3261 12.1.1, a target refresh)."""
        contact = self.state.contact if self.state is not None else None
        return [('Contact', contact)] if contact else []

    async def _send_in_dialog(self, method: str, *, body: bytes = b'',
                              content_type: str | None = None) -> SIPMessage:
        if self.state is None or self.ended:
            raise CallFailed('the call is not answered (or is over): no %s' % method)
        request = self.state.request(method, body=body, content_type=content_type)
        try:
            return await asyncio.wait_for(self.app.send_request(self.conn, request),
                                          IN_DIALOG_TIMEOUT)
        except (asyncio.TimeoutError, TransactionTimeout) as exc:
            raise CallFailed('no answer to %s within %.0f s' % (method, IN_DIALOG_TIMEOUT)) from exc

    def _ack_2xx(self, response: SIPMessage, body: bytes = b'') -> None:
        assert self.state is not None
        cseq = response.cseq[0]
        ack = self.state.request('ACK', cseq=cseq, body=body,
                                 content_type=SDP_TYPE if body else None)
        self.app.send_request(self.conn, ack)

    def _emit(self, kind: str, **fields: Any) -> None:
        event = CallEvent(kind, time.time(), **fields)
        if self.on_event is not None:
            self._deliver(event)
            return
        try:
            self._events.put_nowait(event)
        except asyncio.QueueFull:
            logger.warning('%s: an event reader is not keeping up; dropped %s', self.call_id, kind)

    def _deliver(self, event: CallEvent) -> None:
        assert self.on_event is not None
        try:
            self.on_event(event)
        except Exception:  # noqa: BLE001
            logger.exception('%s: the on_event callback failed', self.call_id)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            logger.warning('%s: %s', self.call_id, exc, exc_info=not isinstance(exc, AiosipWSError))
            if not self.ended:
                self._spawn(self._end_with_bye() if self.answered else
                            self._finish('error', 'local'))

    def _request_received(self, request: SIPMessage) -> None:
        method = request.method
        if self.state is not None and not self.state.accepts(request):
            self._respond(request, 500, 'Server Internal Error (CSeq out of order)')
            return
        if method == 'ACK':
            if self._ack is not None and not self._ack.done():
                self._ack.set_result(request)
        elif method == 'CANCEL':
            self._respond(request, 200)
            if not self.answered and self._invite is not None and not self.ended:
                self._respond(self._invite, 487)
                self._spawn(self._finish('cancelled', 'remote'))
        elif method == 'BYE':
            self._respond(request, 200)
            self._spawn(self._finish('bye', 'remote'))
        elif method == 'INFO':
            self._info(request)
        elif method == 'INVITE':
            if self._negotiating or not self.answered:
                self._respond(request, 491)        # RFC 3261 14.2: one offer at a time
            else:
                self._spawn(self._reinvited(request))
        elif method == 'OPTIONS':
            self._respond(request, 200, headers=[('Allow', 'INVITE, ACK, CANCEL, BYE, INFO, '
                                                            'OPTIONS')])
        else:
            self._respond(request, 501 if method in ('UPDATE', 'PRACK') else 405,
                          headers=[('Allow', 'INVITE, ACK, CANCEL, BYE, INFO, OPTIONS')])

    def _info(self, request: SIPMessage) -> None:
        try:
            digit, duration = sdp.parse_dtmf(request.get('Content-Type'), request.body)
        except SIPParseError as exc:
            known = (request.get('Content-Type') or '').split(';')[0].strip().lower() in (
                sdp.DTMF, sdp.DTMF_RELAY)
            if known:
                self._respond(request, 400, 'Bad Request (%s)' % str(exc)[:80])
            else:
                self._respond(request, 415, headers=[('Accept', '%s, %s' % (sdp.DTMF_RELAY,
                                                                           sdp.DTMF))])
            return
        self._respond(request, 200)
        self._emit('dtmf', digit=digit, duration=duration)

    def _connection_lost(self, exc: BaseException | None) -> None:
        if not self.ended:
            self._spawn(self._finish('connection lost', 'remote'))

    async def _wait_ack(self) -> SIPMessage:
        self._ack = asyncio.get_running_loop().create_future()
        try:
            return await asyncio.wait_for(self._ack, TIMER_B)
        except asyncio.TimeoutError:
            raise CallFailed('no ACK within %.0f s (RFC 3261 13.3.1.4)' % TIMER_B) from None

    async def _reinvited(self, request: SIPMessage) -> None:
        """A re-INVITE from the peer: hold, unhold, or a new offer (or none: late offer)."""
        assert self.state is not None
        self._negotiating = True
        try:
            self.state.refresh_target(request)
            if request.body:
                await self._remote('offer', request.body)
                held = sdp.is_hold(sdp.direction(request.body))
                answer = await self._local('answer')
                self._respond(request, 200, body=answer.encode(),
                              headers=self._contact())
                await self._wait_ack()
            else:
                offer = await self._local('offer')
                self._respond(request, 200, body=offer.encode(),
                              headers=self._contact())
                ack = await self._wait_ack()
                await self._remote('answer', ack.body)
                held = sdp.is_hold(sdp.direction(ack.body))
            if held != self.held:
                self.held = held
                self._emit('hold' if held else 'unhold', originator='remote')
        finally:
            self._negotiating = False

    async def _reinvite(self, direction: str) -> None:
        if self._negotiating:
            raise CallFailed('an offer is already in progress (RFC 3261 14.1)')
        self._negotiating = True
        try:
            self._transceiver().direction = direction
            offer = await self._local('offer')
            for attempt in (1, 2):
                response = await self._send_in_dialog('INVITE', body=offer.encode(),
                                                      content_type=SDP_TYPE)
                if response.status != 491 or attempt == 2:
                    break
                # glare (RFC 3261 14.1): both sides re-INVITEd.  Our offer stays set (aiortc
                # cannot roll it back), so the peer's re-INVITEs get 491 meanwhile; the same
                # offer goes again after 2.1-4 s.
                await asyncio.sleep(2.1 + random.random() * 1.9)
            if not 200 <= (response.status or 0) < 300:
                raise CallFailed('re-INVITE refused: %s %s' % (response.status, response.reason),
                                 response.status, response.reason)
            assert self.state is not None
            self.state.refresh_target(response)
            self._ack_2xx(response)
            await self._remote('answer', response.body)
        finally:
            self._negotiating = False

    def _cancel(self) -> None:
        """CANCEL the INVITE we sent (RFC 3261 9.1); it then ends with a 487."""
        invite = self._invite
        if invite is None or self.ended or not self.conn.is_open:
            return
        self.conn.send(codec.invite_companion('CANCEL', invite, uri=invite.uri or ''))

    async def _end_with_bye(self) -> None:
        if self.ended or self._closing:
            return
        self._closing = True
        try:
            response = await self._send_in_dialog('BYE')
            status = response.status
        except (CallFailed, ConnectionLost) as exc:
            logger.info('%s: BYE: %s', self.call_id, exc)
            status = None
        await self._finish('bye', 'local', status=status)

    async def _finish(self, cause: str, originator: str, **fields: Any) -> None:
        """End the call: close the media, forget the dialog, report ``ended``."""
        if self._ended.done():
            return
        event = CallEvent('ended', time.time(), cause=cause, originator=originator, **fields)
        self._ended.set_result(event)                  # a second path ends here
        if self._timer is not None:
            self._timer.cancel()
        if self._ack is not None and not self._ack.done():
            self._ack.cancel()
        self.dialog.request_handler = None
        self.dialog.lost_handler = None
        self.app.end_dialog(self.dialog)
        await self._close_media()
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
        if self.on_event is not None:
            self._deliver(event)
        else:
            try:
                self._events.put_nowait(event)
            except asyncio.QueueFull:
                self._events.get_nowait()
                self._events.put_nowait(event)
        logger.info('%s: ended (%s, by %s)', self.call_id, cause, originator)

    async def _close_media(self) -> None:
        if self._recorder is not None:
            with contextlib.suppress(Exception):
                await self._recorder.stop()
        if self._player is not None and self._player.audio is not None:
            self._player.audio.stop()
        for transceiver in self.pc.getTransceivers():
            if transceiver.sender.track is not None:
                transceiver.sender.track.stop()
        await self.pc.close()

    def _answered(self) -> None:
        self.answered = True
        self._emit('answered')
        if self.options.duration is not None:
            self._timer = asyncio.get_running_loop().call_later(
                self.options.duration, lambda: self._spawn(self._end_with_bye()))


# ---------------------------------------------------------------------------- the UAS
async def answer(dialog: SIPDialog, request: SIPMessage | Delivered,
                 options: MediaOptions | None = None, *,
                 ring: float = 0.0, on_event: Callable[[CallEvent], None] | None = None) -> Call:
    """Answer the INVITE ``request`` (the route handler's arguments) with media.

    Sends 180 Ringing (and waits ``ring`` seconds), then the 200 with our SDP answer (or
    offer, for an INVITE without SDP), and waits for the ACK.  Returns the answered
    :class:`Call`; raises :class:`MediaError` (after answering 488) when the offer cannot
    be answered, :class:`CallFailed` when the caller cancelled or never ACKed.
    """
    raw = request if isinstance(request, SIPMessage) else request.raw
    app = dialog.app
    call = Call(app, dialog, options or MediaOptions(), outgoing=False, on_event=on_event)
    call._invite = raw
    tag = new_tag()
    call.state = DialogState.as_uas(raw, tag, contact=dialog.contact_header)
    try:
        call._respond(raw, 180)
        call._emit('ringing', status=180)
        if ring:                                        # a CANCEL ends the ringing early
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(call._ended), ring)
        if call.ended:
            raise CallFailed('the caller cancelled', 487, 'Request Terminated')
        if raw.body:
            try:
                await call._remote('offer', raw.body)
                call._attach(call._transceiver())
                body = await call._local('answer')
                await call._start_receiving()
            except MediaError:
                call._respond(raw, 488)                 # RFC 3261 21.4.26
                raise
        else:                                           # late offer: ours in the 200
            call._attach(call.pc.addTransceiver('audio', direction='sendrecv'))
            body = await call._local('offer')
        if call.ended:
            raise CallFailed('the caller cancelled', 487, 'Request Terminated')
        call._respond(raw, 200, body=body.encode(), headers=call._contact())
        call._invite = None
        call.answered = True
        ack = await call._wait_ack()
        if not raw.body:
            await call._remote('answer', ack.body)
            await call._start_receiving()
        call._answered()
        return call
    except BaseException as exc:
        ended_first = call.ended
        if not call.ended:
            if call.answered:
                await call._end_with_bye()
            else:
                await call._finish('error', 'local')
        if ended_first and isinstance(exc, Exception) and not isinstance(exc, CallFailed):
            cause = call._ended.result().cause
            raise CallFailed('the call ended (%s) before it was answered' % cause,
                             487 if cause == 'cancelled' else None) from exc
        raise


# ---------------------------------------------------------------------------- the UAC
async def call(app: SIPApplication, from_uri: str, to_uri: str, *, remote_addr: str | None = None,
               password: str | None = None, username: str | None = None,
               options: MediaOptions | None = None, late_offer: bool = False,
               timeout: float = 60.0, on_event: Callable[[CallEvent], None] | None = None
               ) -> Call:
    """Call ``to_uri`` from ``from_uri`` over WebSocket (``remote_addr`` as for
    ``Application.start_dialog``) and return the answered :class:`Call`.

    Answers a 401/407 with ``password``; reports ``ringing`` for each 18x; with
    ``late_offer`` the INVITE has no SDP and the answer goes in the ACK.  CANCELs after
    ``timeout`` seconds without an answer.  Raises :class:`CallFailed` with the final
    status when the call is not answered.  ``on_event`` (see :class:`Call`) sees the
    ``ringing`` events before this returns.
    """
    dialog = await app.start_dialog(from_uri, to_uri, remote_addr=remote_addr, password=password)
    try:
        outgoing = Call(app, dialog, options or MediaOptions(), outgoing=True, on_event=on_event)
    except BaseException:
        app.end_dialog(dialog)
        raise
    placing = asyncio.ensure_future(_place(outgoing, from_uri, to_uri, password, username,
                                           late_offer))
    try:
        try:
            await asyncio.wait_for(asyncio.shield(placing), timeout)
        except asyncio.TimeoutError:
            outgoing._cancel()                 # the 487 that follows ends the INVITE
            try:
                await asyncio.wait_for(placing, TIMER_B)
            except CallFailed as exc:
                raise CallFailed('no answer within %.0f s: cancelled' % timeout, exc.status,
                                 exc.reason) from None
    except BaseException as exc:
        if not placing.done() and not outgoing.answered and not isinstance(exc, asyncio.TimeoutError):
            outgoing._cancel()                 # interrupted: CANCEL, and ACK the 487 if it comes
            await asyncio.wait({placing}, timeout=2)
        if not placing.done():
            placing.cancel()
        await asyncio.gather(placing, return_exceptions=True)
        if not outgoing.ended:
            if outgoing.answered:
                await outgoing._end_with_bye()
            else:
                outgoing._cancel()
                await outgoing._finish('failed', 'local')
        if isinstance(exc, asyncio.TimeoutError):
            raise CallFailed('no answer within %.0f s, and no final response to the CANCEL'
                             % timeout) from None
        raise
    return outgoing


async def _place(outgoing: Call, from_uri: str, to_uri: str, password: str | None,
                 username: str | None, late_offer: bool) -> None:
    app, dialog = outgoing.app, outgoing.dialog
    if not late_offer:
        outgoing._attach(outgoing.pc.addTransceiver('audio', direction='sendrecv'))
        body = (await outgoing._local('offer')).encode()
    else:
        body = b''
    invite = new_request('INVITE', dialog.request_uri_for('INVITE'), from_=from_uri, to=to_uri,
                         contact=dialog.contact_header, call_id=dialog.call_id, body=body,
                         content_type=SDP_TYPE if body else None)
    answered_auth = 0
    nonce_counts: dict[str, int] = {}

    def provisional(response: SIPMessage) -> None:
        if response.status and response.status > 100:
            outgoing._emit('ringing', status=response.status, reason=response.reason)

    while True:
        outgoing._invite = invite
        try:
            response = await app.send_request(outgoing.conn, invite, on_provisional=provisional)
        except (TransactionTimeout, ConnectionLost) as exc:
            raise CallFailed('the INVITE got no final response: %s' % exc) from exc
        status = response.status or 0
        if status >= 300:
            outgoing.conn.send(codec.invite_companion('ACK', response, uri=invite.uri or '',
                                                      to=response.get('To')))
        if status in (401, 407) and password and answered_auth < 2:
            user = username or _from_user(dialog)
            try:
                invite = authorized_retry(invite, response, username=user, password=password,
                                          nonce_counts=nonce_counts)
            except DigestError as exc:
                raise CallFailed('cannot answer the %d: %s' % (status, exc), status,
                                 response.reason) from exc
            answered_auth += 1
            continue
        if status >= 300 or status < 200:
            cause = 'cancelled' if status == 487 else 'rejected'
            await outgoing._finish(cause, 'remote', status=status, reason=response.reason)
            raise CallFailed('%d %s' % (status, response.reason), status, response.reason)
        break
    outgoing._invite = None
    outgoing.state = DialogState.as_uac(invite, response)
    outgoing.answered = True
    if late_offer:
        await outgoing._remote('offer', response.body)
        outgoing._attach(outgoing._transceiver())
        answer_sdp = (await outgoing._local('answer')).encode()
        outgoing._ack_2xx(response, answer_sdp)
    else:
        outgoing._ack_2xx(response)
        await outgoing._remote('answer', response.body)
    await outgoing._start_receiving()
    outgoing._answered()


def _from_user(dialog: SIPDialog) -> str:
    """The user part of the dialog's From URI ('' when it has none)."""
    user = dialog.from_details['uri']['user']
    return user if isinstance(user, str) else ''
