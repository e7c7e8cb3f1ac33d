"""The ``aiosip-ws`` command line (also ``python -m aiosip_ws``).

``aiosip-ws serve`` maps its flags (and ``--config FILE``) onto a
:class:`~aiosip_ws.serve.config.ServeConfig` and runs it with
:func:`aiosip_ws.serve.run.run` until Ctrl-C or SIGTERM, then closes every client
connection with 1001 and exits 0.

The client commands take a TARGET, a ``ws://``/``wss://`` URL or a SIP URI
(found by RFC 3263/7118 DNS discovery, ``--dns HOST:PORT`` to pick the name
server):

* ``aiosip-ws options TARGET``: OPTIONS with connection and response timings;
  exit 0 on a 2xx, 1 otherwise;
* ``aiosip-ws register TARGET --aor AOR [--user U --password P] [--expires S]``:
  register (digest auth), print the bindings, stay registered (refreshing) and
  print incoming MESSAGEs until Ctrl-C/SIGTERM or ``--duration``, then un-register;
* ``aiosip-ws message TARGET --aor AOR --to URI --body TEXT``: one MESSAGE;
* ``aiosip-ws bench TARGET --clients N --rate R --duration S --scenario ...``:
  the open-loop load generator of :mod:`aiosip_ws.tools.loadgen`.

``--trace`` prints every SIP message sent and received (logger
``aiosip_ws.wire``) and the WebSocket events (logger ``websockets``) to stderr.
Exit codes: 0 success, 1 the server said no / timed out / could not be
reached, 2 bad usage, 130 interrupted.
"""
from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import math
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from .._version import __version__
from ..core.grammar import is_sip_uri, is_ws_url
from ..core.sipuri import NameAddr, SipURI, user_uri
from ..errors import AiosipWSError, ConfigurationError, Interrupted, RegistrationError, SIPParseError
from ..serve.config import ServeConfig
from ..serve.run import run, run_on_loop
from ..transport.websocket import split_ws_url
from .common import client_options, install_stop, remove_stop, resolver, unless_stopped

