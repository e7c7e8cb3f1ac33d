"""``aiosip-ws serve``: the registrar (location service) and the relay.

The API of routing apps (``aiosip-ws serve --app``, docs/routing.rst) is importable from
here: :class:`App`, :class:`Request`, :class:`Response`, :class:`Reply`, :class:`Relay`,
:class:`Target`, :class:`Registered`, :class:`Identity` and :func:`aor_key`
(:mod:`aiosip_ws.serve.routing`).
"""
from .routing import (
    App,
    Identity,
    Registered,
    Relay,
    Reply,
    Request,
    Response,
    Target,
    aor_key,
)

__all__ = ['App', 'Identity', 'Registered', 'Relay', 'Reply', 'Request', 'Response', 'Target',
           'aor_key']
