"""Every option of ``aiosip-ws serve``, once: :class:`ServeConfig`.

Each field is an option: its type, its default and its help text are here and nowhere
else.  The command line (``aiosip-ws serve --max-pending 100``) is made from these fields
(``--`` and the name with dashes), so is the TOML file of ``--config`` (the same names,
``max-pending = 100``), and a program that embeds serve builds one directly::

    from aiosip_ws.serve.config import ServeConfig
    from aiosip_ws.serve.run import run

    run(ServeConfig(listen=['ws://0.0.0.0:8080/'], max_pending=100))

:meth:`ServeConfig.validate` checks the options against each other (each error names
the option to change); :meth:`ServeConfig.from_mapping` reads a TOML table (an unknown
key is an error that names it).  What serve builds from the options (its
:class:`~aiosip_ws.options.ServerOptions`, :class:`~aiosip_ws.options.RelayLimits`, the
Digest and token authenticators, the next hops) is made by the methods here too, so
that :mod:`aiosip_ws.serve.run` and the command line build them the same way.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import ssl
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigurationError
from ..options import DEFAULT_MAX_SIZE, RelayLimits, ServerOptions
from ..transport.hep import parse_hep_url

__all__ = ['ServeConfig', 'OptionInfo', 'DEFAULT_LISTEN']

logger = logging.getLogger(__name__)

#: where serve listens when no ``listen`` is given
DEFAULT_LISTEN = 'ws://127.0.0.1:8080/'


def _option(default: Any, help: str, *, metavar: str | None = None,
            choices: tuple[str, ...] | None = None, env: str | None = None,
            hidden: bool = False, factory: Any = None) -> Any:
    metadata = {'help': help, 'metavar': metavar, 'choices': choices, 'env': env,
                'hidden': hidden}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class ServeConfig:
    """The options of ``aiosip-ws serve`` (see the module).  ``%(default)s`` in a help
    text stands for the field's default (:attr:`OptionInfo.help_text`)."""

    # -- where serve listens and where requests go -----------------------------------------
    listen: list[str] | None = _option(
        None, 'ws://HOST:PORT/PATH or wss://... to listen on (repeatable; default '
        'ws://127.0.0.1:8080/). A path other than / must match exactly. udp://HOST:PORT, '
        'tcp://HOST:PORT and tls://HOST:PORT (with --tls-cert) bridge SIP over UDP, TCP and '
        'TLS to WebSocket.', metavar='URL')
    route: list[str] = _option(
        None, 'send requests for DOMAIN to the next hop SIP-URI (an upstream proxy, PBX or '
        'gateway; sip:HOST[:PORT][;transport=tcp|tls]); * for every domain that is not a '
        '--domain (repeatable)', metavar='DOMAIN=SIP-URI', factory=list)
    route_unregistered: str | None = _option(
        None, 'where requests for unregistered users of a local domain go (default: 404)',
        metavar='SIP-URI')
    app: Any = _option(
        None, 'route with a Python app: FILE.py or package.module[:attribute], whose '
        'on_request, on_failure and on_in_dialog coroutines decide where requests go '
        '(see docs/routing.rst); SIGHUP loads it again. In Python: also an object',
        metavar='FILE.py|MODULE[:ATTR]')
    app_timeout: float = _option(
        5.0, 'longest time one call of an --app hook may take; past it the request gets 500 '
        'and a log line (default %(default)s)', metavar='SECONDS')
    credentials_cache: int = _option(
        10000, 'with an --app that has credentials(): the users kept in the cache (default '
        '%(default)s)', metavar='N')
    credentials_ttl: float = _option(
        60.0, 'with an --app that has credentials(): how long an answer, and a user not '
        'found, is kept (default %(default)s): a user added to the store can register this '
        'long after a failed attempt at most', metavar='SECONDS')
    credentials_rate: float = _option(
        50.0, 'with an --app that has credentials(): most user lookups a second (default '
        '%(default)s); more: a first challenge offers every algorithm, credentials get 503',
        metavar='N')
    registrar: str | None = _option(
        None, 'edge proxy mode (RFC 5626): forward every REGISTER to this registrar with a '
        'Path naming the client\'s connection by a signed flow token, keep no bindings, '
        'send other requests there too', metavar='SIP-URI')
    flow_secret: str | None = _option(
        None, 'HMAC key of the flow tokens (default: $AIOSIP_WS_FLOW_SECRET, else random per '
        'start); edges sharing it accept each other\'s tokens', metavar='SECRET',
        env='AIOSIP_WS_FLOW_SECRET')
    advertise: str | None = _option(
        None, 'the address serve writes in Via and Record-Route on UDP, TCP and TLS (when it '
        'listens on a wildcard address or sits behind NAT)', metavar='HOST[:PORT]')
    tls_cert: str | None = _option(None, 'PEM certificate chain for wss://', metavar='FILE')
    tls_key: str | None = _option(None, 'PEM private key for wss://', metavar='FILE')
    tls_keylog: str | None = _option(
        None, 'append the secrets of every TLS session (wss:// and tls:// listeners, and '
        'the TLS connections serve opens) to FILE in the NSS key log format, so that '
        'Wireshark or tshark can decrypt a capture; anyone who can read FILE can, too (a '
        'WARNING at start)', metavar='FILE')
    allow_origin: list[str] | None = _option(
        None, 'allowed Origin (repeatable); others get HTTP 403. Default: any',
        metavar='ORIGIN')

    # -- connections -----------------------------------------------------------------------
    max_size: int = _option(
        DEFAULT_MAX_SIZE, 'largest WebSocket message (default %(default)s); bigger: close '
        '1009', metavar='BYTES')
    ping_interval: float = _option(
        20.0, 'WebSocket Ping interval, 0 to disable (default %(default)s)', metavar='SECONDS')
    ping_timeout: float = _option(
        20.0, 'a client that has not answered a Ping this long is closed (aborted when data '
        'waits for it) (default %(default)s)', metavar='SECONDS')
    send_timeout: float = _option(
        20.0, 'a connection where data waits and no byte leaves this long (its peer is gone '
        'or not reading) is aborted, 0 never (default %(default)s)', metavar='SECONDS')
    max_connections: int | None = _option(
        None, 'most WebSocket connections at once per --listen URL; more get HTTP 503, 0 for '
        'no cap (default: the open file limit, raised to its hard limit at start, minus '
        'max(64, 5%) for other descriptors, shared among the --listen URLs)', metavar='N')
    max_connections_per_ip: int | None = _option(
        None, 'most connections from one address; more get HTTP 503', metavar='N')
    max_bad_messages: int = _option(
        20, 'close a connection with 1008 (policy violation) once it has sent N SIP messages '
        'that cannot be parsed, 0 never (default %(default)s)', metavar='N')
    max_contacts_per_aor: int = _option(
        10, 'most bindings one address-of-record may have; a REGISTER adding more gets 403 '
        '(refreshes and removals always pass; default %(default)s)', metavar='N')
    max_pending: int = _option(
        10000, 'most requests being relayed at once; more get 503 with Retry-After (default '
        '%(default)s)', metavar='N')
    max_pending_per_connection: int = _option(
        200, 'the same per connection, from it and towards it (default %(default)s)',
        metavar='N')
    max_requests_per_second: float = _option(
        500.0, 'sustained requests per second one connection may send, 0 for no limit; above '
        'it 503 with Retry-After (default %(default)s)', metavar='R')
    burst: int = _option(
        1000, 'requests a connection may send in a burst above that rate (default '
        '%(default)s)', metavar='N')
    rate_limit_grace: float = _option(
        10.0, 'a connection over the rate this long is closed with 1008 (default '
        '%(default)s)', metavar='SECONDS')
    max_send_queue: int = _option(
        1024 * 1024, 'most data waiting to be sent to one client; a client that stops reading '
        'is closed with 1008 beyond it (default %(default)s)', metavar='BYTES')
    transaction_timeout: float = _option(
        32.0, 'Timer F: how long a relayed request waits for its final response (default '
        '%(default)s)', metavar='SECONDS')
    max_handshakes_per_second: float = _option(
        1000.0, 'WebSocket handshakes accepted per second per listener, 0 for no cap; more get '
        'HTTP 503 with Retry-After (default %(default)s)', metavar='R')
    handshake_burst: int = _option(
        2000, 'handshakes accepted at once before that rate applies (default %(default)s)',
        metavar='N')
    shutdown_window: float = _option(
        2.0, 'on SIGINT/SIGTERM, close the clients spread over this long, so that they do not '
        'all reconnect in the same second (default %(default)s)', metavar='SECONDS')
    drain_window: float = _option(
        30.0, 'on SIGUSR1 (drain), refuse new clients with 503, turn /healthz to 503 and '
        'close the clients spread over this long (default %(default)s)', metavar='SECONDS')
    timer_c: float = _option(
        180.0, 'Timer C: how long a forked INVITE branch may ring after its last provisional '
        'response before serve CANCELs it (default %(default)s)', metavar='SECONDS')
    open_timeout: float = _option(
        10.0, 'time a client has to finish the handshake (default %(default)s)',
        metavar='SECONDS')
    crlf_ping_interval: float = _option(
        0.0, 'send RFC 5626 CRLF pings this often, 0 to disable (default 0)',
        metavar='SECONDS')

    # -- who may do what ---------------------------------------------------------------------
    users: str | None = _option(
        None, 'Digest authentication: the user file (USER:REALM:MD5-HA1[:SHA256-HA1[:AOR]] '
        'per line; an htdigest file works; see aiosip-ws passwd)', metavar='FILE')
    realm: str | None = _option(None, 'the Digest realm (needed with --users)',
                                metavar='REALM')
    domain: list[str] | None = _option(
        None, 'a local domain, repeatable (default: the realm): requests From these are '
        'challenged, users own sip:USER@DOMAIN', metavar='DOMAIN')
    digest_algorithms: str = _option(
        'SHA-256,MD5', 'challenges offered, in this order (default %(default)s: RFC 8760 '
        'clients take the first they support; JsSIP and SIP.js read only the last, and only '
        'MD5)', metavar='LIST')
    nonce_secret: str | None = _option(
        None, 'HMAC key of the nonces, the same on every node (default: random per start); '
        'also from $AIOSIP_WS_NONCE_SECRET', metavar='SECRET', env='AIOSIP_WS_NONCE_SECRET')
    nonce_lifetime: float = _option(
        300.0, 'how long a nonce is good; then stale=true (default %(default)s)',
        metavar='SECONDS')
    trusted_peer: list[str] = _option(
        None, 'addresses never challenged (upstream proxies, trunks), repeatable',
        metavar='CIDR', factory=list)
    jwt_secret: str | None = _option(
        None, 'handshake authentication: a JWT (HS256) signed with SECRET in ?token= or a '
        'token cookie, its sub the AOR the connection may use; also from '
        '$AIOSIP_WS_JWT_SECRET (needs aiosip-ws[jwt])', metavar='SECRET',
        env='AIOSIP_WS_JWT_SECRET')
    jwt_leeway: float = _option(
        0.0, 'clock skew allowed on exp and nbf (default %(default)s)', metavar='SECONDS')
    jwt_audience: str | None = _option(None, 'the aud the tokens must carry', metavar='AUD')
    jwt_issuer: str | None = _option(None, 'the iss the tokens must carry', metavar='ISS')
    trusted_proxy: list[str] = _option(
        None, 'a reverse proxy or load balancer whose X-Forwarded-For / Forwarded names the '
        'client (ignored from anyone else), repeatable', metavar='CIDR', factory=list)

    # -- media -------------------------------------------------------------------------------
    rtpengine: list[str] = _option(
        None, 'an rtpengine\'s ng control port (its --listen-ng), repeatable: a set; a call '
        'sticks to one, new calls go round the live ones. With it, calls between a browser '
        '(WebRTC) and a plain RTP phone get their media through rtpengine', metavar='udp://HOST:PORT',
        factory=list)
    rtpengine_timeout: float = _option(
        5.0, 'how long an ng command waits for rtpengine\'s reply (sent again each second) '
        'before the relay counts as down (default %(default)s)', metavar='SECONDS')
    rtpengine_retry: float = _option(
        60.0, 'a relay that let a command time out gets no new call for this long, then is '
        'tried again (default %(default)s)', metavar='SECONDS')
    media_relay: str | None = _option(
        None, 'which calls go through rtpengine: auto (the default with --rtpengine) when one '
        'leg is WebRTC and the other plain RTP, always every call, never none',
        choices=('auto', 'always', 'never'))
    media_profile: list[str] = _option(
        None, 'say what a party speaks when serve would guess wrong (TARGET: an AOR, a domain '
        'or a CIDR), repeatable; by default a party that registered over ws/wss or whose '
        'Contact has +sip.ice is webrtc', metavar='TARGET=webrtc|plain', factory=list)
    media_mismatch: str = _option(
        'warn', 'without --rtpengine, a call between a WebRTC and a plain RTP party: warn (a '
        'rate-limited log line and a metric; the call goes on, without audio) or refuse (488 '
        'with a Warning) (default %(default)s)', choices=('warn', 'refuse'))
    rtpengine_flags_webrtc: str | None = _option(
        None, 'your own rtpengine flags towards a WebRTC party, in Kamailio\'s syntax '
        '("ICE=force UDP/TLS/RTP/SAVPF SDES-off ..."; default: serve chooses them)',
        metavar='FLAGS')
    rtpengine_flags_plain: str | None = _option(
        None, 'the same towards a plain RTP party ("ICE=remove RTP/AVP rtcp-mux-demux ...")',
        metavar='FLAGS')

    # -- several processes, several nodes ----------------------------------------------------
    redis: str | None = _option(
        None, 'share bindings with the other nodes on this Redis and forward to them through '
        'it (redis://HOST:PORT/DB; needs aiosip-ws[cluster])', metavar='URL')
    workers: int = _option(
        0, 'run N serve processes on this machine, each a node of the cluster, sharing the '
        'listening ports (SO_REUSEPORT); needs --redis', metavar='N')
    reuse_port: bool = _option(False, 'listen with SO_REUSEPORT (what --workers gives each '
                               'worker)', hidden=True)
    node_id: str | None = _option(
        None, 'this node\'s name in the cluster (letters, digits, "-"; default: the host '
        'name); unique per node', metavar='NAME')
    proxy_protocol: bool = _option(
        False, 'every connection starts with a HAProxy PROXY protocol header (v1 or v2, '
        'before TLS) naming the client; only --trusted-proxy addresses may connect (HAProxy '
        'send-proxy-v2); needs --loop asyncio')
    metrics_allow: list[str] | None = _option(
        None, 'who may GET /metrics and /registrations on the listening port, repeatable '
        '(default: loopback, 127.0.0.0/8 and ::1)', metavar='CIDR')

    # -- seeing inside: HEP, traces ------------------------------------------------------------
    hep: list[str] = _option(
        None, 'send every SIP message serve receives or sends (WebSocket and TLS decrypted) '
        'as HEP v3 to a collector: Homer (heplify-server) or sngrep -L (repeatable)',
        metavar='udp://HOST:PORT|tcp://HOST:PORT', factory=list)
    hep_id: int = _option(
        2001, 'the capture agent id in each HEP packet (default %(default)s)', metavar='N')
    hep_password: str | None = _option(
        None, 'the HEP auth key the collector expects (sngrep: eep.listen.pass; default: '
        '$AIOSIP_WS_HEP_PASSWORD)', metavar='KEY', env='AIOSIP_WS_HEP_PASSWORD')
    admin_token: str | None = _option(
        None, 'open the admin WebSocket (subprotocol aiosip-ws.admin on the listening ports: '
        'aiosip-ws trace) to clients that present this token (Authorization: Bearer, or the '
        'subprotocol aiosip-ws.token.BASE64URL; never in the URL); default: '
        '$AIOSIP_WS_ADMIN_TOKEN, else no admin WebSocket', metavar='TOKEN',
        env='AIOSIP_WS_ADMIN_TOKEN')
    admin_origin: list[str] = _option(
        None, 'an Origin allowed on the admin WebSocket (repeatable); a client that sends '
        'another Origin (a browser page) is refused', metavar='ORIGIN', factory=list)
    call_history: int = _option(
        1000, 'with --admin-token: the calls and transactions /calls keeps, newest last '
        'active kept (default %(default)s)', metavar='N')
    call_history_age: float = _option(
        3600.0, 'with --admin-token: forget a call this long after its last message '
        '(default %(default)s)', metavar='SECONDS')
    max_tracers: int = _option(
        4, 'most live traces at once on the admin WebSocket (default %(default)s)',
        metavar='N')
    trace_secrets: bool = _option(
        False, 'leave Digest responses, Bearer tokens and Cookie values in what HEP and traces '
        'send (redacted by default)')
    trace_bodies: bool = _option(
        False, 'leave the bodies of MESSAGE requests in what HEP and traces send (removed by '
        'default; SDP and other bodies always stay)')

    # -- the process -------------------------------------------------------------------------
    log_format: str = _option(
        'text', 'log lines as text or as one JSON object each (default %(default)s)',
        choices=('text', 'json'))
    log_level: str = _option(
        'INFO', 'log level (default %(default)s); DEBUG also logs every SIP message',
        choices=('DEBUG', 'INFO', 'WARNING', 'ERROR'))
    loop: str | None = _option(
        None, 'the event loop: the standard asyncio one, uvloop (pip install '
        '"aiosip-ws[fast]"), or auto: uvloop when installed (default $AIOSIP_WS_LOOP, else '
        'asyncio).  On uvloop, accept() failures (out of descriptors) are not summarised in '
        'the log', choices=('auto', 'asyncio', 'uvloop'), env='AIOSIP_WS_LOOP')

    # -- reading options -----------------------------------------------------------------
    @classmethod
    def options(cls) -> Iterator[OptionInfo]:
        """Each option: its name, type and help (what the command line is made of)."""
        for item in dataclasses.fields(cls):
            yield OptionInfo(item)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], source: str = 'the configuration'
                     ) -> dict[str, Any]:
        """The field values of a TOML table (``max-pending = 100``; a single value for a
        list option is a list of one), checked against each option's type.  An unknown
        key or a value of the wrong type is a :class:`ConfigurationError` naming it."""
        known = {info.name: info for info in cls.options()}
        out: dict[str, Any] = {}
        for key, value in values.items():
            info = known.get(key.replace('-', '_'))
            if info is None:
                raise ConfigurationError('%s: unknown option %r (known: %s)' % (
                    source, key, ', '.join(sorted(i.flag_name for i in known.values()))))
            out[info.name] = info.convert(value, source)
        return out

    def validate(self) -> None:
        """Check the options against each other; a :class:`ConfigurationError` says which
        to change.  (Numbers are checked again by the options they become.)"""
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigurationError('--tls-cert and --tls-key go together')
        for url in self.hep:
            parse_hep_url(url)
        if self.call_history < 1 or self.call_history_age <= 0:
            raise ConfigurationError('--call-history and --call-history-age: give at least 1 '
                                     'call and a positive age')
        if self.max_tracers < 1:
            raise ConfigurationError('--max-tracers %d: give at least 1' % self.max_tracers)
        admin_token = self.secret('admin_token')
        if admin_token is not None and len(admin_token) < 16:
            raise ConfigurationError('--admin-token: give at least 16 characters (it opens '
                                     'every SIP message to whoever has it)')
        if not 0 <= self.hep_id <= 0xFFFFFFFF:
            raise ConfigurationError('--hep-id %d: give a number from 0 to 4294967295'
                                     % self.hep_id)
        for url in self.listen_urls:
            if url.lower().startswith(('wss:', 'tls:')) and not self.tls_cert:
                raise ConfigurationError('%s needs --tls-cert and --tls-key' % url)
        if not self.app_timeout > 0:
            raise ConfigurationError('--app-timeout %r: give a positive number of seconds'
                                     % self.app_timeout)
        if self.app is not None and not isinstance(self.app, str) and self.workers:
            raise ConfigurationError('app: with --workers, give the app as FILE.py or '
                                     'package.module[:attribute] (each worker loads it)')
        if self.workers < 0:
            raise ConfigurationError('--workers must be at least 1')
        if self.workers and not self.redis:
            raise ConfigurationError('--workers needs --redis URL: the workers share their '
                                     'bindings there')
        if self.proxy_protocol and self.event_loop() == 'uvloop':
            raise ConfigurationError('--proxy-protocol needs --loop asyncio: uvloop reads a '
                                     'connection before its PROXY header can be taken off')
        if self.secret('flow_secret') and not self.registrar:
            raise ConfigurationError('--flow-secret needs --registrar (edge proxy mode)')
        self.next_hops()
        self.media_settings()
        if self.credentials_cache < 1 or not self.credentials_ttl > 0 or \
                not self.credentials_rate > 0:
            raise ConfigurationError('--credentials-cache, --credentials-ttl and '
                                     '--credentials-rate: give positive numbers')
        if self.users is None and self.app is None:
            for name in ('realm', 'domain', 'nonce_secret'):
                if name == 'domain' and (self.route or self.route_unregistered):
                    continue                  # --domain says which domains are not routed
                if getattr(self, name) and not (name == 'domain' and self.secret('jwt_secret')):
                    raise ConfigurationError('--%s needs --users FILE' % name.replace('_', '-'))
        elif self.users is not None and not self.realm:
            raise ConfigurationError('--users needs --realm REALM (the realm of its HA1 values)')

    # -- what serve is built from ----------------------------------------------------------
    @property
    def listen_urls(self) -> list[str]:
        return list(self.listen or [DEFAULT_LISTEN])

    @property
    def domains(self) -> list[str]:
        """The local domains: ``domain``, else the realm."""
        return list(self.domain or ([self.realm] if self.realm else []))

    def event_loop(self) -> str:
        """``loop``, else $AIOSIP_WS_LOOP, else ``asyncio``; ``auto`` is ``asyncio`` with
        ``proxy_protocol`` (uvloop cannot take the PROXY header off first)."""
        loop = self.loop or os.environ.get('AIOSIP_WS_LOOP') or 'asyncio'
        if loop not in ('auto', 'asyncio', 'uvloop'):
            raise ConfigurationError('$AIOSIP_WS_LOOP is auto, asyncio or uvloop (got %r)'
                                     % loop)
        return 'asyncio' if self.proxy_protocol and loop == 'auto' else loop

    def secret(self, name: str) -> str | None:
        """A secret option (``flow_secret``, ``nonce_secret``, ``jwt_secret``,
        ``hep_password``, ``admin_token``), else its environment variable."""
        value: str | None = getattr(self, name)
        env = OptionInfo(next(f for f in dataclasses.fields(self) if f.name == name)).env
        return value or (os.environ.get(env) if env else None) or None

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context of the wss:// and tls:// listeners (None without a certificate)."""
        if not (self.tls_cert and self.tls_key):
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.load_certificate(context)
        self.log_keys(context)
        return context

    def client_ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context of the connections serve opens (next hops over ``sips:``, TLS
        or ``wss``): the default one, with the key log when ``tls_keylog`` is given (None
        without it: each connection takes the default)."""
        if not self.tls_keylog:
            return None
        context = ssl.create_default_context()
        self.log_keys(context)
        return context

    def log_keys(self, context: ssl.SSLContext) -> None:
        """``tls_keylog``, if given, on ``context``."""
        if not self.tls_keylog:
            return
        try:
            context.keylog_filename = self.tls_keylog
        except OSError as exc:
            raise ConfigurationError('--tls-keylog %s: %s' % (self.tls_keylog,
                                                              exc.strerror)) from None

    def load_certificate(self, context: ssl.SSLContext) -> None:
        try:
            context.load_cert_chain(self.tls_cert or '', self.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError('cannot load the TLS certificate/key: %s' % exc) from None

    def server_options(self, fd_limit: int | None = None, *,
                       context: ssl.SSLContext | None = None) -> ServerOptions:
        """The listeners' :class:`ServerOptions`; without ``max_connections`` the cap comes
        from ``fd_limit`` (the open file limit), shared among the listeners."""
        options = ServerOptions(
            ssl=context if context is not None else self.ssl_context(),
            allowed_origins=self.allow_origin, max_size=self.max_size,
            ping_interval=self.ping_interval or None, ping_timeout=self.ping_timeout,
            send_timeout=self.send_timeout or None,
            crlf_ping_interval=self.crlf_ping_interval or None,
            max_connections=self.connection_cap(fd_limit),
            max_connections_per_ip=self.max_connections_per_ip,
            max_bad_messages=self.max_bad_messages or None, open_timeout=self.open_timeout,
            max_send_queue=self.max_send_queue or None,
            transaction_timeout=self.transaction_timeout,
            max_handshakes_per_second=self.max_handshakes_per_second or None,
            handshake_burst=self.handshake_burst, trusted_proxies=tuple(self.trusted_proxy),
            proxy_protocol=self.proxy_protocol, reuse_port=self.reuse_port)
        options.validate()
        return options

    def connection_cap(self, fd_limit: int | None) -> int | None:
        """``max_connections`` (0: no cap), else the share of ``fd_limit`` of each listener."""
        from .fdlimit import connection_cap
        if self.max_connections is not None:              # given: it wins (0: no cap)
            return self.max_connections or None
        if fd_limit is None:
            return None
        listeners = len(self.listen or ()) or 1
        cap = connection_cap(fd_limit, listeners)
        logger.info('at most %d connections per listener: the open file limit %d, minus '
                    'max(64, 5%%) for other descriptors%s (--max-connections to change)', cap,
                    fd_limit, ', shared among %d listeners' % listeners if listeners > 1
                    else '')
        return cap

    def limits(self) -> RelayLimits:
        return RelayLimits(max_pending=self.max_pending,
                           max_pending_per_connection=self.max_pending_per_connection,
                           max_requests_per_second=self.max_requests_per_second or None,
                           burst=self.burst, rate_limit_grace=self.rate_limit_grace)

    def next_hops(self) -> dict[str, str]:
        """``route`` as domain -> SIP URI."""
        hops: dict[str, str] = {}
        for route in self.route:
            domain, sep, uri = route.partition('=')
            if not sep or not domain.strip() or not uri.strip():
                raise ConfigurationError('--route takes DOMAIN=SIP-URI, e.g. '
                                         'pbx.example.com=sip:192.0.2.10:5060 (got %r)' % route)
            hops[domain.strip()] = uri.strip()
        return hops

    def media_settings(self) -> Any:
        """The :class:`~aiosip_ws.serve.media.MediaSettings` of the media options, checked."""
        from .media import MediaSettings
        settings = MediaSettings(
            rtpengine=list(self.rtpengine), timeout=self.rtpengine_timeout,
            retry=self.rtpengine_retry, mode=self.media_relay,
            profiles=list(self.media_profile), flags_webrtc=self.rtpengine_flags_webrtc,
            flags_plain=self.rtpengine_flags_plain, mismatch=self.media_mismatch)
        settings.validate()
        return settings

    def flow_secret_bytes(self) -> bytes | None:
        secret = self.secret('flow_secret')
        return secret.encode('utf-8') if secret else None

    def authenticator(self, store: Any = None) -> Any:
        """The :class:`~aiosip_ws.serve.auth.DigestAuthenticator` of ``users`` (or of an
        app's credentials, ``store``), or None."""
        from .auth import DigestAuthenticator, UserFile
        if self.users is None and store is None:
            return None
        users = store if store is not None else UserFile.load(str(self.users))
        secret = self.secret('nonce_secret')
        algorithms = [a.strip() for a in self.digest_algorithms.split(',') if a.strip()]
        auth = DigestAuthenticator(users, self.realm or '', domains=self.domain or (),
                                   algorithms=algorithms,
                                   nonce_secret=secret.encode('utf-8') if secret else None,
                                   nonce_lifetime=self.nonce_lifetime,
                                   trusted=self.trusted_peer)
        logger.info('digest authentication: %s, realm %s, domains %s, %s',
                    'users from the app' if store is not None else '%d user(s)' % len(users),
                    self.realm, ', '.join(sorted(auth.domains)), '/'.join(auth.algorithms))
        return auth

    def token_authenticator(self) -> Any:
        """The handshake's :class:`~aiosip_ws.serve.auth.TokenAuthenticator` (JWT), or None."""
        secret = self.secret('jwt_secret')
        if not secret:
            return None
        from .auth import TokenAuthenticator
        domains = self.domains
        return TokenAuthenticator(secret, leeway=self.jwt_leeway, audience=self.jwt_audience,
                                  issuer=self.jwt_issuer, domain=domains[0] if domains else None)

    def to_toml(self) -> str:
        """The options that differ from their defaults, as a TOML file ``--config`` reads
        (the workers of ``--workers`` are started with one)."""
        lines = []
        for info in self.options():
            value = getattr(self, info.name)
            if value == info.default:
                continue
            if value is None:
                continue
            lines.append('%s = %s' % (info.flag_name, json.dumps(value, ensure_ascii=False)))
        return '\n'.join(lines) + '\n'


class OptionInfo:
    """One option of :class:`ServeConfig`, as the command line and ``--config`` see it."""

    def __init__(self, item: dataclasses.Field[Any]) -> None:
        self.name = item.name
        self.help: str = item.metadata['help']
        self.metavar: str | None = item.metadata['metavar']
        self.choices: tuple[str, ...] | None = item.metadata['choices']
        self.env: str | None = item.metadata['env']
        self.hidden: bool = item.metadata['hidden']
        if item.default_factory is not dataclasses.MISSING:
            self.default: Any = item.default_factory()
        else:
            self.default = item.default
        kind = str(item.type)
        #: list options are repeatable flags
        self.repeatable = kind.startswith('list[')
        #: the type of one value
        self.type: type = (bool if kind == 'bool' else int if kind.startswith('int')
                           else float if kind.startswith('float') else str)

    @property
    def help_text(self) -> str:
        """The help, ``%(default)s`` replaced by the default."""
        return self.help.replace('%(default)s', str(self.default))

    @property
    def flag_name(self) -> str:
        """The name on the command line (without ``--``) and in a TOML file."""
        return self.name.replace('_', '-')

    def convert(self, value: Any, source: str) -> Any:
        """A TOML value as this option's (a single value of a list option: a list of one)."""
        if self.repeatable:
            values = value if isinstance(value, list) else [value]
            return [self._one(v, source) for v in values]
        return self._one(value, source)

    def _one(self, value: Any, source: str) -> Any:
        if self.type is bool:
            if not isinstance(value, bool):
                raise ConfigurationError('%s: %s takes true or false (got %r)'
                                         % (source, self.flag_name, value))
            return value
        if isinstance(value, (list, dict, bool)):
            raise ConfigurationError('%s: %s takes one %s (got %r)'
                                     % (source, self.flag_name, self.type.__name__, value))
        try:
            converted = self.type(value)
        except (TypeError, ValueError):
            raise ConfigurationError('%s: %s takes a %s (got %r)' % (
                source, self.flag_name, 'number' if self.type is not str else 'string',
                value)) from None
        if self.choices is not None and converted not in self.choices:
            raise ConfigurationError('%s: %s is one of %s (got %r)' % (
                source, self.flag_name, ', '.join(self.choices), value))
        return converted