__all__ = ['main', 'build_parser']

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='aiosip-ws', description='SIP over WebSocket (RFC 7118) '
                                     'tools built on aiosip.')
    parser.add_argument('--version', action='version', version='aiosip-ws %s' % __version__)
    commands = parser.add_subparsers(dest='command', metavar='COMMAND')
    commands.required = True

    serve = commands.add_parser('serve', help='run a WebSocket SIP registrar and relay',
                                description='Run a SIP WebSocket registrar and relay: clients '
                                'REGISTER over ws:// or wss://, requests to a registered AOR are '
                                'relayed over that client\'s connection.',
                                argument_default=argparse.SUPPRESS)
    add_serve_options(serve)
    serve.add_argument('--config', metavar='FILE',
                       help='a TOML file of serve options (keys as the flags, without the '
                       'dashes: listen = ["ws://..."], max-pending = 100); flags win')
    serve.set_defaults(func=None)

    passwd = commands.add_parser(
        'passwd', help='add or replace a user in a serve --users file',
        description='Write USER\'s line (MD5 and SHA-256 HA1, never the password) into FILE, '
        'replacing a line of the same user and realm.  The password is read from standard '
        'input (one line) or asked for on a terminal.')
    passwd.add_argument('file', metavar='FILE', help='the user file (created if missing)')
    passwd.add_argument('user', metavar='USER', help='the digest user name')
    passwd.add_argument('--realm', required=True, metavar='REALM', help='the Digest realm')
    passwd.add_argument('--aor', metavar='URI', help='the AOR the user may register and send '
                        'as (default: sip:USER@ each local domain)')
    passwd.add_argument('--algorithms', default='MD5,SHA-256', metavar='LIST',
                        help='HA1s to store (default %(default)s)')
    passwd.set_defaults(func=_passwd_command)

    options = commands.add_parser(
        'options', help='send OPTIONS, print the response and the timings',
        description='Connect to TARGET, send OPTIONS (to the server itself unless --to), print '
        'the response and the timings (DNS, TCP, TLS, WebSocket handshake, first and final '
        'response). Exit 0 on a 2xx, 1 otherwise.')
    _client_arguments(options)
    options.add_argument('--to', metavar='URI', help='Request-URI and To (default: sip:<target '
                         'host>, i.e. the server itself; a SIP URI target is used as it is)')
    options.add_argument('--from', dest='from_uri', metavar='URI',
                         help='From URI (default sip:aiosip-ws@<target host>)')
    options.set_defaults(func=_options_command)

    register = commands.add_parser(
        'register', help='register an AOR, print the bindings, un-register on exit',
        description='REGISTER --aor over TARGET (answering digest challenges with --user and '
        '--password), print the bindings of the 200 OK, stay registered (refreshing before '
        'expiry, printing incoming MESSAGEs) until Ctrl-C, SIGTERM or --duration, then '
        'un-register (Expires: 0) and exit.')
    _client_arguments(register)
    register.add_argument('--aor', required=True, metavar='URI',
                          help='address-of-record to register, e.g. sip:alice@example.com')
    register.add_argument('--user', metavar='USER',
                          help='digest username (default: the AOR user)')
    register.add_argument('--password', metavar='PASSWORD', help='digest password')
    register.add_argument('--expires', type=int, default=3600, metavar='SECONDS',
                          help='requested registration lifetime (default %(default)s)')
    register.add_argument('--duration', type=float, default=None, metavar='SECONDS',
                          help='un-register and exit after this long (default: on Ctrl-C)')
    register.set_defaults(func=_register_command)

    message = commands.add_parser(
        'message', help='send one MESSAGE and print the final response',
        description='Send a MESSAGE (RFC 3428) from --aor to --to over TARGET and print the '
        'final response. Exit 0 on a 2xx, 1 otherwise.')
    _client_arguments(message)
    message.add_argument('--aor', required=True, metavar='URI', help='sender (From) AOR')
    message.add_argument('--to', required=True, metavar='URI', help='recipient URI')
    message.add_argument('--body', required=True, metavar='TEXT',
                         help='message text ("-" reads it from stdin)')
    message.add_argument('--content-type', default='text/plain', metavar='TYPE',
                         help='Content-Type (default %(default)s)')
    message.add_argument('--user', metavar='USER', help='digest username for a 407 challenge')
    message.add_argument('--password', metavar='PASSWORD', help='digest password')
    message.set_defaults(func=_message_command)

    bench = commands.add_parser(
        'bench', help='load-test a SIP WebSocket server (open loop)',
        description='Open --clients WebSocket connections to TARGET and run --scenario at '
        '--rate transactions per second in total for --duration seconds, on a fixed schedule '
        '(open loop: latency counts from the intended send time, so a slow server or an '
        'overloaded client cannot hide it). Prints a live progress line on stderr, then a '
        'summary (or JSON with --json). Exit 0 when every connection opened and every '
        'transaction got a 2xx, 1 otherwise.')
    _client_arguments(bench, timeout=5.0)
    bench.add_argument('--clients', type=int, default=10, metavar='N',
                       help='concurrent WebSocket clients (default %(default)s)')
    bench.add_argument('--rate', type=float, default=100.0, metavar='R',
                       help='transactions per second, all clients together (default '
                       '%(default)s); 0 runs a closed loop (--window outstanding per client: '
                       'capacity only, latency then counts from the real send time)')
    bench.add_argument('--duration', type=float, default=10.0, metavar='SECONDS',
                       help='length of the measured run (default %(default)s)')
    bench.add_argument('--scenario', choices=('register', 'message', 'options', 'call'),
                       default='options', help='what each transaction is (default '
                       '%(default)s); call: INVITE with SDP, 180/200 from the callee, ACK, '
                       '--hold seconds, BYE/200; the rate is then calls per second and the '
                       'latency the set-up time')
    bench.add_argument('--hold', type=float, default=1.0, metavar='SECONDS',
                       help='call scenario: how long each answered call lasts (default '
                       '%(default)s)')
    bench.add_argument('--json', action='store_true', help='print the summary as JSON')
    bench.add_argument('--domain', metavar='DOMAIN',
                       help='SIP domain of the AORs and of OPTIONS (default: the target host)')
    bench.add_argument('--aor-template', default='sip:bench{i}@{domain}', metavar='TEMPLATE',
                       help='AOR of client i (default %(default)s)')
    bench.add_argument('--user-template', metavar='TEMPLATE',
                       help='digest username of client i, e.g. "user{i}" (default: AOR user)')
    bench.add_argument('--password', metavar='PASSWORD', help='digest password of every client')
    bench.add_argument('--expires', type=int, default=300, metavar='SECONDS',
                       help='REGISTER Expires (default %(default)s)')
    bench.add_argument('--to', metavar='URI', help='message and call scenarios: send every '
                       'MESSAGE or INVITE to URI (default: each client registers and messages '
                       'or calls the next client)')
    bench.add_argument('--body', default='aiosip-ws bench', metavar='TEXT',
                       help='MESSAGE body (default %(default)r)')
    bench.add_argument('--window', type=int, default=1, metavar='W',
                       help='closed loop (--rate 0): outstanding transactions per client')
    bench.add_argument('--connect-concurrency', type=int, default=100, metavar='N',
                       help='handshakes in progress at once during set-up (default %(default)s)')
    bench.add_argument('--source-address', action='append', default=[], metavar='IP',
                       help='bind client sockets to IP, round-robin (repeatable)')
    bench.add_argument('--max-transactions', type=int, default=2_000_000, metavar='N',
                       help='refuse runs of more than rate x duration transactions '
                       '(default %(default)s)')
    bench.add_argument('--start-at', type=float, metavar='UNIX_TIME',
                       help='start measuring at this wall-clock time (after set-up), so that '
                       'several bench processes measure the same window')
    bench.add_argument('--no-progress', action='store_true', help='no live progress line')
    _add_loop_option(bench)
    bench.set_defaults(func=_bench_command)
    from .calls import add_commands  # answer, call
    add_commands(commands, _client_arguments)
    from .admin import add_admin_arguments, add_trace_arguments, admin_command, trace_command
    trace = commands.add_parser(
        'trace', help='print the SIP messages a running serve receives and sends',
        description='Open the admin WebSocket of a running aiosip-ws serve (its --admin-token '
        'given with --token or $AIOSIP_WS_ADMIN_TOKEN) and print each SIP message it '
        'receives or sends that matches the filters, as it passes (secrets redacted unless '
        'serve runs with --trace-secrets). Stops on Ctrl-C, SIGTERM, --count or --duration. '
        'Exit 0; 1 when serve refused or could not be reached.')
    add_trace_arguments(trace)
    trace.set_defaults(func=trace_command)
    admin = commands.add_parser(
        'admin', help='act on a running serve: list or close connections, unbind, drain, reload',
        description='Over the admin WebSocket of a running aiosip-ws serve (its --admin-token '
        'given with --token or $AIOSIP_WS_ADMIN_TOKEN): connections lists the WebSocket '
        'connections; close ID closes one with --code and --reason; unbind AOR removes its '
        'bindings (--contact: one); drain closes the clients over --window seconds, as '
        'SIGUSR1 does; reload loads the TLS certificate and the --users file again, as '
        'SIGHUP does. Exit 0; 1 when serve refused, could not be reached or answered an '
        'error.')
    add_admin_arguments(admin)
    admin.set_defaults(func=admin_command)
    return parser


