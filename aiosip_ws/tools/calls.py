"""``aiosip-ws answer`` and ``aiosip-ws call``: a voice bot and a caller with WebRTC media
(the ``[media]`` extra).

``answer`` registers an AOR and answers every call (echo, a file or a tone; recording
what it hears); ``call`` places one call.  Both print the call's events, one line each
(one JSON object each with ``--json``), and can send DTMF and put the peer on hold.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from ..core.sipuri import NameAddr
from ..errors import CallFailed, ConfigurationError, Interrupted, MediaError, RegistrationError

__all__ = ['add_commands']


def add_commands(commands: Any, client_arguments: Any) -> None:
    """The ``answer`` and ``call`` subcommands (``client_arguments`` adds TARGET & co.)."""
    answer = commands.add_parser(
        'answer', help='register and answer every call with media (a voice bot)',
        description='Register --aor over TARGET and answer every incoming call with WebRTC '
        'media (what a browser softphone offers): echo what is heard, play a file or a tone, '
        'record to a file. Prints call events until Ctrl-C or SIGTERM, then un-registers. '
        'Needs the [media] extra (aiortc).')
    client_arguments(answer)
    _identity(answer)
    _media_arguments(answer)
    answer.add_argument('--ring', type=float, default=0.0, metavar='SECONDS',
                        help='ring this long before answering (default %(default)s)')
    answer.add_argument('--calls', type=int, default=None, metavar='N',
                        help='exit after N calls have ended (default: run until stopped)')
    answer.set_defaults(func=_answer_command)

    call = commands.add_parser(
        'call', help='place one call with media, print its events',
        description='Call --to from --aor over TARGET with WebRTC media, print the call '
        'events, and hang up after --duration (or when the other side does). Exit 0 for a '
        'call answered and ended by BYE, 1 for a failed call (the final status on stderr), '
        '2 for a usage error, 130 on interrupt. Needs the [media] extra (aiortc).')
    client_arguments(call)
    _identity(call)
    call.add_argument('--to', required=True, metavar='URI', help='who to call')
    _media_arguments(call)
    call.add_argument('--late-offer', action='store_true',
                      help='send the INVITE without SDP (the offer comes in the 200)')
    call.add_argument('--ring-timeout', type=float, default=60.0, metavar='SECONDS',
                      help='CANCEL after this long without an answer (default %(default)s)')
    call.set_defaults(func=_call_command)


def _identity(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--aor', required=True, metavar='URI',
                        help='our address-of-record, e.g. sip:bot@example.com')
    parser.add_argument('--user', metavar='USER', help='digest username (default: the AOR user)')
    parser.add_argument('--password', metavar='PASSWORD', help='digest password')


def _media_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument('--echo', action='store_true', help='send back what is heard')
    source.add_argument('--play', metavar='FILE', help='play this sound file (WAV) once')
    source.add_argument('--tone', type=float, metavar='HZ', help='play a sine tone')
    parser.add_argument('--record', metavar='FILE',
                        help='record what is heard (WAV); {n} in the name is the call number')
    parser.add_argument('--duration', type=float, metavar='SECONDS',
                        help='hang up (BYE) this long after the answer')
    parser.add_argument('--dtmf', metavar='DIGITS',
                        help='send these DTMF digits (SIP INFO) after the answer')
    parser.add_argument('--dtmf-delay', type=float, default=0.5, metavar='SECONDS',
                        help='how long after the answer --dtmf starts (default %(default)s)')
    parser.add_argument('--hold', metavar='AFTER:LENGTH',
                        help='put the other side on hold AFTER seconds after the answer, for '
                        'LENGTH seconds, then take it off')
    parser.add_argument('--codec', action='append', metavar='NAME',
                        help='codec to offer or accept, most preferred first (repeatable; '
                        'default opus then PCMU)')
    parser.add_argument('--ice-server', action='append', default=[], metavar='URL',
                        help='STUN or TURN server, e.g. stun:stun.example.com:3478 (repeatable)')
    parser.add_argument('--json', action='store_true', help='print events as JSON lines')


def _hold(value: str | None) -> tuple[float, float] | None:
    if not value:
        return None
    after, sep, length = value.partition(':')
    try:
        pair = float(after), float(length)
    except ValueError:
        pair = (-1.0, -1.0)
    if not sep or pair[0] < 0 or pair[1] <= 0:
        raise ConfigurationError('--hold takes AFTER:LENGTH in seconds, e.g. 2:3 (got %r)'
                                 % value)
    return pair


def _options(args: argparse.Namespace, number: int = 1) -> Any:
    try:
        from ..media import MediaOptions
    except MediaError as exc:                         # the [media] extra is missing
        raise ConfigurationError(str(exc)) from None
    record = args.record.replace('{n}', str(number)) if args.record else None
    options = MediaOptions(play=args.play, tone=args.tone, echo=args.echo, record=record,
                           ice_servers=args.ice_server, duration=args.duration)
    if args.codec:
        options.codecs = tuple(args.codec)
    options.validate()
    return options


class _Printer:
    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def __call__(self, event: str, **fields: Any) -> None:
        fields = {key: value for key, value in fields.items() if value is not None}
        if self.as_json:
            print(json.dumps({'event': event, 'time': round(time.time(), 3), **fields}),
                  flush=True)
            return
        rest = ' '.join('%s=%s' % (key, value) for key, value in fields.items()
                        if value is not None and key != 'call')
        print('%s%s%s' % ('[%s] ' % fields['call'] if 'call' in fields else '', event,
                          ' ' + rest if rest else ''), flush=True)


async def _script(call: Any, args: argparse.Namespace) -> None:
    """What the command line asked to do during an answered call (DTMF, hold)."""
    hold = _hold(args.hold)
    steps = []
    if args.dtmf:
        steps.append((args.dtmf_delay, 'dtmf'))
    if hold is not None:
        steps += [(hold[0], 'hold'), (hold[0] + hold[1], 'unhold')]
    start = asyncio.get_running_loop().time()
    for at, what in sorted(steps):
        await asyncio.sleep(max(0.0, start + at - asyncio.get_running_loop().time()))
        if call.ended:
            return
        if what == 'dtmf':
            await call.send_dtmf(args.dtmf)
        elif what == 'hold':
            await call.hold()
        else:
            await call.unhold()


def _printing(show: _Printer, number: int) -> Any:
    """An ``on_event`` callback printing a call's events."""
    def on_event(event: Any) -> None:
        if event.kind == 'answered':
            return                     # the command prints it, with the ICE candidates
        fields = event.as_dict()
        fields.pop('time', None)
        show(fields.pop('kind'), call=number, **fields)
    return on_event


