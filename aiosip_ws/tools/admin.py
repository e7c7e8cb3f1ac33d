"""``aiosip-ws trace URL`` and ``aiosip-ws admin URL ACTION``: a running serve's admin
WebSocket (:mod:`aiosip_ws.serve.admin`) from the command line.

Both open it with the token of ``--token`` (default ``$AIOSIP_WS_ADMIN_TOKEN``) in an
``Authorization: Bearer`` header.

``trace`` asks for the messages that match ``--aor``, ``--address``, ``--call-id`` and
``--method``, and prints each: a line saying when, which way, over what, from where to
where, then the message (``--json``: one JSON object per line, as serve sent it).
``--pcap FILE`` also writes them to a pcap file Wireshark and tshark read
(:mod:`aiosip_ws.core.pcap`).  It stops on Ctrl-C or SIGTERM, after ``--count``
messages or ``--duration`` seconds, or when serve closes.

``admin`` runs one action: ``connections`` (a table, or ``--json``), ``close ID``
(``--code``, ``--reason``), ``unbind AOR`` (``--contact``), ``drain`` (``--window``), ``reload`` (what
SIGHUP does).

Exit status: 0; 1 when serve refused, could not be reached or answered an error; 2 for
a usage error.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime
import json
import sys
from typing import IO, Any

from ..core.pcap import file_header, record
from ..errors import ConfigurationError, TransportError
from .common import client_options, install_stop, remove_stop

__all__ = ['trace_command', 'add_trace_arguments', 'admin_command', 'add_admin_arguments']

SUBPROTOCOL = 'aiosip-ws.admin'


def _admin_arguments(parser: argparse.ArgumentParser) -> None:
    """What ``trace`` and ``admin`` share: where serve is and how to get in."""
    parser.add_argument('target', metavar='URL',
                        help='a listening URL of the serve (ws:// or wss://)')
    parser.add_argument('--token', metavar='TOKEN',
                        help='serve\'s --admin-token (default: $AIOSIP_WS_ADMIN_TOKEN)')
    parser.add_argument('--timeout', type=float, default=10.0, metavar='SECONDS',
                        help='bound on connecting and on an answer (default %(default)s)')
    parser.add_argument('--ca-file', metavar='FILE', help='CA certificates (PEM) for wss://')
    parser.add_argument('--insecure', action='store_true',
                        help='wss:// without certificate verification')
    parser.add_argument('--origin', metavar='ORIGIN', help=argparse.SUPPRESS)
    parser.add_argument('--log-level', default='WARNING',
                        choices=['DEBUG', 'INFO', 'WARNING', 'ERROR'],
                        help='log level (default %(default)s)')


def add_admin_arguments(parser: argparse.ArgumentParser) -> None:
    _admin_arguments(parser)
    parser.add_argument('action', choices=('connections', 'close', 'unbind', 'drain',
                                           'reload'),
                        help='what to do')
    parser.add_argument('subject', nargs='?', metavar='ID|AOR',
                        help='close: the connection\'s id (see connections); unbind: the AOR')
    parser.add_argument('--code', type=int, default=1000,
                        help='close: the WebSocket close code (default %(default)s)')
    parser.add_argument('--reason', default='', help='close: the close reason')
    parser.add_argument('--contact', metavar='URI',
                        help='unbind: only the binding with this Contact URI')
    parser.add_argument('--window', type=float, default=30.0, metavar='SECONDS',
                        help='drain: spread the clients\' closes over this long '
                        '(default %(default)s)')
    parser.add_argument('--json', action='store_true', help='print serve\'s answer as JSON')


def add_trace_arguments(parser: argparse.ArgumentParser) -> None:
    _admin_arguments(parser)
    parser.add_argument('--aor', metavar='AOR',
                        help='only messages from, to or for this user@host (From, To, '
                        'Request-URI)')
    parser.add_argument('--address', metavar='IP',
                        help='only messages exchanged with this peer address')
    parser.add_argument('--call-id', metavar='ID', help='only messages of this Call-ID')
    parser.add_argument('--method', metavar='METHOD',
                        help='only requests of this method and their responses')
    parser.add_argument('--json', action='store_true',
                        help='one JSON object per message and per loss report')
    parser.add_argument('--pcap', metavar='FILE',
                        help='also write the messages to FILE (pcap: each message one '
                        'UDP datagram with its real addresses and ports)')
    parser.add_argument('--count', type=int, metavar='N', help='stop after N messages')
    parser.add_argument('--duration', type=float, metavar='SECONDS',
                        help='stop after this long')


async def _open(args: argparse.Namespace) -> Any:
    """The admin WebSocket, or None (what went wrong printed)."""
    import os

    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus
    token = args.token or os.environ.get('AIOSIP_WS_ADMIN_TOKEN')
    if not token:
        raise ConfigurationError('give serve\'s admin token: --token or $AIOSIP_WS_ADMIN_TOKEN')
    if not args.target.lower().startswith(('ws://', 'wss://')):
        raise ConfigurationError('%r: give a ws:// or wss:// URL serve listens on'
                                 % args.target)
    options = client_options(args)
    try:
        return await asyncio.wait_for(connect(
            args.target, subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
            additional_headers={'Authorization': 'Bearer ' + token},
            ssl=options.ssl, proxy=None, open_timeout=None, max_size=None), args.timeout)
    except InvalidStatus as exc:
        response = exc.response
        reason = response.body.decode('utf-8', 'replace').strip() if response.body else ''
        print('aiosip-ws %s: serve refused: HTTP %d %s' % (args.command, response.status_code,
                                                          reason), file=sys.stderr)
    except (OSError, asyncio.TimeoutError, TransportError) as exc:
        print('aiosip-ws %s: cannot reach %s: %s' % (args.command, args.target,
                                                     exc or 'timed out'), file=sys.stderr)
    return None


async def admin_command(args: argparse.Namespace) -> int:
    request: dict[str, Any] = {'action': args.action, 'id': 1}
    if args.action in ('close', 'unbind'):
        if not args.subject:
            raise ConfigurationError('%s needs %s' % (args.action, 'the connection\'s id'
                                                      if args.action == 'close' else 'the AOR'))
        if args.action == 'close':
            request.update(connection=args.subject, code=args.code, reason=args.reason)
        else:
            request.update(aor=args.subject)
            if args.contact:
                request['contact'] = args.contact
    elif args.action == 'drain':
        request['window'] = args.window
    websocket = await _open(args)
    if websocket is None:
        return 1
    async with websocket:
        await websocket.send(json.dumps(request))
        answer = json.loads(await asyncio.wait_for(websocket.recv(), args.timeout))
    if answer.get('type') != 'result':
        print('aiosip-ws admin: %s' % answer.get('error', answer), file=sys.stderr)
        return 1
    result = answer['result']
    if args.json:
        print(json.dumps(result))
    elif args.action == 'connections':
        print('%-14s %-4s %-22s %-16s %8s %7s %9s %9s %7s  %s' % (
            'ID', 'TYPE', 'ADDRESS', 'IDENTITY', 'AGE', 'PENDING', 'BYTES-IN', 'BYTES-OUT',
            'QUEUED', 'AORS'))
        for row in result:
            print('%-14s %-4s %-22s %-16s %8.1f %7d %9d %9d %7d  %s' % (
                row['id'], row['transport'], '%s:%d' % tuple(row['address']),
                row['identity'] or '-', row['age'], row['pending'], row['bytes_in'],
                row['bytes_out'], row['queued_bytes'], ' '.join(row['aors']) or '-'))
    else:
        print(json.dumps(result))
    return 0


async def trace_command(args: argparse.Namespace) -> int:
    from websockets.exceptions import ConnectionClosed
    if args.count is not None and args.count < 1:
        raise ConfigurationError('--count: give at least 1')
    wanted = {name: value for name, value in (('aor', args.aor), ('address', args.address),
                                              ('call_id', args.call_id),
                                              ('method', args.method)) if value}
    pcap: IO[bytes] | None = None
    stop = asyncio.Event()
    installed = install_stop(stop)
    shown = 0
    try:
        websocket = await _open(args)
        if websocket is None:
            return 1
        if args.pcap:
            pcap = open(args.pcap, 'wb')  # noqa: SIM115 - closed below
            pcap.write(file_header())
            pcap.flush()
        async with websocket:
            await websocket.send(json.dumps({'trace': wanted}))
            stopping = asyncio.ensure_future(stop.wait())
            if args.duration is not None:
                asyncio.get_running_loop().call_later(args.duration, stop.set)
            try:
                while not stop.is_set():
                    receiving = asyncio.ensure_future(websocket.recv())
                    await asyncio.wait({receiving, stopping},
                                       return_when=asyncio.FIRST_COMPLETED)
                    if not receiving.done():
                        receiving.cancel()
                        await asyncio.gather(receiving, return_exceptions=True)
                        break
                    try:
                        frame = json.loads(receiving.result())
                    except ConnectionClosed as closed:
                        if closed.rcvd is not None and closed.rcvd.code != 1001:
                            print('aiosip-ws trace: serve closed the trace: %d %s'
                                  % (closed.rcvd.code, closed.rcvd.reason), file=sys.stderr)
                            return 1
                        break
                    if _show(frame, args.json, pcap):
                        shown += 1
                        if args.count is not None and shown >= args.count:
                            break
            finally:
                stopping.cancel()
                await asyncio.gather(stopping, return_exceptions=True)
        return 0
    finally:
        remove_stop(installed)
        if pcap is not None:
            pcap.close()


def _show(frame: dict[str, Any], as_json: bool, pcap: IO[bytes] | None) -> bool:
    """Print one frame from serve; True when it was a message."""
    kind = frame.get('type')
    if as_json and kind in ('message', 'dropped'):
        print(json.dumps(frame), flush=True)
    if kind == 'dropped':
        print('aiosip-ws trace: %d message(s) lost: this trace read too slowly'
              % frame.get('count', 0), file=sys.stderr, flush=True)
        return False
    if kind != 'message':
        return False
    data = frame['text'].encode('utf-8') if 'text' in frame else \
        base64.b64decode(frame.get('base64', ''))
    if pcap is not None:
        with contextlib.suppress(ValueError):           # larger than a datagram: not written
            pcap.write(record(frame['time'], tuple(frame['source']),  # type: ignore[arg-type]
                              tuple(frame['destination']), data))     # type: ignore[arg-type]
            pcap.flush()
    if not as_json:
        when = datetime.datetime.fromtimestamp(frame['time']).strftime('%H:%M:%S.%f')
        what = frame.get('method') or frame.get('status') or '?'
        print('%s %-3s %-3s %s:%d -> %s:%d %s %s' % (
            when, frame['direction'], frame['transport'], frame['source'][0],
            frame['source'][1], frame['destination'][0], frame['destination'][1], what,
            frame.get('call_id', '')), flush=True)
        print(data.decode('utf-8', 'replace'), flush=True)
    return True