def _client_arguments(parser: argparse.ArgumentParser, timeout: float = 10.0) -> None:
    parser.add_argument('target', metavar='TARGET',
                        help='ws://HOST:PORT/PATH, wss://..., or a SIP URI (DNS discovery); '
                        'options, message and bench also take udp://, tcp:// and '
                        'tls://HOST[:PORT]')
    parser.add_argument('--dns', metavar='HOST:PORT',
                        help='name server for SIP URI discovery (default: the system\'s)')
    parser.add_argument('--trace', action='store_true',
                        help='print every SIP message and WebSocket event (on stderr)')
    parser.add_argument('--timeout', type=float, default=timeout, metavar='SECONDS',
                        help='bound on connecting and on each transaction (default %(default)s)')
    parser.add_argument('--ca-file', metavar='FILE', help='CA certificates (PEM) for wss://')
    parser.add_argument('--insecure', action='store_true',
                        help='wss:// without certificate verification')
    parser.add_argument('--origin', metavar='ORIGIN', help='Origin header of the handshake')
    parser.add_argument('--log-level', default='WARNING',
                        choices=['DEBUG', 'INFO', 'WARNING', 'ERROR'],
                        help='log level (default %(default)s)')


def add_serve_options(parser: argparse.ArgumentParser) -> None:
    """One flag per option of :class:`~aiosip_ws.serve.config.ServeConfig` (``--`` and its
    name with dashes; a list option is a repeatable flag), with its help and default."""
    for info in ServeConfig.options():
        help_text = argparse.SUPPRESS if info.hidden else info.help_text.replace('%', '%%')
        if info.type is bool:
            parser.add_argument('--' + info.flag_name, action='store_true', help=help_text)
        elif info.repeatable:
            parser.add_argument('--' + info.flag_name, action='append', metavar=info.metavar,
                                help=help_text)
        else:
            parser.add_argument('--' + info.flag_name, type=info.type, metavar=info.metavar,
                                choices=info.choices, help=help_text)


