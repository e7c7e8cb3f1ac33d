"""Connecting to a SIP WebSocket server from a URL or a SIP URI: the one place where
RFC 3263 discovery (:mod:`.discovery`) meets the WebSocket client (:mod:`.websocket`).

A ``ws://``/``wss://`` URL is opened as it is.  A ``sip:``/``sips:`` URI is resolved
(NAPTR ``SIP+D2W``/``SIPS+D2W``, SRV, A/AAAA) and its targets are tried in order
until one connects (RFC 3263 §4.3, RFC 7118 §5.5).
"""
from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from ..core.grammar import is_sip_uri
from ..options import ClientOptions
from .discovery import Resolver, Target, connect_first
from .websocket import ConnectionHandler, WSConnection, open_connection

__all__ = ['open_target', 'connect']

_log = logging.getLogger(__name__)

T = TypeVar('T')

#: opens one WebSocket URL with extra ``websockets`` connect keyword arguments
Opener = Callable[[str, dict[str, Any]], Awaitable[T]]


async def open_target(target: str | Sequence[Target], opener: Opener[T], *,
                      options: ClientOptions, resolver: Resolver | None = None,
                      connect_kwargs: dict[str, Any] | None = None,
                      logger: logging.Logger | None = None) -> tuple[Target | None, T]:
    """Run ``opener(url, kwargs)`` on ``target``: a URL, a SIP URI or resolved targets.

    ``kwargs`` carry what a resolved target needs (socket address, TLS name, the
    client's TLS context and proxy setting) plus ``connect_kwargs``.  Returns the
    target that connected (None for a plain URL) and what ``opener`` returned.

    :raises DiscoveryError: no target was found or none connected.
    """
    log = logger or _log
    extra = dict(connect_kwargs or {})
    if isinstance(target, str) and not is_sip_uri(target):
        return None, await opener(target, extra)
    targets = (await (resolver or Resolver()).resolve(target) if isinstance(target, str)
               else target)

    async def attempt(found: Target) -> T:
        kwargs = found.connect_kwargs(ssl=options.ssl)
        if options.proxy is not None:
            kwargs['proxy'] = options.proxy
        kwargs.update(extra)
        return await opener(found.url, kwargs)

    found, result = await connect_first(targets, attempt, logger=log)
    log.info('%s: connected to %s', target if isinstance(target, str) else 'targets',
             found.describe())
    return found, result


async def connect(target: str | Sequence[Target], handler: ConnectionHandler,
                  options: ClientOptions | None = None, *, resolver: Resolver | None = None,
                  connect_kwargs: dict[str, Any] | None = None,
                  logger: logging.Logger | None = None) -> WSConnection:
    """Open a SIP WebSocket connection to ``target`` (URL, SIP URI or resolved targets)."""
    options = options or ClientOptions()

    async def opener(url: str, kwargs: dict[str, Any]) -> WSConnection:
        return await open_connection(url, handler, options, connect_kwargs=kwargs)

    _, conn = await open_target(target, opener, options=options, resolver=resolver,
                                connect_kwargs=connect_kwargs, logger=logger)
    return conn
