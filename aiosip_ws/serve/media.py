"""Media anchoring: serve drives rtpengine so that a browser and a plain SIP phone hear
each other (RFC 7118 §8.2's call).

A browser speaks ICE, DTLS-SRTP and rtcp-mux (``UDP/TLS/RTP/SAVPF``); a desk phone, a PBX
trunk or a carrier speaks ``RTP/AVP``.  Neither accepts the other's SDP.  With
``--rtpengine`` serve puts rtpengine between them: each SDP offer and answer of a call
goes through an ng command (:mod:`aiosip_ws.transport.rtpengine`) with the flags of the
leg it is sent towards (:mod:`aiosip_ws.core.mediaflags`), and the SDP rtpengine returns
replaces it.

When a call is anchored (:class:`MediaSettings`, ``--media-relay``):

``auto`` (the default with ``--rtpengine``)
    when the two legs' profiles differ;
``always``
    every call (NAT traversal, the parties' addresses hidden from each other);
``never``
    no call: SDP passes through.

A leg's profile comes from its SDP when serve has it (:func:`~aiosip_ws.core.mediaflags.
sdp_profile`); for a callee before it answers (and a caller whose INVITE has no SDP),
from its binding: WebRTC if it registered over ws/wss or its Contact carries ``+sip.ice``,
plain otherwise; ``--media-profile TARGET=webrtc|plain`` (an AOR, a domain or a CIDR)
overrides both.

The life of an anchored call, for the fork (:mod:`~aiosip_ws.serve.fork`) and the
pipeline's ``media`` stage (:meth:`Media.in_dialog`, before in-dialog routing):

* the INVITE's offer: one ng ``offer`` per anchored branch, ``via-branch`` the branch
  of serve's Via on it, before the branch is sent; with no relay left, 503 with
  Retry-After;
* each 18x or 2xx with SDP on an anchored branch: an ng ``answer`` (its To tag, the same
  ``via-branch``) before it is relayed, in the order the branch's responses came;
* a late offer (an INVITE without SDP): the 2xx's offer (or a reliable 18x's) is an ng
  ``offer`` from the callee, the ACK's (or PRACK's) answer an ng ``answer`` (ng's
  ``from-tag`` is always the offerer's);
* a re-INVITE, UPDATE or PRACK with SDP: a new ``offer`` from its sender, its 2xx's
  SDP the ``answer`` (an offer rtpengine does not take: 500 with a Warning, nothing
  relayed); a re-INVITE without SDP: the 2xx offers, the ACK answers;
* ``delete`` when the INVITE fails (any final non-2xx: 486, 487 after CANCEL, 408 from
  Timer C...), when a branch serve did not anchor wins, on BYE, when the 2xx is not
  ACKed within 64*T1, and when a leg's connection is lost.  serve's ``delete`` leaves
  rtpengine's own ``--delete-delay`` in force.

A relay lost during a call costs the call its media, never its signalling: a response
whose ``answer`` fails is relayed as it came, a failed ``delete`` is a rate-limited log
line, BYE always passes.  The calls serve remembers are bounded (``max_calls``; the
oldest is forgotten first: rtpengine's ``--timeout`` reaps it).

With ``--redis`` an answered call is recorded for the other nodes
(``aiosip-ws:media:<Call-ID>``: its relay, tags and profiles; :data:`SHARED_TTL`): a
node that gets a BYE, re-INVITE, UPDATE or PRACK of a call it does not know looks there,
and drives the relay that call started on.

Without ``--rtpengine`` a call whose legs' profiles differ gets one rate-limited WARNING
and counts in ``aiosip_ws_media_mismatch``; ``--media-mismatch refuse`` answers it 488
with ``Warning: 399 HOST "no media relay for WebRTC to plain RTP"`` instead.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from ..core.codec import SIPMessage
from ..core.grammar import address_in, parse_networks, show_address
from ..core.mediaflags import PLAIN, WEBRTC, check_flags, leg_flags, parse_kamailio_flags, sdp_profile
from ..core.sipuri import NameAddr
from ..errors import AiosipWSError, ConfigurationError, MediaRelayError, SIPParseError
from ..transport.rtpengine import NgClient, RelaySet, open_ng
from ..transport.throttle import LogThrottle
from .context import Context, Rewrite
from .events import MediaCommand
from .flow import Flow
from .registrar import Binding

__all__ = ['Media', 'MediaSettings', 'AnchoredCall', 'ACK_WAIT', 'MISMATCH_WARNING']

logger = logging.getLogger(__name__)
peer_log = LogThrottle(logger)
#: a mismatched call is one WARNING a minute, whatever the call rate
mismatch_log = LogThrottle(logger, interval=60.0, burst=1)

#: seconds an anchored call's 2xx may wait for its ACK (64*T1, RFC 3261 §13.3.1.4)
ACK_WAIT = 32.0
#: the Warning text of ``--media-mismatch refuse``'s 488
MISMATCH_WARNING = 'no media relay for WebRTC to plain RTP'
#: seconds an anchored call stays readable by the other nodes of a cluster (Redis)
SHARED_TTL = 24 * 3600
#: in-dialog requests another node may get for a call it did not anchor
SHARED_METHODS = frozenset({'BYE', 'INVITE', 'UPDATE', 'PRACK'})
#: the in-dialog methods the media stage looks at
IN_DIALOG_METHODS = frozenset({'ACK', 'BYE', 'INVITE', 'UPDATE', 'PRACK'})


@dataclasses.dataclass
class MediaSettings:
    """What serve does with media (the ``--rtpengine`` and ``--media-*`` options)."""

    #: the rtpengines' ng URLs (``udp://HOST:PORT``); empty: SDP passes through
    rtpengine: list[str] = dataclasses.field(default_factory=list)
    #: seconds an ng command may wait for its reply (retransmitted each second)
    timeout: float = 5.0
    #: seconds a relay that let a command time out is skipped before it is tried again
    retry: float = 60.0
    #: ``auto``, ``always`` or ``never`` (None: ``auto`` with rtpengine, else ``never``)
    mode: str | None = None
    #: ``TARGET=webrtc|plain`` overrides (an AOR, a domain or a CIDR)
    profiles: list[str] = dataclasses.field(default_factory=list)
    #: the operator's flags towards a WebRTC leg, in Kamailio's syntax (None: serve's)
    flags_webrtc: str | None = None
    #: the same towards a plain leg
    flags_plain: str | None = None
    #: ``warn`` or ``refuse`` a call whose profiles differ when nothing anchors it
    mismatch: str = 'warn'
    #: anchored calls remembered at most
    max_calls: int = 100000

    @property
    def relay_mode(self) -> str:
        return self.mode or ('auto' if self.rtpengine else 'never')

    def validate(self) -> None:
        if self.relay_mode not in ('auto', 'always', 'never'):
            raise ConfigurationError('--media-relay is auto, always or never (got %r)'
                                     % self.mode)
        if self.relay_mode != 'never' and not self.rtpengine:
            raise ConfigurationError('--media-relay %s needs --rtpengine udp://HOST:PORT'
                                     % self.relay_mode)
        if self.mismatch not in ('warn', 'refuse'):
            raise ConfigurationError('--media-mismatch is warn or refuse (got %r)'
                                     % self.mismatch)
        if self.timeout <= 0 or self.retry <= 0:
            raise ConfigurationError('--rtpengine-timeout and --rtpengine-retry must be '
                                     'positive')
        for url in self.rtpengine:
            if not url.lower().startswith('udp://'):
                raise ConfigurationError('--rtpengine takes udp://HOST:PORT, rtpengine\'s '
                                         '--listen-ng (got %r)' % url)
        self.rules()
        self.flags()

    def rules(self) -> list[ProfileRule]:
        return [ProfileRule.parse(text) for text in self.profiles]

    def flags(self) -> dict[str, dict[str, Any] | None]:
        """The operator's ng flags for each profile (None: serve chooses)."""
        out: dict[str, dict[str, Any] | None] = {}
        for profile, text in ((WEBRTC, self.flags_webrtc), (PLAIN, self.flags_plain)):
            out[profile] = (check_flags(parse_kamailio_flags(text), profile)
                            if text else None)
        return out