def serve_config(args: argparse.Namespace) -> ServeConfig:
    """The :class:`ServeConfig` of ``aiosip-ws serve``: the defaults, then ``--config
    FILE``'s options, then the flags given (a repeatable flag replaces the file's list)."""
    values: dict[str, Any] = {}
    config_file = getattr(args, 'config', None)
    if config_file:
        if sys.version_info >= (3, 11):
            import tomllib
        else:                                            # pragma: no cover - Python 3.10
            import tomli as tomllib
        try:
            with open(config_file, 'rb') as file:
                table = tomllib.load(file)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigurationError('cannot read --config %s: %s' % (config_file, exc)) from None
        values.update(ServeConfig.from_mapping(table, '--config %s' % config_file))
    values.update({info.name: getattr(args, info.name) for info in ServeConfig.options()
                   if hasattr(args, info.name)})
    return ServeConfig(**values)


def _add_loop_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--loop', choices=('auto', 'asyncio', 'uvloop'),
                        default=os.environ.get('AIOSIP_WS_LOOP', 'asyncio'),
                        help='the event loop: the standard asyncio one, uvloop (pip install '
                        '"aiosip-ws[fast]"), or auto: uvloop when installed (default '
                        '%(default)s; $AIOSIP_WS_LOOP)')


async def _passwd_command(args: argparse.Namespace) -> int:
    from ..serve.auth import UserFile, user_line
    path = Path(args.file)
    if sys.stdin.isatty():
        password = getpass.getpass('password for %s: ' % args.user)
        if getpass.getpass('again: ') != password:
            raise ConfigurationError('the passwords differ')
    else:
        password = sys.stdin.readline().rstrip('\r\n')
    if not password:
        raise ConfigurationError('an empty password')
    algorithms = [a.strip().upper() for a in args.algorithms.split(',') if a.strip()]
    line = user_line(args.user, args.realm, password, aor=args.aor, algorithms=algorithms)
    lines = path.read_text(encoding='utf-8').splitlines() if path.exists() else []
    UserFile.parse('\n'.join(lines), str(path))             # refuse to edit a broken file
    prefix = '%s:%s:' % (args.user, args.realm)
    kept = [old for old in lines if not old.startswith(prefix)]
    path.write_text('\n'.join(kept + [line]) + '\n', encoding='utf-8')
    path.chmod(0o600)
    print('aiosip-ws passwd: %s %s in %s' % ('replaced' if len(kept) < len(lines) else 'added',
                                             args.user, path))
    return 0


