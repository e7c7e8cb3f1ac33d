"""The ``aiosip-ws`` command line (also ``python -m aiosip_ws``).

``aiosip-ws serve`` runs the WebSocket registrar and relay of
:mod:`aiosip_ws.relay` until Ctrl-C or SIGTERM, then closes every client
connection with 1001 and exits 0.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import ssl
import sys
from typing import Sequence

from . import __version__
from .errors import AiosipWSError
from .options import DEFAULT_MAX_SIZE, ServerOptions

__all__ = ['main', 'build_parser']

logger = logging.getLogger('aiosip_ws.cli')


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='aiosip-ws', description='SIP over WebSocket (RFC 7118) '
                                     'tools built on aiosip.')
    parser.add_argument('--version', action='version', version='aiosip-ws %s' % __version__)
    commands = parser.add_subparsers(dest='command', metavar='COMMAND')
    commands.required = True

    serve = commands.add_parser('serve', help='run a WebSocket SIP registrar and relay',
                                description='Run a SIP WebSocket registrar and relay: clients '
                                'REGISTER over ws:// or wss://, requests to a registered AOR are '
                                'relayed over that client\'s connection.')
    serve.add_argument('--listen', action='append', metavar='URL',
                       help='ws://HOST:PORT/PATH or wss://... to listen on (repeatable; default '
                       'ws://127.0.0.1:8080/). A path other than / must match exactly.')
    serve.add_argument('--tls-cert', metavar='FILE', help='PEM certificate chain for wss://')
    serve.add_argument('--tls-key', metavar='FILE', help='PEM private key for wss://')
    serve.add_argument('--allow-origin', action='append', metavar='ORIGIN',
                       help='allowed Origin (repeatable); others get HTTP 403. Default: any')
    serve.add_argument('--max-size', type=int, default=DEFAULT_MAX_SIZE, metavar='BYTES',
                       help='largest WebSocket message (default %(default)s); bigger: close 1009')
    serve.add_argument('--ping-interval', type=float, default=20.0, metavar='SECONDS',
                       help='WebSocket Ping interval, 0 to disable (default %(default)s)')
    serve.add_argument('--crlf-ping-interval', type=float, default=0.0, metavar='SECONDS',
                       help='send RFC 5626 CRLF pings this often, 0 to disable (default 0)')
    serve.add_argument('--log-level', default='INFO',
                       choices=['DEBUG', 'INFO', 'WARNING', 'ERROR'],
                       help='log level (default %(default)s); DEBUG also logs every SIP message')
    serve.set_defaults(func=_serve)
    return parser


def _server_options(args: argparse.Namespace) -> ServerOptions:
    context = None
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            raise SystemExit('aiosip-ws serve: --tls-cert and --tls-key go together')
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(args.tls_cert, args.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise SystemExit('aiosip-ws serve: cannot load the TLS certificate/key: %s' % exc)
    return ServerOptions(ssl=context, allowed_origins=args.allow_origin, max_size=args.max_size,
                         ping_interval=args.ping_interval or None,
                         crlf_ping_interval=args.crlf_ping_interval or None)


async def _serve(args: argparse.Namespace) -> int:
    from .relay import RelayServer
    urls = args.listen or ['ws://127.0.0.1:8080/']
    base = _server_options(args)
    server = RelayServer(server_options=base)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        for url in urls:
            if url.lower().startswith('wss:') and base.ssl is None:
                raise SystemExit('aiosip-ws serve: %s needs --tls-cert and --tls-key' % url)
        try:
            listeners = await server.start(*urls)
        except OSError as exc:
            print('aiosip-ws serve: cannot listen: %s' % exc, file=sys.stderr)
            return 2
        for listener in listeners:
            print('aiosip-ws serve: listening on %s' % listener.bound_url, flush=True)
        await stop.wait()
        print('aiosip-ws serve: shutting down', flush=True)
        await server.close()
        left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        if left:
            logger.error('tasks left behind at shutdown: %r', left)
            return 1
        print('aiosip-ws serve: stopped cleanly', flush=True)
        return 0
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, getattr(args, 'log_level', 'INFO')),
                        format='%(asctime)s %(levelname)s %(name)s: %(message)s')
    if getattr(args, 'log_level', 'INFO') != 'DEBUG':
        logging.getLogger('websockets').setLevel(logging.WARNING)
    try:
        return asyncio.run(args.func(args))
    except AiosipWSError as exc:
        print('aiosip-ws %s: %s' % (args.command, exc), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
