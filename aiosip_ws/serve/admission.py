"""Who may send what: the request rate of each flow, and the identity a request acts as
(its handshake token's, or its Digest credentials', RFC 3261 §22)."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from ..core.codec import SIPMessage
from ..core.ratelimit import TokenBucket
from ..errors import CredentialsPending, CredentialsUnavailable, SIPParseError
from .auth import DigestAuthenticator, Identity, aor_key
from .context import Context
from .flow import Flow

__all__ = ['Admission']

logger = logging.getLogger(__name__)


class Admission:
    """The rate stage and the identity stage of the pipeline."""

    def __init__(self, ctx: Context, auth: DigestAuthenticator | None, *,
                 resume: Callable[[Flow, SIPMessage], None] | None = None) -> None:
        self.ctx = ctx
        #: what continues a request whose identity was settled later (in a cluster, the
        #: nonce count is checked against every node's first)
        self.resume = resume
        #: Digest authentication of REGISTERs and of requests from local domains, or None
        self.auth = auth
        #: checks a request again from the identity stage (its user was looked up)
        self.again: Callable[[Flow, SIPMessage], None] | None = None

    def over_rate(self, flow: Flow, request: SIPMessage) -> bool:
        """A token bucket per flow (``max_requests_per_second``, ``burst``): over it a
        request gets 503 (True: answered); a flow over it for ``rate_limit_grace`` s is
        closed (1008).  ACK and CANCEL always pass."""
        limits = self.ctx.limits
        rate = limits.max_requests_per_second
        if rate is None or request.method in ('ACK', 'CANCEL'):
            return False
        now = asyncio.get_running_loop().time()
        state = flow.flow_state
        bucket = state.bucket
        if bucket is None:
            bucket = state.bucket = TokenBucket(rate, limits.burst, now)
        if bucket.take(now):
            if state.over_since is not None and now - state.last_refusal > 1.0:
                state.over_since = None                 # a whole second without a refusal
            return False
        state.last_refusal = now
        if state.over_since is None:
            state.over_since = now
            logger.warning('%r: over %g requests per second: answering 503', flow, rate)
        elif now - state.over_since > limits.rate_limit_grace:
            if not state.rate_closing:
                state.rate_closing = True
                logger.warning('%r: over the request rate for %g s: closing with 1008', flow,
                               limits.rate_limit_grace)
                close = getattr(flow, 'close', None)
                if close is not None:
                    self.ctx.spawn(close(1008, 'request rate limit exceeded'))
            return True
        self.ctx.busy(flow, request, 'over %g requests per second' % rate)
        return True

    def identify(self, flow: Flow, request: SIPMessage) -> bool:
        """Set the identity the request acts as (its flow's ``identity``): the token its
        handshake carried, or its Digest credentials when it needs them.  True when it
        has been answered instead (a challenge, 403, 400)."""
        state = flow.flow_state
        state.identity = None
        token_identity = getattr(flow, 'identity', None)
        if isinstance(token_identity, Identity):          # bound by its handshake's token
            if not self.owned_by(flow, request, token_identity):
                return True
            state.identity = token_identity
            return False
        if self.auth is not None and self.auth.needs_challenge(request, flow.remote_addr[0]):
            try:
                identity = self.authenticate(flow, request)
            except CredentialsPending as pending:     # the app's store is asked first
                self.ctx.spawn(self._after_lookup(flow, request, pending))
                return True
            except CredentialsUnavailable as exc:
                self.ctx.busy(flow, request, 'the user store: %s' % exc)
                return True
            if identity is None:
                return True
            state.identity = identity     # for the route, read before it awaits
            if state.nc_claim is not None and self.ctx.cluster is not None:
                self.ctx.spawn(self._after_shared_nonce_count(flow, request))
                return True
        return False

    async def _after_lookup(self, flow: Flow, request: SIPMessage,
                            pending: CredentialsPending) -> None:
        await pending.store.wait(pending.name)    # failed: credentials get 503 then
        if self.again is not None and flow.is_open:
            self.again(flow, request)

    async def _after_shared_nonce_count(self, flow: Flow, request: SIPMessage) -> None:
        if await self.shared_nonce_count(flow, request) and self.resume is not None:
            self.resume(flow, request)

    def authenticate(self, flow: Flow, request: SIPMessage) -> Identity | None:
        """Digest-check ``request`` (which needs it) and its AOR: the identity, or None
        when it has been answered (401/407 challenge, 403, 400)."""
        assert self.auth is not None
        state = flow.flow_state
        state.nc_claim = None
        outcome = self.auth.check(request, state)
        if outcome.nonce is not None:
            state.nc_claim = (outcome.nonce, outcome.nc)
        if outcome.failed:
            self.ctx.metrics.auth_failures.inc()
        if outcome.identity is None:
            self.ctx.reply(flow, request, outcome.status, outcome.reason,
                           headers=outcome.headers)
            return None
        identity = outcome.identity
        if not self.owned_by(flow, request, identity):
            return None
        if request.method != 'REGISTER':      # credentials for our realm end here (§22.3)
            realm = 'realm="%s"' % self.auth.realm
            request.headers = [(k, v) for k, v in request.headers
                               if not (k == 'Proxy-Authorization' and realm in v)]
        return identity

    async def shared_nonce_count(self, flow: Flow, request: SIPMessage) -> bool:
        """In a cluster, the nonce count is checked against every node's (a replay to
        another node is refused as one here would be).  False: refused and answered."""
        cluster = self.ctx.cluster
        state = flow.flow_state
        claim, state.nc_claim = state.nc_claim, None
        identity = state.identity
        if cluster is None or claim is None or self.auth is None or identity is None:
            return True
        if await cluster.claim_nonce_count(*claim, lifetime=self.auth.nonce_lifetime):
            state.identity = identity
            return True
        self.ctx.metrics.auth_failures.inc()
        outcome = self.auth.replayed(request, state, identity.user or '')
        self.ctx.reply(flow, request, outcome.status, outcome.reason, headers=outcome.headers)
        return False

    def owned_by(self, flow: Flow, request: SIPMessage, identity: Identity) -> bool:
        """The AOR a request acts for (REGISTER: To; others: From) belongs to ``identity``;
        if not, it has been answered 403."""
        try:
            name = request.to_addr() if request.method == 'REGISTER' else request.from_addr()
        except SIPParseError as exc:
            self.ctx.bad_request(flow, request, exc)
            return False
        aor = aor_key(name.uri)
        if identity.owns(aor):
            return True
        logger.info('%r: %s refused: authenticated as %s, which does not own %s', flow,
                    request.method, identity.user, aor)
        self.ctx.reply(flow, request, 403, 'Forbidden (%s is not an address of %s)'
                       % (aor, identity.user))
        return False