# ---------------------------------------------------------------------------- client commands


class _TraceFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        self.started = time.perf_counter()

    def format(self, record: logging.LogRecord) -> str:
        elapsed = (time.perf_counter() - self.started) * 1000.0
        source = 'sip' if record.name == 'aiosip_ws.wire' else 'ws '
        text = record.getMessage()
        if '\n' in text:
            head, _, rest = text.partition('\n')
            text = head + '\n' + '\n'.join('    ' + line for line in
                                           rest.rstrip('\r\n').replace('\r\n', '\n').split('\n'))
        return '[%9.3f ms] %s %s' % (elapsed, source, text)


def _setup_trace(enabled: bool) -> None:
    """--trace: SIP messages and WebSocket events to stderr, nothing twice."""
    if not enabled:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_TraceFormatter())
    for name in ('aiosip_ws.wire', 'websockets'):
        log = logging.getLogger(name)
        log.setLevel(logging.DEBUG)
        log.addHandler(handler)
        log.propagate = False


def _fail(command: str, reason: str) -> int:
    print('aiosip-ws %s: failed: %s' % (command, reason), file=sys.stderr, flush=True)
    return 1


def _print_connected(timings: Any) -> None:
    print('connected to %s (%s): %s' % (timings.url, timings.address, timings.describe()),
          flush=True)


def _print_response(txn: Any) -> None:
    from .probe import format_message
    if txn.response is not None:
        print(format_message(txn.response), flush=True)
        print(flush=True)


def _connect_error(exc: BaseException) -> str:
    return '%s: %s' % (type(exc).__name__, exc)


async def _one_transaction(command: str, args: argparse.Namespace,
                           send: Callable[[Any], Awaitable[Any]]) -> int:
    """Connect, run one transaction (``send(probe)``), print it; 0 on a 2xx."""
    from ..core.grammar import is_net_url
    from .netprobe import NetProbe
    from .probe import PROBE_ERRORS, Probe
    probe: Any
    if is_net_url(args.target):
        probe = NetProbe(args.target, timeout=args.timeout,
                         ssl_context=client_options(args).ssl)
    else:
        probe = Probe(args.target, client_options=client_options(args),
                      resolver=resolver(args), timeout=args.timeout)
    try:
        try:
            timings = await probe.connect()
        except PROBE_ERRORS as exc:
            return _fail(command, 'cannot connect to %s: %s' % (args.target, _connect_error(exc)))
        _print_connected(timings)
        txn = await send(probe)
        _print_response(txn)
        print(txn.describe(), flush=True)
        if not txn.ok:
            return _fail(command, txn.outcome())
        return 0
    finally:
        await probe.close()


async def _options_command(args: argparse.Namespace) -> int:
    return await _one_transaction('options', args, lambda probe: probe.options(
        to_uri=args.to, from_uri=args.from_uri))


async def _message_command(args: argparse.Namespace) -> int:
    body = sys.stdin.read() if args.body == '-' else args.body
    return await _one_transaction('message', args, lambda probe: probe.message(
        args.aor, args.to, body, content_type=args.content_type, user=args.user,
        password=args.password))