@dataclasses.dataclass(frozen=True)
class ProfileRule:
    """One ``--media-profile TARGET=PROFILE``: an AOR, a domain or a CIDR."""

    target: str
    profile: str
    kind: str                                       # aor, domain or network
    networks: tuple[Any, ...] = ()

    @classmethod
    def parse(cls, text: str) -> ProfileRule:
        target, sep, profile = text.rpartition('=')
        profile = profile.strip().lower()
        target = target.strip()
        if not sep or not target or profile not in (WEBRTC, PLAIN):
            raise ConfigurationError('--media-profile takes TARGET=webrtc or TARGET=plain, '
                                     'TARGET an AOR, a domain or a CIDR (got %r)' % text)
        if target.lower().startswith(('sip:', 'sips:')) or '@' in target:
            aor = target if ':' in target.split('@', 1)[0] else 'sip:' + target
            return cls(aor.lower(), profile, 'aor')
        try:
            networks = tuple(parse_networks([target], '--media-profile'))
        except ConfigurationError:
            return cls(target.lower(), profile, 'domain')
        return cls(target, profile, 'network', networks)

    def matches(self, aor: str, address: str | None) -> bool:
        if self.kind == 'aor':
            return aor == self.target
        if self.kind == 'domain':
            return aor.rpartition('@')[2] == self.target
        return address is not None and address_in(address, self.networks)