async def _follow(call: Any, args: argparse.Namespace, show: _Printer, number: int) -> Any:
    """Run the command line's script (DTMF, hold) until the call ends; its ``ended`` event."""
    script = asyncio.ensure_future(_script(call, args))
    try:
        ended = await asyncio.shield(call.wait_ended())
    finally:
        if not script.done():
            script.cancel()
        results = await asyncio.gather(script, return_exceptions=True)
    if isinstance(results[0], (CallFailed, MediaError)):
        show('failed', call=number, reason=str(results[0]))
    return ended


async def _call_command(args: argparse.Namespace) -> int:
    options = _options(args)                          # usage errors (and a missing extra) first
    from ..adapter.application import Application
    from ..media import call as place
    from .common import client_options, install_stop, remove_stop, resolver, unless_stopped
    _hold(args.hold)
    show = _Printer(args.json)
    stop = asyncio.Event()
    installed = install_stop(stop)
    app = Application(client_options=client_options(args), resolver=resolver(args))
    try:
        show('calling', to=args.to)
        try:
            call = await unless_stopped(place(
                app, args.aor, args.to, remote_addr=args.target, password=args.password,
                username=args.user, options=options, late_offer=args.late_offer,
                timeout=args.ring_timeout, on_event=_printing(show, 1)), stop)
        except CallFailed as exc:
            show('failed', status=exc.status, reason=exc.reason or None)
            print('aiosip-ws call: failed: %s' % exc, file=sys.stderr, flush=True)
            return 1
        show('answered', candidates=' '.join('%s:%d' % (c.address, c.port)
                                             for c in call.candidates()))
        try:
            ended = await unless_stopped(_follow(call, args, show, 1), stop)
        except Interrupted:
            await call.hangup()
            raise
        return 0 if ended is not None and ended.cause == 'bye' else 1
    except Interrupted:
        show('interrupted')
        return 130
    finally:
        remove_stop(installed)
        await app.close()


async def _answer_command(args: argparse.Namespace) -> int:
    _options(args)                                    # usage errors (and a missing extra) first
    from ..adapter.application import Application
    from ..adapter.registration import Registration
    from ..media import answer
    from .common import client_options, install_stop, remove_stop, resolver, unless_stopped
    _hold(args.hold)
    show = _Printer(args.json)
    stop = asyncio.Event()
    installed = install_stop(stop)
    app = Application(client_options=client_options(args), resolver=resolver(args))
    count = 0
    done = 0
    calls: set[Any] = set()

    async def on_invite(dialog: Any, request: Any) -> None:
        nonlocal count, done
        count += 1
        number = count
        caller = str(NameAddr.parse(request.headers.get('From', '')).uri)
        show('incoming', call=number, **{'from': caller})
        try:
            call = await answer(dialog, request, _options(args, number), ring=args.ring,
                                on_event=_printing(show, number))
        except (CallFailed, MediaError) as exc:
            show('failed', call=number, reason=str(exc))
        else:
            calls.add(call)
            show('answered', call=number, candidates=' '.join(
                '%s:%d' % (c.address, c.port) for c in call.candidates()))
            try:
                await _follow(call, args, show, number)
            finally:
                calls.discard(call)
        done += 1
        if args.calls is not None and done >= args.calls:
            stop.set()

    app.router.add_route('INVITE', on_invite)
    registration = Registration(app, args.aor, args.target, password=args.password,
                                username=args.user, expires=600)
    try:
        try:
            await unless_stopped(registration.start(timeout=args.timeout), stop)
        except RegistrationError as exc:
            response = getattr(exc.response, 'raw', None)
            print('aiosip-ws answer: failed: %s' % ('%d %s' % (response.status, response.reason)
                                                     if response is not None else exc),
                  file=sys.stderr, flush=True)
            return 1
        show('registered', aor=args.aor)
        await stop.wait()
        for call in list(calls):
            await call.hangup()
    except Interrupted:
        show('interrupted')
        return 130
    finally:
        remove_stop(installed)
        try:
            await registration.stop(unregister=True, timeout=args.timeout)
        finally:
            await app.close()
    return 0
