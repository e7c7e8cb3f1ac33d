"""What the client commands share (``register``, ``message``, ``options``, ``call``,
``answer`` ...): their client options, the DNS resolver of ``--dns``, and stopping on
SIGINT/SIGTERM."""
from __future__ import annotations

import argparse
import asyncio
import signal
import ssl
from collections.abc import Awaitable
from typing import Any, TypeVar

from ..errors import ConfigurationError, Interrupted
from ..options import ClientOptions

__all__ = ['client_options', 'resolver', 'install_stop', 'remove_stop', 'unless_stopped']

T = TypeVar('T')


def client_options(args: argparse.Namespace, **extra: Any) -> ClientOptions:
    context = None
    if args.target.lower().startswith(('wss:', 'sips:', 'tls:')) or args.ca_file or args.insecure:
        if args.insecure:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        else:
            try:
                context = ssl.create_default_context(cafile=args.ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigurationError('cannot load --ca-file %s: %s' % (args.ca_file, exc)) from exc
    return ClientOptions(ssl=context, origin=args.origin, open_timeout=args.timeout,
                         transaction_timeout=args.timeout, **extra)


def resolver(args: argparse.Namespace) -> Any:
    if not args.dns:
        return None
    from ..transport.discovery import Resolver
    return Resolver([args.dns])


def install_stop(stop: asyncio.Event) -> list[int]:
    loop = asyncio.get_running_loop()
    installed = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, stop.set)
            installed.append(signum)
        except (NotImplementedError, RuntimeError):          # not the main thread
            pass
    return installed


def remove_stop(installed: list[int]) -> None:
    loop = asyncio.get_running_loop()
    for signum in installed:
        loop.remove_signal_handler(signum)


async def unless_stopped(awaitable: Awaitable[T], stop: asyncio.Event) -> T:
    """Await ``awaitable``; if ``stop`` is set first, cancel it and raise :class:`Interrupted`."""
    task = asyncio.ensure_future(awaitable)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        if not task.done():
            task.cancel()
        await asyncio.gather(stopper, return_exceptions=True)
    if not task.done() or task.cancelled():
        await asyncio.gather(task, return_exceptions=True)
        raise Interrupted()
    return task.result()