class AnchoredCall:
    """One call serve has anchored on rtpengine (or is about to)."""

    __slots__ = ('call_id', 'caller_tag', 'caller', 'caller_profile', 'late', 'legs', 'tags',
                 'callee_tag', 'callee', 'callee_profile', 'state', 'ack_timer', 'ended',
                 'pending', 'node')

    def __init__(self, call_id: str, caller_tag: str, caller: Flow | None,
                 caller_profile: str, late: bool) -> None:
        self.call_id = call_id
        self.caller_tag = caller_tag
        self.caller = caller
        self.caller_profile = caller_profile
        #: the INVITE had no SDP: the 2xx offers, the ACK answers
        self.late = late
        #: branch -> (the callee's flow, its profile, anchored)
        self.legs: dict[str, tuple[Flow, str, bool]] = {}
        #: branch -> the To tag its responses with SDP carried (for deleting it alone)
        self.tags: dict[str, str] = {}
        self.callee_tag: str | None = None
        self.callee: Flow | None = None
        self.callee_profile: str | None = None
        #: ``offering`` (branches out), ``answered`` (a 2xx went upstream, no ACK yet),
        #: ``confirmed`` (ACKed)
        self.state = 'offering'
        self.ack_timer: asyncio.TimerHandle | None = None
        self.ended = False
        #: an offer made in a response, whose answer the next ACK or PRACK carries:
        #: (the offerer's tag, the answerer's tag, the offerer's profile)
        self.pending: tuple[str, str, str] | None = None
        #: the cluster node that anchored it, when another one did ('' when this one)
        self.node = ''

    def profiles(self, sender_tag: str) -> tuple[str, str]:
        """(the profile of the party whose tag is ``sender_tag``, the other party's)."""
        callee = self.callee_profile
        if callee is None:
            branch = next((b for b, tag in self.tags.items() if tag != self.caller_tag), None)
            callee = self.legs[branch][1] if branch in self.legs else PLAIN
        if sender_tag == self.caller_tag:
            return self.caller_profile, callee
        return callee, self.caller_profile

    @property
    def anchored(self) -> bool:
        return any(anchored for _, _, anchored in self.legs.values())

    def __repr__(self) -> str:
        return '<AnchoredCall %s %s>' % (self.call_id, self.state)


#: in-dialog routing: ``route(flow, request, rewrite)`` (:meth:`Dialogs.route`)
Route = Callable[[Flow, SIPMessage, 'Rewrite | None'], bool]
#: what the fork launches for one binding: (binding, branch, body, anchored)
Launch = tuple[Binding, str, bytes, bool]
#: a branch serve could not launch: (status, reason, headers)
Refusal = tuple[int, str, list[tuple[str, str]]]


