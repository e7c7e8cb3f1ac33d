"""The ``aiosip-ws`` command line (also ``python -m aiosip_ws``).

``aiosip-ws serve`` runs the WebSocket registrar and relay of
:mod:`aiosip_ws.relay` until Ctrl-C or SIGTERM, then closes every client
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
  the open-loop load generator of :mod:`aiosip_ws.loadgen`.

``--trace`` prints every SIP message sent and received (logger
``aiosip_ws.wire``) and the WebSocket events (logger ``websockets``) to stderr.
Exit codes: 0 success, 1 the server said no / timed out / could not be
reached, 2 bad usage, 130 interrupted.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import getpass
import ipaddress
import json
import logging
import math
import os
import signal
import ssl
import sys
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from .._version import __version__
from ..core.grammar import is_sip_uri, is_ws_url
from ..core.sipuri import NameAddr, SipURI, user_uri
from ..errors import AiosipWSError, ConfigurationError, Interrupted, RegistrationError, SIPParseError
from ..options import DEFAULT_MAX_SIZE, RelayLimits, ServerOptions
from ..transport.websocket import split_ws_url
from .common import client_options, install_stop, remove_stop, resolver, unless_stopped

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
                       'ws://127.0.0.1:8080/). A path other than / must match exactly. '
                       'udp://HOST:PORT, tcp://HOST:PORT and tls://HOST:PORT (with '
                       '--tls-cert) bridge SIP over UDP, TCP and TLS to WebSocket.')
    serve.add_argument('--route', action='append', default=[], metavar='DOMAIN=SIP-URI',
                       help='send requests for DOMAIN to the next hop SIP-URI (an upstream '
                       'proxy, PBX or gateway; sip:HOST[:PORT][;transport=tcp|tls]); * for '
                       'every domain that is not a --domain (repeatable)')
    serve.add_argument('--route-unregistered', metavar='SIP-URI',
                       help='where requests for unregistered users of a local domain go '
                       '(default: 404)')
    serve.add_argument('--registrar', metavar='SIP-URI',
                       help='edge proxy mode (RFC 5626): forward every REGISTER to this '
                       'registrar with a Path naming the client\'s connection by a signed '
                       'flow token, keep no bindings, send other requests there too')
    serve.add_argument('--flow-secret', metavar='SECRET',
                       help='HMAC key of the flow tokens (default: $AIOSIP_WS_FLOW_SECRET, '
                       'else random per start); edges sharing it accept each other\'s tokens')
    serve.add_argument('--advertise', metavar='HOST[:PORT]',
                       help='the address serve writes in Via and Record-Route on UDP, TCP and '
                       'TLS (when it listens on a wildcard address or sits behind NAT)')
    serve.add_argument('--tls-cert', metavar='FILE', help='PEM certificate chain for wss://')
    serve.add_argument('--tls-key', metavar='FILE', help='PEM private key for wss://')
    serve.add_argument('--allow-origin', action='append', metavar='ORIGIN',
                       help='allowed Origin (repeatable); others get HTTP 403. Default: any')
    serve.add_argument('--max-size', type=int, default=DEFAULT_MAX_SIZE, metavar='BYTES',
                       help='largest WebSocket message (default %(default)s); bigger: close 1009')
    serve.add_argument('--ping-interval', type=float, default=20.0, metavar='SECONDS',
                       help='WebSocket Ping interval, 0 to disable (default %(default)s)')
    serve.add_argument('--ping-timeout', type=float, default=20.0, metavar='SECONDS',
                       help='a client that has not answered a Ping this long is closed '
                       '(aborted when data waits for it) (default %(default)s)')
    serve.add_argument('--send-timeout', type=float, default=20.0, metavar='SECONDS',
                       help='a connection where data waits and no byte leaves this long '
                       '(its peer is gone or not reading) is aborted, 0 never '
                       '(default %(default)s)')
    serve.add_argument('--max-connections', type=int, default=None, metavar='N',
                       help='most WebSocket connections at once per --listen URL; more get '
                       'HTTP 503, 0 for no cap (default: the open file limit, raised to its '
                       'hard limit at start, minus max(64, 5%%) for other descriptors, '
                       'shared among the --listen URLs)')
    serve.add_argument('--max-connections-per-ip', type=int, default=None, metavar='N',
                       help='most connections from one address; more get HTTP 503')
    serve.add_argument('--max-bad-messages', type=int, default=20, metavar='N',
                       help='close a connection with 1008 (policy violation) once it has sent '
                       'N SIP messages that cannot be parsed, 0 never (default %(default)s)')
    serve.add_argument('--max-contacts-per-aor', type=int, default=10, metavar='N',
                       help='most bindings one address-of-record may have; a REGISTER adding '
                       'more gets 403 (refreshes and removals always pass; default %(default)s)')
    serve.add_argument('--max-pending', type=int, default=10000, metavar='N',
                       help='most requests being relayed at once; more get 503 with Retry-After '
                       '(default %(default)s)')
    serve.add_argument('--max-pending-per-connection', type=int, default=200, metavar='N',
                       help='the same per connection, from it and towards it (default '
                       '%(default)s)')
    serve.add_argument('--max-requests-per-second', type=float, default=500.0, metavar='R',
                       help='sustained requests per second one connection may send, 0 for no '
                       'limit; above it 503 with Retry-After (default %(default)s)')
    serve.add_argument('--burst', type=int, default=1000, metavar='N',
                       help='requests a connection may send in a burst above that rate '
                       '(default %(default)s)')
    serve.add_argument('--rate-limit-grace', type=float, default=10.0, metavar='SECONDS',
                       help='a connection over the rate this long is closed with 1008 '
                       '(default %(default)s)')
    serve.add_argument('--max-send-queue', type=int, default=1024 * 1024, metavar='BYTES',
                       help='most data waiting to be sent to one client; a client that stops '
                       'reading is closed with 1008 beyond it (default %(default)s)')
    serve.add_argument('--transaction-timeout', type=float, default=32.0, metavar='SECONDS',
                       help='Timer F: how long a relayed request waits for its final response '
                       '(default %(default)s)')
    serve.add_argument('--max-handshakes-per-second', type=float, default=1000.0, metavar='R',
                       help='WebSocket handshakes accepted per second per listener, 0 for no '
                       'cap; more get HTTP 503 with Retry-After (default %(default)s)')
    serve.add_argument('--handshake-burst', type=int, default=2000, metavar='N',
                       help='handshakes accepted at once before that rate applies '
                       '(default %(default)s)')
    serve.add_argument('--shutdown-window', type=float, default=2.0, metavar='SECONDS',
                       help='on SIGINT/SIGTERM, close the clients spread over this long, so '
                       'that they do not all reconnect in the same second (default %(default)s)')
    serve.add_argument('--drain-window', type=float, default=30.0, metavar='SECONDS',
                       help='on SIGUSR1 (drain), refuse new clients with 503, turn /healthz to '
                       '503 and close the clients spread over this long (default %(default)s)')
    serve.add_argument('--timer-c', type=float, default=180.0, metavar='SECONDS',
                       help='Timer C: how long a forked INVITE branch may ring after its last '
                       'provisional response before serve CANCELs it (default %(default)s)')
    serve.add_argument('--open-timeout', type=float, default=10.0, metavar='SECONDS',
                       help='time a client has to finish the handshake (default %(default)s)')
    serve.add_argument('--crlf-ping-interval', type=float, default=0.0, metavar='SECONDS',
                       help='send RFC 5626 CRLF pings this often, 0 to disable (default 0)')
    serve.add_argument('--users', metavar='FILE',
                       help='Digest authentication: the user file (USER:REALM:MD5-HA1[:SHA256-HA1'
                       '[:AOR]] per line; an htdigest file works; see aiosip-ws passwd)')
    serve.add_argument('--realm', metavar='REALM', help='the Digest realm (needed with --users)')
    serve.add_argument('--domain', action='append', metavar='DOMAIN',
                       help='a local domain, repeatable (default: the realm): requests From '
                       'these are challenged, users own sip:USER@DOMAIN')
    serve.add_argument('--digest-algorithms', default='SHA-256,MD5', metavar='LIST',
                       help='challenges offered, in this order (default %(default)s: RFC 8760 '
                       'clients take the first they support; JsSIP and SIP.js read only the '
                       'last, and only MD5)')
    serve.add_argument('--nonce-secret', metavar='SECRET',
                       help='HMAC key of the nonces, the same on every node (default: random '
                       'per start); also from $AIOSIP_WS_NONCE_SECRET')
    serve.add_argument('--nonce-lifetime', type=float, default=300.0, metavar='SECONDS',
                       help='how long a nonce is good; then stale=true (default %(default)s)')
    serve.add_argument('--trusted-peer', action='append', default=[], metavar='CIDR',
                       help='addresses never challenged (upstream proxies, trunks), repeatable')
    serve.add_argument('--jwt-secret', metavar='SECRET',
                       help='handshake authentication: a JWT (HS256) signed with SECRET in '
                       '?token= or a token cookie, its sub the AOR the connection may use; '
                       'also from $AIOSIP_WS_JWT_SECRET (needs aiosip-ws[jwt])')
    serve.add_argument('--jwt-leeway', type=float, default=0.0, metavar='SECONDS',
                       help='clock skew allowed on exp and nbf (default %(default)s)')
    serve.add_argument('--jwt-audience', metavar='AUD', help='the aud the tokens must carry')
    serve.add_argument('--jwt-issuer', metavar='ISS', help='the iss the tokens must carry')
    serve.add_argument('--trusted-proxy', action='append', default=[], metavar='CIDR',
                       help='a reverse proxy or load balancer whose X-Forwarded-For / '
                       'Forwarded names the client (ignored from anyone else), repeatable')
    serve.add_argument('--redis', metavar='URL',
                       help='share bindings with the other nodes on this Redis and forward '
                       'to them through it (redis://HOST:PORT/DB; needs aiosip-ws[cluster])')
    serve.add_argument('--workers', type=int, default=0, metavar='N',
                       help='run N serve processes on this machine, each a node of the '
                       'cluster, sharing the listening ports (SO_REUSEPORT); needs --redis')
    serve.add_argument('--reuse-port', action='store_true', help=argparse.SUPPRESS)
    serve.add_argument('--node-id', metavar='NAME',
                       help='this node\'s name in the cluster (letters, digits, "-"; '
                       'default: the host name); unique per node')
    serve.add_argument('--proxy-protocol', action='store_true',
                       help='every connection starts with a HAProxy PROXY protocol header (v1 '
                       'or v2, before TLS) naming the client; only --trusted-proxy addresses '
                       'may connect (HAProxy send-proxy-v2); needs --loop asyncio')
    serve.add_argument('--metrics-allow', action='append', default=None, metavar='CIDR',
                       help='who may GET /metrics and /registrations on the listening port, '
                       'repeatable (default: loopback, 127.0.0.0/8 and ::1)')
    serve.add_argument('--log-format', default='text', choices=['text', 'json'],
                       help='log lines as text or as one JSON object each (default %(default)s)')
    serve.add_argument('--config', metavar='FILE',
                       help='a TOML file of serve options (keys as the flags, without the '
                       'dashes: listen = ["ws://..."], max-pending = 100); flags win')
    serve.add_argument('--log-level', default='INFO',
                       choices=['DEBUG', 'INFO', 'WARNING', 'ERROR'],
                       help='log level (default %(default)s); DEBUG also logs every SIP message')
    _add_loop_option(serve)
    serve.set_defaults(func=_serve)

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


def _server_options(args: argparse.Namespace, fd_limit: int | None = None) -> ServerOptions:
    """The ServerOptions of ``serve``; without ``--max-connections`` the cap comes from
    ``fd_limit`` (the open file limit), shared among the listeners."""
    context = None
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            raise SystemExit('aiosip-ws serve: --tls-cert and --tls-key go together')
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(args.tls_cert, args.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise SystemExit('aiosip-ws serve: cannot load the TLS certificate/key: %s' % exc) from None
    options = ServerOptions(ssl=context, allowed_origins=args.allow_origin, max_size=args.max_size,
                            ping_interval=args.ping_interval or None,
                            ping_timeout=args.ping_timeout,
                            send_timeout=args.send_timeout or None,
                            crlf_ping_interval=args.crlf_ping_interval or None,
                            max_connections=_connection_cap(args, fd_limit),
                            max_connections_per_ip=args.max_connections_per_ip,
                            max_bad_messages=args.max_bad_messages or None,
                            open_timeout=args.open_timeout,
                            max_send_queue=args.max_send_queue or None,
                            transaction_timeout=args.transaction_timeout,
                            max_handshakes_per_second=args.max_handshakes_per_second or None,
                            handshake_burst=args.handshake_burst,
                            trusted_proxies=tuple(args.trusted_proxy),
                            proxy_protocol=args.proxy_protocol, reuse_port=args.reuse_port)
    options.validate()                # a ConfigurationError: main() prints it, exit status 2
    return options


def _connection_cap(args: argparse.Namespace, fd_limit: int | None) -> int | None:
    from ..serve.fdlimit import connection_cap
    if args.max_connections is not None:                  # given: it wins (0: no cap)
        return args.max_connections or None
    if fd_limit is None:
        return None
    listeners = len(args.listen or ()) or 1
    cap = connection_cap(fd_limit, listeners)
    logger.info('at most %d connections per listener: the open file limit %d, minus '
                'max(64, 5%%) for other descriptors%s (--max-connections to change)', cap,
                fd_limit, ', shared among %d listeners' % listeners if listeners > 1 else '')
    return cap


async def _serve(args: argparse.Namespace) -> int:
    from ..serve.fdlimit import raise_open_file_limit
    from ..serve.registrar import Registrar
    from ..serve.relay import RelayServer
    from ..transport.accept import AcceptFailureHandler
    from ..transport.throttle import LogThrottle
    urls = args.listen or ['ws://127.0.0.1:8080/']
    if args.workers:
        if not args.redis:
            raise ConfigurationError('--workers needs --redis URL: the workers share their '
                                     'bindings there')
        from .workers import supervise
        return await supervise(args, urls)
    base = _server_options(args, raise_open_file_limit())
    jwt_secret = args.jwt_secret or os.environ.get('AIOSIP_WS_JWT_SECRET')
    if jwt_secret:
        from ..serve.auth import TokenAuthenticator
        domains = args.domain or ([args.realm] if args.realm else [])
        domain = domains[0] if domains else None          # for a sub that is a bare user
        base = dataclasses.replace(base, authenticate=TokenAuthenticator(
            jwt_secret, leeway=args.jwt_leeway, audience=args.jwt_audience,
            issuer=args.jwt_issuer, domain=domain))
    limits = RelayLimits(max_pending=args.max_pending,
                         max_pending_per_connection=args.max_pending_per_connection,
                         max_requests_per_second=args.max_requests_per_second or None,
                         burst=args.burst, rate_limit_grace=args.rate_limit_grace)
    server = RelayServer(server_options=base, limits=limits,
                         registrar=Registrar(max_contacts=args.max_contacts_per_aor),
                         auth=_authenticator(args), timer_c=args.timer_c,
                         admin_allow=args.metrics_allow or ('127.0.0.0/8', '::1/128'),
                         redis_url=args.redis, node_id=args.node_id, advertise=args.advertise,
                         next_hops=_next_hops(args.route),
                         route_unregistered=args.route_unregistered,
                         domains=args.domain or ([args.realm] if args.realm else []),
                         edge_registrar=args.registrar, flow_secret=_flow_secret(args))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    if base.ssl is not None:
        loop.add_signal_handler(signal.SIGHUP, _reload_certificate, base.ssl, args)
    loop.add_signal_handler(signal.SIGUSR1, _start_drain, server, args.drain_window)
    accept_failures = AcceptFailureHandler()      # out of descriptors: summaries, no tracebacks
    accept_failures.install(loop)
    try:
        for url in urls:
            if url.lower().startswith(('wss:', 'tls:')) and base.ssl is None:
                raise SystemExit('aiosip-ws serve: %s needs --tls-cert and --tls-key' % url)
        try:
            listeners = await server.start(*urls)
        except OSError as exc:
            print('aiosip-ws serve: cannot listen: %s' % exc, file=sys.stderr)
            return 2
        for listener in listeners:
            print('aiosip-ws serve: listening on %s' % listener.bound_url, flush=True)
            if (server.auth is None and base.authenticate is None
                    and not _is_loopback(urllib.parse.urlsplit(listener.bound_url).hostname
                                         or '')):
                logger.warning('%s is reachable beyond this machine and serve checks no '
                               'credentials: anyone may register as anyone (--users FILE '
                               '--realm REALM enables Digest authentication)',
                               listener.bound_url)
        # Everything alive now (modules, classes, the app) lives as long as the process:
        # out of the collector's sight, a full (generation 2) collection under load scans
        # half as many objects.  With 1,000 clients this took the p99 REGISTER latency
        # from 20-100 ms (60-160 ms pauses) to about 5 ms; see benchmarks/bench.py.
        gc.collect()
        gc.freeze()
        await stop.wait()
        print('aiosip-ws serve: shutting down', flush=True)
        await server.close(spread=args.shutdown_window)
        await accept_failures.settle()            # asyncio's accept retries of closed listeners
        left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        if left:
            logger.error('tasks left behind at shutdown: %r', left)
            return 1
        print('aiosip-ws serve: stopped cleanly', flush=True)
        return 0
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1):
            loop.remove_signal_handler(signum)
        accept_failures.uninstall()
        LogThrottle.flush_all()                    # the "N similar suppressed" lines still due


def _reload_certificate(context: ssl.SSLContext, args: argparse.Namespace) -> None:
    """SIGHUP: load --tls-cert/--tls-key again into the listeners' TLS context: new
    handshakes get the new certificate, established connections keep theirs.  A file
    that cannot be loaded leaves the old certificate in place (logged)."""
    try:
        context.load_cert_chain(args.tls_cert, args.tls_key)
    except (OSError, ssl.SSLError) as exc:
        logger.error('SIGHUP: the TLS certificate was not reloaded, the old one stays: %s', exc)
        return
    logger.info('SIGHUP: reloaded the TLS certificate %s', args.tls_cert)


def _start_drain(server: Any, window: float) -> None:
    """SIGUSR1: drain (see RelayServer.drain); a second signal does nothing more."""
    if server.draining:
        return
    server.spawn(server.drain(window))


def _add_loop_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--loop', choices=('auto', 'asyncio', 'uvloop'),
                        default=os.environ.get('AIOSIP_WS_LOOP', 'asyncio'),
                        help='the event loop: the standard asyncio one, uvloop (pip install '
                        '"aiosip-ws[fast]"), or auto: uvloop when installed (default '
                        '%(default)s; $AIOSIP_WS_LOOP).  On uvloop, accept() failures '
                        '(out of descriptors) are not summarised in the log')


def _run(coro: Any, loop: str) -> Any:
    """``asyncio.run(coro)`` on the event loop ``--loop`` chose."""
    uvloop = None
    if loop in ('auto', 'uvloop'):
        try:
            import uvloop
        except ImportError:
            if loop == 'uvloop':
                coro.close()
                raise ConfigurationError('--loop uvloop needs uvloop: pip install '
                                         '"aiosip-ws[fast]"') from None
    if uvloop is None:
        logger.debug('event loop: asyncio')
        return asyncio.run(coro)
    logger.info('event loop: uvloop %s', uvloop.__version__)
    return uvloop.run(coro)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip('[]')).is_loopback
    except ValueError:
        return host.lower() == 'localhost'


def _flow_secret(args: argparse.Namespace) -> bytes | None:
    secret = args.flow_secret or os.environ.get('AIOSIP_WS_FLOW_SECRET')
    if secret and not args.registrar:
        raise ConfigurationError('--flow-secret needs --registrar (edge proxy mode)')
    return secret.encode('utf-8') if secret else None


def _next_hops(routes: list[str]) -> dict[str, str]:
    hops: dict[str, str] = {}
    for route in routes:
        domain, sep, uri = route.partition('=')
        if not sep or not domain.strip() or not uri.strip():
            raise ConfigurationError('--route takes DOMAIN=SIP-URI, e.g. '
                                     'pbx.example.com=sip:192.0.2.10:5060 (got %r)' % route)
        hops[domain.strip()] = uri.strip()
    return hops


def _authenticator(args: argparse.Namespace) -> Any:
    """The DigestAuthenticator of ``--users`` and its options, or None without it."""
    from ..serve.auth import DigestAuthenticator, UserFile
    if args.users is None:
        for flag in ('realm', 'domain', 'nonce_secret'):
            if flag == 'domain' and (args.route or args.route_unregistered):
                continue                      # --domain says which domains are not routed
            if getattr(args, flag) and not (flag == 'domain' and args.jwt_secret):
                raise ConfigurationError('--%s needs --users FILE' % flag.replace('_', '-'))
        return None
    if not args.realm:
        raise ConfigurationError('--users needs --realm REALM (the realm of its HA1 values)')
    users = UserFile.load(args.users)
    secret = args.nonce_secret or os.environ.get('AIOSIP_WS_NONCE_SECRET')
    algorithms = [a.strip() for a in args.digest_algorithms.split(',') if a.strip()]
    auth = DigestAuthenticator(users, args.realm, domains=args.domain or (),
                               algorithms=algorithms,
                               nonce_secret=secret.encode('utf-8') if secret else None,
                               nonce_lifetime=args.nonce_lifetime, trusted=args.trusted_peer)
    logger.info('digest authentication: %d user(s), realm %s, domains %s, %s', len(users),
                args.realm, ', '.join(sorted(auth.domains)), '/'.join(auth.algorithms))
    return auth


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


def _load_config(parser: argparse.ArgumentParser, argv: Sequence[str]) -> None:
    """``serve --config FILE``: the file's keys become the serve parser's defaults, so that
    flags on the command line win.  Unknown keys are an error that names them."""
    probe = argparse.ArgumentParser(add_help=False)
    probe.add_argument('command', nargs='?')
    probe.add_argument('--config')
    known, _ = probe.parse_known_args(argv)
    if known.command != 'serve' or not known.config:
        return
    if sys.version_info >= (3, 11):
        import tomllib
    else:                                            # pragma: no cover - Python 3.10
        import tomli as tomllib
    try:
        with open(known.config, 'rb') as file:
            config = tomllib.load(file)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigurationError('cannot read --config %s: %s' % (known.config, exc)) from None
    [serve] = [action.choices['serve'] for action in parser._actions
               if isinstance(action, argparse._SubParsersAction)]
    actions = {a.dest: a for a in serve._actions if a.dest not in ('help', 'config', 'func')}
    defaults = {}
    for key, value in config.items():
        dest = key.replace('-', '_')
        action = actions.get(dest)
        if action is None:
            raise ConfigurationError('--config %s: unknown option %r (known: %s)' % (
                known.config, key, ', '.join(sorted(a.replace('_', '-') for a in actions))))
        if isinstance(action, argparse._AppendAction):
            given = [a for a in argv if a.split('=', 1)[0] in action.option_strings]
            if given:              # the flags replace the file's list, not add to it
                continue
            if not isinstance(value, list):
                value = [value]
        if action.type is not None and not isinstance(value, (list, bool)):
            value = action.type(value)
        defaults[dest] = value
    serve.set_defaults(**defaults)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        _load_config(parser, argv if argv is not None else sys.argv[1:])
    except ConfigurationError as exc:
        print('aiosip-ws serve: %s' % exc, file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)      # (serve --workers re-runs it)
    level = getattr(args, 'log_level', 'INFO')
    logging.basicConfig(level=getattr(logging, level),
                        format='%(asctime)s %(levelname)s %(name)s: %(message)s')
    if getattr(args, 'log_format', 'text') == 'json':
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JSONFormatter())
    if level != 'DEBUG':
        logging.getLogger('websockets').setLevel(logging.WARNING)
    _setup_trace(getattr(args, 'trace', False))
    try:
        if getattr(args, 'target', None):
            _check_target(args.target, args.command)
        for option in ('aor', 'to', 'from_uri'):            # usage errors before any network
            value = getattr(args, option, None)
            if value:
                user_uri(value, '--%s' % option.replace('_uri', '').replace('_', '-'))
        loop = getattr(args, 'loop', 'asyncio')
        if getattr(args, 'proxy_protocol', False):
            if loop == 'uvloop':
                raise ConfigurationError('--proxy-protocol needs --loop asyncio: uvloop reads a '
                                         'connection before its PROXY header can be taken off')
            loop = 'asyncio'
        return _run(args.func(args), loop)
    except ConfigurationError as exc:
        print('aiosip-ws %s: %s' % (args.command, exc), file=sys.stderr)
        return 2
    except AiosipWSError as exc:
        print('aiosip-ws %s: %s' % (args.command, exc), file=sys.stderr)
        return 2 if args.command == 'serve' else 1
    except KeyboardInterrupt:
        return 130
