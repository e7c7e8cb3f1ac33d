"""The REGISTER stage: bindings into the :class:`~aiosip_ws.serve.registrar.Registrar`
(or the cluster's shared one), the ``.invalid`` Contact hosts into the Contact index."""
from __future__ import annotations

import logging
from collections.abc import Awaitable

from ..core.codec import SIPMessage
from ..core.sipuri import NameAddr
from ..errors import SIPParseError
from .context import Context
from .flow import Flow
from .registrar import RegisterResult, Registrar

__all__ = ['Registration', 'invalid_hosts']

logger = logging.getLogger(__name__)


def invalid_hosts(request: SIPMessage) -> set[str]:
    """The ``.invalid`` hosts of a request's Contacts (RFC 7118 Appendix B.1); a Contact
    that cannot be parsed has none (the registrar answers 400 for it)."""
    hosts = set()
    for value in request.get_all('Contact'):
        try:
            host = NameAddr.parse(value).uri.host.lower()    # parsed once: NameAddr remembers
        except SIPParseError:
            continue
        if host.endswith('.invalid'):
            hosts.add(host)
    return hosts


class Registration:
    """See the module."""

    def __init__(self, ctx: Context, registrar: Registrar) -> None:
        self.ctx = ctx
        self.registrar = registrar

    def register(self, flow: Flow, request: SIPMessage) -> Awaitable[None] | None:
        """The route of REGISTER."""
        hosts = invalid_hosts(request)
        contacts = self.ctx.contacts
        for host in hosts:
            # A `.invalid` host names one client's connection for in-dialog routing: only
            # an RFC 5626 flow replacement may take it from another live connection.
            owner = contacts.get(host)
            if (owner is not None and owner is not flow and owner.is_open
                    and not self.registrar.replaces_flow(request, owner)):
                logger.info('%r: REGISTER refused: Contact host %s belongs to %r', flow, host,
                            owner)
                self.ctx.reply(flow, request, 403, 'Forbidden (Contact host %s is in use by '
                               'another connection)' % host)
                return None
        identity = flow.flow_state.identity
        # With authentication the user owns the AOR's bindings, whichever connection
        # made them; a trusted peer (user None) is held to its connection like anyone.
        authenticated = identity is not None and identity.user is not None
        if self.ctx.cluster is not None:
            return self._register_shared(flow, request, hosts, authenticated)
        self._registered(flow, request, hosts,
                         self.registrar.register(request, flow, authenticated=authenticated))
        return None

    async def _register_shared(self, flow: Flow, request: SIPMessage, hosts: set[str],
                               authenticated: bool) -> None:
        assert self.ctx.cluster is not None
        result = await self.ctx.cluster.register(request, flow, authenticated=authenticated)
        self._registered(flow, request, hosts, result)

    def _registered(self, flow: Flow, request: SIPMessage, hosts: set[str],
                    result: RegisterResult) -> None:
        if result.status == 200:
            for host in hosts:
                self.ctx.contacts.claim(host, flow)
            if logger.isEnabledFor(logging.INFO):
                logger.info('REGISTER %s from %s: %d binding(s)', request.get('To'),
                            flow.remote_addr, len(result.headers))
        self.ctx.reply(flow, request, result.status, result.reason, headers=result.headers)