class Media:
    """The media relay of one serve (see the module)."""

    def __init__(self, ctx: Context, settings: MediaSettings | None = None) -> None:
        self.ctx = ctx
        self.settings = settings = settings or MediaSettings()
        settings.validate()
        self.mode = settings.relay_mode
        self.rules = settings.rules()
        self.operator_flags = settings.flags()
        #: the rtpengines, once :meth:`start` opened them (None: none configured)
        self.relays: RelaySet | None = None
        #: anchored calls by Call-ID (insertion order: the oldest first)
        self.calls: dict[str, AnchoredCall] = {}
        #: flow -> the Call-IDs of its anchored calls (a lost connection ends them)
        self._by_flow: dict[Any, set[str]] = {}
        #: calls whose profiles differed with nothing to anchor them
        self.mismatches = 0
        #: the deletes and other commands still on their way
        self._pending: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        if not self.settings.rtpengine or self.relays is not None:
            return
        clients: list[NgClient] = []
        try:
            for url in self.settings.rtpengine:
                clients.append(await open_ng(url, timeout=self.settings.timeout))
        except BaseException:
            for client in clients:
                client.close()
            raise
        self.relays = RelaySet(clients, retry=self.settings.retry,
                               max_calls=self.settings.max_calls)
        logger.info('media relay: %s, %s (%s)', ', '.join(self.settings.rtpengine), self.mode,
                    'Kamailio-style flags given' if any(self.operator_flags.values())
                    else 'flags chosen per leg')

    async def close(self) -> None:
        for call in self.calls.values():
            if call.ack_timer is not None:
                call.ack_timer.cancel()
        for task in list(self._pending):
            task.cancel()
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        if self.relays is not None:
            self.relays.close()
            await self.relays.wait_closed()

    # -- profiles -------------------------------------------------------------------------
    def _override(self, aor: str, address: str | None) -> str | None:
        for rule in self.rules:
            if rule.matches(aor, address):
                return rule.profile
        return None

    def profile_of_binding(self, binding: Binding) -> str:
        """A callee's profile before it answers (see the module)."""
        flow = binding.connection
        address = _address(flow)
        override = self._override(binding.aor.lower(), address) if self.rules else None
        if override is not None:
            return override
        return _guess(flow, binding.contact)

    def profile_of_caller(self, flow: Flow, request: SIPMessage) -> str:
        """The caller's profile: its SDP's, else its flow's and Contact's."""
        if self.rules:
            try:
                aor = request.from_addr().uri.aor.lower()
            except SIPParseError:
                aor = ''
            override = self._override(aor, _address(flow))
            if override is not None:
                return override
        profile = sdp_profile(request.body)
        if profile is not None:
            return profile
        try:
            contact: NameAddr | None = NameAddr.parse(request.get('Contact') or '')
        except SIPParseError:
            contact = None
        return _guess(flow, contact)

    def _anchors(self, caller: str, callee: str) -> bool:
        return self.mode == 'always' or (self.mode == 'auto' and caller != callee)

    def _flags(self, towards: str, *, offer: bool, source: str) -> dict[str, Any]:
        mine = self.operator_flags.get(towards)
        if mine is not None:
            return dict(mine)
        return leg_flags(towards, offer=offer, source=source)

    # -- the fork's questions ----------------------------------------------------------
    def begin(self, flow: Flow, request: SIPMessage) -> AnchoredCall | None:
        """An INVITE is about to be forked: its call, or None when media is none of
        serve's business (SDP passes through, nothing to warn of)."""
        if request.method != 'INVITE' or self.relays is None or self.mode == 'never':
            return None
        call_id = request.get('Call-ID') or ''
        try:
            caller_tag = request.from_addr().tag or ''
        except SIPParseError:
            return None
        profile = self.profile_of_caller(flow, request)
        return AnchoredCall(call_id, caller_tag, flow, profile, late=not request.body)

    async def offers(self, call: AnchoredCall, request: SIPMessage, bindings: list[Binding],
                     new_branch: Callable[[], str]) -> tuple[list[Launch], list[Refusal]]:
        """What to launch towards ``bindings``: an ng ``offer`` for each branch to anchor
        (in parallel), the INVITE's SDP as it is for the others."""
        launches: list[Launch] = []
        refusals: list[Refusal] = []
        offers: list[tuple[Binding, str, str]] = []
        for binding in bindings:
            branch = new_branch()
            callee = self.profile_of_binding(binding)
            anchored = self._anchors(call.caller_profile, callee)
            call.legs[branch] = (binding.connection, callee, anchored)
            if anchored and not call.late:
                offers.append((binding, branch, callee))
            else:
                launches.append((binding, branch, request.body, anchored))
        if offers:
            if call.call_id not in self.calls:
                self._remember(call)
            results: list[Any]
            if len(offers) == 1:                # the usual case: no gather, no task
                _, branch, callee = offers[0]
                try:
                    results = [await self._offer(call, request, branch, callee)]
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - as gather's return_exceptions
                    results = [exc]
            else:
                results = await asyncio.gather(*(
                    self._offer(call, request, branch, callee) for _, branch, callee in offers),
                    return_exceptions=True)
            for (binding, branch, _), result in zip(offers, results, strict=True):
                if isinstance(result, BaseException):
                    if isinstance(result, asyncio.CancelledError):
                        raise result
                    del call.legs[branch]
                    peer_log.warning('media relay failed', '%s: no media relay for a call to '
                                     '%s: %s', call.call_id, binding.aor, result)
                    refusals.append((503, 'Service Unavailable (no media relay)', [
                        ('Retry-After', str(self.ctx.limits.retry_after))]))
                else:
                    launches.append((binding, branch, result, True))
        elif call.anchored and call.call_id not in self.calls:
            self._remember(call)                       # a late offer, anchored at the 2xx
        return launches, refusals

    async def _offer(self, call: AnchoredCall, request: SIPMessage, branch: str,
                     callee: str) -> bytes:
        return await self._ng_sdp(call, 'offer', self._flags(
            callee, offer=True, source=call.caller_profile), from_tag=call.caller_tag,
            to_tag=None, sdp=request.body, branch=branch)

    def rewrites(self, call: AnchoredCall, branch: str, response: SIPMessage) -> bool:
        """Whether ``response`` on ``branch`` must go through rtpengine before it is relayed
        (an 18x or 2xx with SDP on an anchored branch)."""
        leg = call.legs.get(branch)
        status = response.status or 0
        if leg is None or not leg[2] or not response.body or not 180 <= status < 300:
            return False
        # a late offer's offer comes in the 2xx, or in a reliable 18x (RFC 3262)
        return not call.late or status >= 200 or response.get('RSeq') is not None

    async def rewrite(self, call: AnchoredCall, branch: str, response: SIPMessage) -> None:
        """Run ``response``'s SDP through rtpengine: an ``answer`` to the INVITE's offer, or
        for a late offer the callee's ``offer``; on failure the SDP stays as it came (the
        call has no media, its signalling goes on)."""
        flow, callee, _ = call.legs[branch]
        try:
            to_tag = response.to_addr().tag or ''
        except SIPParseError:
            to_tag = ''
        found = sdp_profile(response.body)
        if to_tag:
            call.tags[branch] = to_tag
        what = 'the %d\'s SDP' % (response.status or 0)
        if call.late:
            source = found or callee
            sdp = await self._sdp(call, 'offer', self._flags(
                call.caller_profile, offer=True, source=source), what,
                from_tag=to_tag, to_tag=call.caller_tag, sdp=response.body)
            if sdp is not None:
                call.pending = (to_tag, call.caller_tag, source)
        else:
            sdp = await self._sdp(call, 'answer', self._flags(
                call.caller_profile, offer=False, source=callee), what,
                from_tag=call.caller_tag, to_tag=to_tag, sdp=response.body, branch=branch)
        if sdp is None:
            return
        response.body = sdp
        if (response.status or 0) >= 200 and to_tag:
            call.callee_tag, call.callee = to_tag, flow
            call.callee_profile = found or callee

    def fork_ended(self, call: AnchoredCall, winner: str | None) -> None:
        """The fork of ``call`` is over: a 2xx from ``winner`` went upstream (None: the
        INVITE failed)."""
        if call.call_id not in self.calls or self.calls[call.call_id] is not call:
            return
        leg = call.legs.get(winner) if winner is not None else None
        if leg is None or not leg[2]:
            self.end(call, 'the INVITE failed' if winner is None
                     else 'a branch without media relay answered')
            return
        call.state = 'answered'
        for branch, (_, _, anchored) in call.legs.items():
            if anchored and branch != winner:          # a losing branch goes alone
                self._spawn(self._delete_branch(call, branch))
        if call.callee is None:
            call.callee = leg[0]
        if call.caller is not None:
            self._index(call.caller, call)
        self._index(leg[0], call)
        call.ack_timer = asyncio.get_running_loop().call_later(ACK_WAIT, self._unacked, call)
        cluster = self.ctx.cluster
        relay = self.relays.relay_of(call.call_id) if self.relays is not None else None
        if cluster is not None and relay is not None and call.callee_tag:
            cluster.record_media(call.call_id, {
                'relay': show_address(relay.address), 'caller-tag': call.caller_tag,
                'caller-profile': call.caller_profile, 'callee-tag': call.callee_tag,
                'callee-profile': call.callee_profile or leg[1],
                'node': cluster.node}, SHARED_TTL)

    def _unacked(self, call: AnchoredCall) -> None:
        call.ack_timer = None
        if call.state == 'answered':
            logger.info('%s: no ACK for the 2xx within %g s: its media is released',
                        call.call_id, ACK_WAIT)
            self.end(call, 'no ACK')

    # -- the pipeline's media stage -------------------------------------------------------
    def in_dialog(self, flow: Flow, request: SIPMessage, route: Route) -> bool:
        """The ``media`` stage: an ACK, BYE, re-INVITE or UPDATE of an anchored call;
        ``route`` (in-dialog routing) takes a request whose SDP went through rtpengine
        first (the late offer's ACK, a new offer)."""
        call = self.calls.get(request.get('Call-ID') or '') if self.calls else None
        if call is not None:
            return self._in_call(call, flow, request, route)
        if (self.ctx.cluster is not None and self.relays is not None
                and request.method in SHARED_METHODS and 'tag=' in (request.get('To') or '')):
            self._spawn(self._from_cluster(flow, request, route))   # another node's call?
            return True
        return False

    async def _from_cluster(self, flow: Flow, request: SIPMessage, route: Route) -> None:
        """An in-dialog request of a call this node does not know: another node may have
        anchored it (``aiosip-ws:media:<Call-ID>``); then it goes on as one of ours, on
        the relay that call started on."""
        assert self.ctx.cluster is not None and self.relays is not None
        call_id = request.get('Call-ID') or ''
        fields = await self.ctx.cluster.media_of(call_id)
        call = self.calls.get(call_id)
        if call is None and fields is not None and self.relays.stick(
                call_id, fields.get('relay', '')):
            call = AnchoredCall(call_id, fields.get('caller-tag', ''), None,
                                fields.get('caller-profile', PLAIN), late=False)
            call.callee_tag = fields.get('callee-tag') or None
            call.callee_profile = fields.get('callee-profile') or PLAIN
            call.state = 'confirmed'
            call.node = fields.get('node', '')
            self._remember(call)
        if call is None or not self._in_call(call, flow, request, route):
            route(flow, request, None)

    def _in_call(self, call: AnchoredCall, flow: Flow, request: SIPMessage,
                 route: Route) -> bool:
        method = request.method
        if method == 'BYE':
            self.end(call, 'BYE')
            return False
        if method == 'ACK' and call.state == 'answered':          # the ACK of the 2xx
            call.state = 'confirmed'
            if call.ack_timer is not None:
                call.ack_timer.cancel()
                call.ack_timer = None
        if 'tag=' not in (request.get('To') or '') or not (call.callee_tag or call.tags):
            return False
        if method == 'ACK' or method == 'PRACK':
            if call.pending is not None and request.body:     # the answer to its offer
                self._spawn(self._answer_in_request(call, flow, request, route))
                return True
            if method == 'ACK':
                return False
        if request.body:                                       # a new offer
            self._spawn(self._new_offer(call, flow, request, route))
            return True
        if method == 'INVITE':                 # no offer: the 2xx offers, the ACK answers
            self._spawn(self._offer_in_answer(call, flow, request, route))
            return True
        return False

    async def _new_offer(self, call: AnchoredCall, flow: Flow, request: SIPMessage,
                         route: Route) -> None:
        """A re-INVITE or UPDATE with an offer in an anchored call: an ng ``offer`` from
        its sender (``from-tag``: the offerer's), then the 2xx's answer an ng ``answer``.
        When rtpengine does not take the offer: 500 with a Warning, nothing relayed."""
        tags = self._tags(flow, request)
        if tags is None:
            return
        from_tag, to_tag = tags
        offerer, answerer = call.profiles(from_tag)
        try:
            sdp = await self._ng_sdp(call, 'offer', self._flags(
                answerer, offer=True, source=offerer), from_tag=from_tag, to_tag=to_tag,
                sdp=request.body)
        except (AiosipWSError, OSError) as exc:
            peer_log.warning('media relay failed', '%s: rtpengine did not take the %s\'s '
                             'offer (%s): 500', call.call_id, request.method, exc)
            self.ctx.reply(flow, request, 500, 'Server Internal Error (media relay)', headers=[
                ('Warning', '399 %s "the media relay did not take the offer"'
                 % flow.via_host)])
            return
        request.body = sdp

        async def answer(response: SIPMessage) -> None:
            sdp = await self._sdp(call, 'answer', self._flags(
                offerer, offer=False, source=answerer), 'the answer to the %s'
                % request.method, from_tag=from_tag, to_tag=to_tag, sdp=response.body)
            if sdp is not None:
                response.body = sdp
        route(flow, request, answer)

    async def _offer_in_answer(self, call: AnchoredCall, flow: Flow, request: SIPMessage,
                               route: Route) -> None:
        """A re-INVITE without SDP: its 2xx carries the offer (an ng ``offer`` from the
        party that answers it: ``from-tag`` its tag), the ACK the answer."""
        tags = self._tags(flow, request)
        if tags is None:
            return
        sender, other = tags
        answerer, offerer = call.profiles(sender)

        async def offer(response: SIPMessage) -> None:
            sdp = await self._sdp(call, 'offer', self._flags(
                answerer, offer=True, source=offerer), 'the offer in the 2xx to a re-INVITE',
                from_tag=other, to_tag=sender, sdp=response.body)
            if sdp is not None:
                response.body = sdp
                call.pending = (other, sender, offerer)
        route(flow, request, offer)

    async def _answer_in_request(self, call: AnchoredCall, flow: Flow, request: SIPMessage,
                                 route: Route) -> None:
        """The ACK or PRACK that answers an offer made in a response."""
        assert call.pending is not None
        offerer_tag, answerer_tag, offerer = call.pending
        call.pending = None
        _, answerer = call.profiles(offerer_tag)
        sdp = await self._sdp(call, 'answer', self._flags(
            offerer, offer=False, source=answerer), 'the %s\'s SDP' % request.method,
            from_tag=offerer_tag, to_tag=answerer_tag, sdp=request.body)
        if sdp is not None:
            request.body = sdp
        route(flow, request, None)

    async def _sdp(self, call: AnchoredCall, command: str, flags: dict[str, Any], what: str,
                   *, from_tag: str, to_tag: str, sdp: bytes, branch: str | None = None
                   ) -> bytes | None:
        """:meth:`_ng_sdp`, or None when rtpengine did not take it (a rate-limited line:
        the message goes on as it came, the call loses its media, its signalling goes
        on)."""
        try:
            return await self._ng_sdp(call, command, flags, from_tag=from_tag,
                                      to_tag=to_tag, sdp=sdp, branch=branch)
        except (AiosipWSError, OSError) as exc:
            peer_log.warning('media relay failed', '%s: rtpengine did not take %s (%s): '
                             'relayed as it came, without media', call.call_id, what, exc)
            return None

    async def _ng_sdp(self, call: AnchoredCall, command: str, flags: dict[str, Any], *,
                      from_tag: str, to_tag: str | None, sdp: bytes,
                      branch: str | None = None) -> bytes:
        """rtpengine's SDP for an ``offer`` or ``answer`` of ``call`` (``from-tag``: the
        offerer's; ``via-branch``: a fork branch's)."""
        arguments = dict(flags, **{'from-tag': from_tag, 'sdp': sdp})
        if to_tag is not None:
            arguments['to-tag'] = to_tag
        if branch is not None:
            arguments['via-branch'] = branch
        return _sdp_of(await self._command(command, call, arguments))

    def _tags(self, flow: Flow, request: SIPMessage) -> tuple[str, str] | None:
        """An in-dialog request's From and To tags (None: answered 400)."""
        try:
            return request.from_addr().tag or '', request.to_addr().tag or ''
        except SIPParseError as exc:
            self.ctx.bad_request(flow, request, exc)
            return None

    def ended_elsewhere(self, call_id: str) -> None:
        """Another node of the cluster deleted ``call_id`` on its relay: forget it here
        without a delete of our own."""
        call = self.calls.get(call_id)
        if call is not None:
            self._forget(call, 'ended on another node')

    def flow_closed(self, flow: Flow) -> None:
        """A leg's connection is lost: its calls' media go."""
        for call_id in self._by_flow.pop(flow, ()):
            call = self.calls.get(call_id)
            if call is not None:
                self.end(call, 'a connection of the call was lost')

    # -- ending ---------------------------------------------------------------------------
    def end(self, call: AnchoredCall, why: str) -> None:
        """Forget ``call`` and ``delete`` it on its relay (in a task of its own)."""
        if call.ended:
            return
        call.ended = True
        if call.ack_timer is not None:
            call.ack_timer.cancel()
            call.ack_timer = None
        if self.calls.get(call.call_id) is call:
            del self.calls[call.call_id]
        for flow in (call.caller, call.callee):
            calls = self._by_flow.get(flow) if flow is not None else None
            if calls is not None:
                calls.discard(call.call_id)
                if not calls:
                    del self._by_flow[flow]
        if self.relays is not None and self.relays.relay_of(call.call_id) is not None:
            logger.debug('%s: deleting its media (%s)', call.call_id, why)
            self._spawn(self._delete(call, why))
            cluster = self.ctx.cluster
            if cluster is not None:
                cluster.forget_media(call.call_id)
                if call.node and call.node != cluster.node:   # its own entry goes too
                    cluster.publish(call.node, {'type': 'media-ended', 'call-id': call.call_id})

    async def _delete(self, call: AnchoredCall, why: str) -> None:
        try:
            await self._command('delete', call, {'from-tag': call.caller_tag})
        except MediaRelayError as exc:
            if 'nknown call' in str(exc):            # another node deleted it first
                logger.debug('%s: already deleted: %s', call.call_id, exc)
                return
            peer_log.warning('media delete failed', '%s: rtpengine did not delete the call '
                             '(%s, after %s): its --timeout will', call.call_id, exc, why)
        except (AiosipWSError, OSError) as exc:
            peer_log.warning('media delete failed', '%s: rtpengine did not delete the call '
                             '(%s, after %s): its --timeout will', call.call_id, exc, why)

    async def _delete_branch(self, call: AnchoredCall, branch: str) -> None:
        arguments = {'from-tag': call.caller_tag, 'via-branch': branch}
        if branch in call.tags:
            arguments['to-tag'] = call.tags[branch]
        try:
            await self._command('delete', call, arguments)
        except (AiosipWSError, OSError) as exc:
            peer_log.warning('media delete failed', '%s: rtpengine did not delete a losing '
                             'branch (%s): it goes with the call', call.call_id, exc)

    # -- helpers --------------------------------------------------------------------------
    async def _command(self, command: str, call: AnchoredCall,
                       arguments: Mapping[str, Any]) -> dict[str, Any]:
        """An ng command for ``call``, counted (:class:`MediaCommand`); a ``delete``'s
        reply is read briefly (its statistics are not needed)."""
        if self.relays is None:
            raise MediaRelayError('no --rtpengine is configured')
        events = self.ctx.events
        started = time.monotonic()
        outcome = 'ok'
        try:
            return await self.relays.command(call.call_id, dict(arguments, command=command),
                                             brief=command == 'delete')
        except MediaRelayError as exc:
            outcome = 'timeout' if 'no rtpengine answers' in str(exc) else 'error'
            raise
        except BaseException:
            outcome = 'error'
            raise
        finally:
            if MediaCommand in events.wanted:
                events.emit(MediaCommand, command, call.call_id, outcome,
                            time.monotonic() - started)

    def _remember(self, call: AnchoredCall) -> None:
        calls = self.calls
        old = calls.get(call.call_id)
        if old is not None and old is not call:
            self.end(old, 'a new INVITE with its Call-ID')
        calls[call.call_id] = call
        while len(calls) > self.settings.max_calls:
            oldest = next(iter(calls.values()))
            logger.info('%s forgotten: more than %d anchored calls (rtpengine\'s --timeout '
                        'ends its media)', oldest.call_id, self.settings.max_calls)
            self._forget(oldest, 'forgotten')

    def _forget(self, call: AnchoredCall, why: str) -> None:
        """``call`` ended without a delete of ours (over ``max_calls``; deleted by another
        node)."""
        relays, self.relays = self.relays, None            # end() deletes nothing then
        try:
            self.end(call, why)
        finally:
            self.relays = relays
        if relays is not None:
            relays.forget(call.call_id)

    def _index(self, flow: Flow, call: AnchoredCall) -> None:
        self._by_flow.setdefault(flow, set()).add(call.call_id)

    def mismatched(self, flow: Flow, request: SIPMessage, bindings: list[Binding]
                   ) -> tuple[list[Binding], Refusal | None]:
        """Without a media relay: the bindings an INVITE with SDP may go to, and the 488 of
        those refused (``--media-mismatch refuse``).  Each binding whose profile differs
        from the caller's is one rate-limited WARNING and counts in
        ``aiosip_ws_media_mismatch``."""
        if self.mode != 'never' or not request.body or request.method != 'INVITE':
            return bindings, None
        caller = self.profile_of_caller(flow, request)
        kept: list[Binding] = []
        refusal: Refusal | None = None
        for binding in bindings:
            callee = self.profile_of_binding(binding)
            if callee == caller or self.relays is not None:
                kept.append(binding)
                continue
            self.mismatches += 1
            call_id = request.get('Call-ID') or ''
            events = self.ctx.events
            if MediaCommand in events.wanted:
                events.emit(MediaCommand, 'mismatch', call_id, self.settings.mismatch, 0.0)
            mismatch_log.warning('media mismatch', '%s: a %s caller and a %s callee (%s) without '
                             'a media relay: they will not hear each other (--rtpengine; '
                             '--media-mismatch refuse answers 488)', call_id, caller, callee,
                             binding.aor)
            if self.settings.mismatch == 'refuse':
                refusal = (488, 'Not Acceptable Here', [
                    ('Warning', '399 %s "%s"' % (flow.via_host, MISMATCH_WARNING))])
            else:
                kept.append(binding)
        return kept, refusal

    def _spawn(self, coroutine: Awaitable[Any]) -> None:
        task = self.ctx.spawn(coroutine)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)


def _address(flow: Flow) -> str | None:
    address = getattr(flow, 'remote_addr', None)
    return str(address[0]) if address else None


def _guess(flow: Flow, contact: NameAddr | None) -> str:
    """WebRTC over a WebSocket or with ``+sip.ice`` in the Contact, else plain."""
    if flow.transport_name in ('ws', 'wss'):
        return WEBRTC
    if contact is not None and contact.has_param('+sip.ice'):
        return WEBRTC
    return PLAIN


def _sdp_of(reply: Mapping[str, Any]) -> bytes:
    sdp = reply.get('sdp')
    if isinstance(sdp, str):
        return sdp.encode('utf-8', 'surrogateescape')
    if isinstance(sdp, bytes):
        return sdp
    raise MediaRelayError('rtpengine\'s reply has no SDP')