async def _register_command(args: argparse.Namespace) -> int:
    from ..adapter.registration import Registration
    from ..core.register import bindings_of
    from .probe import PROBE_ERRORS, Probe, Transaction
    if args.expires < 1:
        raise ConfigurationError('--expires must be at least 1 (un-registering is automatic)')

    async def on_request(dialog: Any, request: Any) -> None:
        dialog.reply(request, 200)
        try:
            sender = str(NameAddr.parse(request.headers.get('From', '')).uri)
        except SIPParseError:
            sender = request.headers.get('From', '?')
        if request.method == 'MESSAGE':
            print('MESSAGE from %s: %s' % (sender, request.payload or ''), flush=True)
        else:
            print('%s from %s answered 200' % (request.method, sender), flush=True)

    def on_response(registration: Registration, expires: int, response: Any,
                    seconds: float) -> None:
        raw = response.raw
        uri = NameAddr.parse(registration.aor).uri
        txn = Transaction(method='REGISTER', request_uri=str(SipURI(uri.scheme, None, uri.host,
                                                                    uri.port)),
                          sent_at=0.0, final_at=seconds, response=raw)
        if expires == 0:
            print('un-register: %s' % txn.describe(), flush=True)
            if txn.ok:
                own = NameAddr.parse(registration.contact or '').uri.host
                _print_bindings(args.aor, [b for b in bindings_of(raw) if own not in b],
                                after=True)
            else:
                print('aiosip-ws register: un-register failed: %s' % txn.outcome(),
                      file=sys.stderr, flush=True)
        elif registration.registrations == 0:
            print(txn.describe(), flush=True)
            if txn.ok:
                _print_bindings(args.aor, bindings_of(raw))
        else:
            print('refreshed: %s' % txn.describe(), flush=True)

    stop = asyncio.Event()
    installed = install_stop(stop)
    probe = Probe(args.target, client_options=client_options(args), resolver=resolver(args),
                  timeout=args.timeout, on_request=on_request)
    registration: Registration | None = None
    try:
        try:
            timings = await unless_stopped(probe.connect(), stop)
        except PROBE_ERRORS as exc:
            return _fail('register', 'cannot connect to %s: %s' % (args.target,
                                                                   _connect_error(exc)))
        _print_connected(timings)

        async def connection() -> Any:
            return probe.connection

        registration = Registration(probe.app, args.aor, args.target, password=args.password,
                                    username=args.user, expires=args.expires, outbound=False,
                                    reconnect=False, connect=connection, on_response=on_response)
        try:
            await unless_stopped(registration.start(timeout=args.timeout), stop)
        except RegistrationError as exc:
            registration = None
            response = getattr(exc.response, 'raw', None)
            return _fail('register', '%d %s' % (response.status, response.reason)
                         if response is not None else str(exc))
        print('registered; %s' % ('un-registering in %g s' % args.duration
                                  if args.duration is not None else 'Ctrl-C to un-register and exit'),
              flush=True)
        try:
            await unless_stopped(asyncio.wait_for(registration.wait_stopped(), args.duration),
                                  stop)
        except asyncio.TimeoutError:
            pass                                              # --duration is over
        else:
            return _fail('register', 'the connection closed (code %s)'
                         % probe.connection.close_code)
    except Interrupted:
        print('interrupted', flush=True)
    finally:
        remove_stop(installed)
        try:
            if registration is not None:
                await registration.stop(unregister=True, timeout=args.timeout)
        finally:
            await probe.close()
    return 0


def _print_bindings(aor: str, bindings: list[str], after: bool = False) -> None:
    label = 'bindings of %s%s' % (aor, ' left' if after else '')
    if not bindings:
        print('%s: none' % label, flush=True)
        return
    print('%s:' % label, flush=True)
    for binding in bindings:
        print('  %s' % binding, flush=True)


async def _bench_command(args: argparse.Namespace) -> int:
    from .loadgen import BenchConfig, LoadGenerator, Progress
    config = BenchConfig(
        target=args.target, clients=args.clients, rate=args.rate, duration=args.duration,
        scenario=args.scenario, timeout=args.timeout, domain=args.domain,
        aor_template=args.aor_template, to=args.to, user_template=args.user_template,
        password=args.password, expires=args.expires, body=args.body, window=args.window,
        hold=args.hold,
        connect_concurrency=args.connect_concurrency, source_addresses=args.source_address,
        max_transactions=args.max_transactions, start_at=args.start_at,
        client_options=client_options(args), resolver=resolver(args))
    tty = sys.stderr.isatty()

    def progress(report: Progress) -> None:
        if tty:
            print('\r\x1b[K' + report.line(), end='', file=sys.stderr, flush=True)
        else:
            print(report.line(), file=sys.stderr, flush=True)

    generator = LoadGenerator(config, on_progress=None if args.no_progress else progress)
    stop = asyncio.Event()
    installed = install_stop(stop)
    try:
        result = await unless_stopped(generator.run(), stop)
    except Interrupted:
        print('\naiosip-ws bench: interrupted', file=sys.stderr)
        return 130
    finally:
        remove_stop(installed)
    if tty and not args.no_progress:
        print(file=sys.stderr)
    if args.json:
        print(json.dumps(result.as_dict(), indent=2, default=_json_default), flush=True)
    else:
        print(result.table(), flush=True)
    return 0 if result.ok else 1


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    raise TypeError('not JSON serialisable: %r' % (value,))


def target_forms() -> list[str]:
    """The TARGET forms the client commands accept, from the transport registry."""
    from ..adapter.registry import WS, get_transport, transport_names
    forms = ['%s://HOST[:PORT][/PATH]' % name for name in transport_names()
             if isinstance(get_transport(name), type) and issubclass(get_transport(name), WS)]
    return forms + ['sip:[USER@]DOMAIN[;transport=ws]', 'sips:[USER@]DOMAIN',
                    'udp://HOST[:PORT]', 'tcp://HOST[:PORT]',
                    'tls://HOST[:PORT] (options, message, bench)']


def _check_target(target: str, command: str | None = None) -> None:
    """A TARGET that is neither a WebSocket URL nor a SIP URI (nor, for options and
    message, a udp://, tcp:// or tls:// URL) is a usage error (exit 2)."""
    from ..core.grammar import is_net_url, split_net_url
    if is_net_url(target):
        split_net_url(target)
        if command not in ('options', 'message', 'bench'):
            raise ConfigurationError('TARGET %r: udp://, tcp:// and tls:// work with options, '
                                     'message and bench; %s needs a ws:// or wss:// URL or a SIP '
                                     'URI' % (target, command))
        return
    if is_sip_uri(target):
        user_uri(target, 'TARGET')
        return
    if is_ws_url(target):
        split_ws_url(target)                              # host and port must be there
        return
    raise ConfigurationError('TARGET %r is not a URL or SIP URI that aiosip-ws can reach; use '
                             'one of: %s' % (target, ', '.join(target_forms())))


class JSONFormatter(logging.Formatter):
    """``--log-format json``: one JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {'time': self.formatTime(record, '%Y-%m-%dT%H:%M:%S'),
                 'ms': int(record.msecs), 'level': record.levelname, 'logger': record.name,
                 'message': record.getMessage()}
        if record.exc_info:
            entry['exception'] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    config = None
    if args.command == 'serve':
        try:
            config = serve_config(args)
        except ConfigurationError as exc:
            print('aiosip-ws serve: %s' % exc, file=sys.stderr)
            return 2
        level, log_format = config.log_level, config.log_format
    else:
        level, log_format = getattr(args, 'log_level', 'INFO'), 'text'
    logging.basicConfig(level=getattr(logging, level),
                        format='%(asctime)s %(levelname)s %(name)s: %(message)s')
    if log_format == 'json':
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JSONFormatter())
    if level != 'DEBUG':
        logging.getLogger('websockets').setLevel(logging.WARNING)
    _setup_trace(getattr(args, 'trace', False))
    try:
        if config is not None:
            return run(config)
        if getattr(args, 'target', None):
            _check_target(args.target, args.command)
        for option in ('aor', 'to', 'from_uri'):            # usage errors before any network
            value = getattr(args, option, None)
            if value:
                user_uri(value, '--%s' % option.replace('_uri', '').replace('_', '-'))
        return run_on_loop(args.func(args), getattr(args, 'loop', 'asyncio'))
    except ConfigurationError as exc:
        print('aiosip-ws %s: %s' % (args.command, exc), file=sys.stderr)
        return 2
    except AiosipWSError as exc:
        print('aiosip-ws %s: %s' % (args.command, exc), file=sys.stderr)
        return 2 if args.command == 'serve' else 1
    except KeyboardInterrupt:
        return 130
