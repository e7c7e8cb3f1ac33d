"""serve's life cycle: :func:`run` a :class:`~aiosip_ws.serve.config.ServeConfig` until
SIGINT or SIGTERM.

:func:`run` picks the event loop (``config.loop``) and runs :func:`serve` on it, which
is what ``aiosip-ws serve`` does once its flags are read:

* it raises the open file limit to its hard limit (the connection caps follow from it),
  builds the server from the options and listens on every ``listen`` URL, printing
  ``aiosip-ws serve: listening on URL`` for each;
* SIGHUP (or the admin ``reload`` action) loads the TLS certificate again (new handshakes
  get it), the ``--users`` file and the ``--app``, SIGUSR1 drains
  (``drain_window``), SIGINT and SIGTERM close the clients over ``shutdown_window`` and
  stop; accept() failures (out of descriptors) are summarised, not logged one by one;
* what is alive once it listens is frozen out of the garbage collector's sight (a full
  collection under load then scans half as many objects);
* with ``workers``, it runs the workers' supervisor (:mod:`aiosip_ws.serve.workers`)
  instead: that many serve processes, each a node of the cluster.

It returns the exit status: 0 after a clean stop, 1 if tasks were left behind (logged),
2 when it could not listen.  Logging is the program's: :func:`run` configures none.
"""
from __future__ import annotations

import asyncio
import functools
import gc
import importlib
import ipaddress
import logging
import signal
import ssl
import sys
import urllib.parse
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import ConfigurationError, RoutingError
from ..transport.accept import AcceptFailureHandler
from ..transport.throttle import LogThrottle
from .config import ServeConfig
from .fdlimit import raise_open_file_limit

if TYPE_CHECKING:
    from .relay import RelayServer

__all__ = ['run', 'serve', 'run_on_loop']

logger = logging.getLogger(__name__)

T = TypeVar('T')


def run(config: ServeConfig, *, setup: Callable[[RelayServer], None] | None = None) -> int:
    """Run serve with ``config`` until SIGINT or SIGTERM; the exit status (see the module).
    ``setup(server)`` sees the :class:`~aiosip_ws.serve.relay.RelayServer` once it is
    built, before it listens: where a program subscribes to its events or adds stages."""
    config.validate()
    return run_on_loop(serve(config, setup=setup), config.event_loop())


#: the young generation's threshold serve runs with (Python's default: 700 allocations)
GC_YOUNG_THRESHOLD = 10_000


def _collect_less() -> None:
    """Each call leaves its transactions alive for 32 s (Timers J, L, M), so every young
    collection promoted them, and the middle and full collections walked them again: at
    the default threshold the collector took 5 % of serve's CPU in bench part (j), at
    10,000 about 2 % (13 young collections where there were 179, and no middle one)."""
    young, middle, full = gc.get_threshold()
    if 0 < young < GC_YOUNG_THRESHOLD:
        gc.set_threshold(GC_YOUNG_THRESHOLD, middle, full)


def run_on_loop(coro: Coroutine[Any, Any, T], loop: str) -> T:
    """``asyncio.run(coro)`` on the event loop ``loop`` names (``asyncio``, ``uvloop``, or
    ``auto``: uvloop when it is installed)."""
    uvloop: Any = None
    if loop in ('auto', 'uvloop'):
        try:
            uvloop = importlib.import_module('uvloop')
        except ImportError:
            if loop == 'uvloop':
                coro.close()
                raise ConfigurationError('--loop uvloop needs uvloop: pip install '
                                         '"aiosip-ws[fast]"') from None
    if uvloop is None:
        logger.debug('event loop: asyncio')
        return asyncio.run(coro)
    logger.info('event loop: uvloop %s', uvloop.__version__)
    result: T = uvloop.run(coro)
    return result


async def serve(config: ServeConfig, *,
                setup: Callable[[RelayServer], None] | None = None) -> int:
    """:func:`run`'s work, on the running loop (see the module)."""
    from .registrar import Registrar
    from .relay import RelayServer
    config.validate()
    if config.workers:
        from .workers import supervise
        return await supervise(config)
    base = config.server_options(raise_open_file_limit())
    if config.tls_keylog:
        logger.warning('--tls-keylog %s: the secrets of every TLS session go there; whoever '
                       'reads that file can decrypt captures of them', config.tls_keylog)
    token = config.token_authenticator()
    if token is not None:
        base.authenticate = token
    server = RelayServer(server_options=base, limits=config.limits(),
                         registrar=Registrar(max_contacts=config.max_contacts_per_aor),
                         auth=config.authenticator(), timer_c=config.timer_c,
                         admin_allow=config.metrics_allow or ('127.0.0.0/8', '::1/128'),
                         redis_url=config.redis, node_id=config.node_id,
                         advertise=config.advertise, next_hops=config.next_hops(),
                         route_unregistered=config.route_unregistered,
                         domains=config.domains, edge_registrar=config.registrar,
                         flow_secret=config.flow_secret_bytes(),
                         client_ssl=config.client_ssl_context(),
                         media=config.media_settings())
    if config.app is not None:
        try:
            _use_app(server, config, token)
        except (RoutingError, ConfigurationError) as exc:
            print('aiosip-ws serve: %s' % exc, file=sys.stderr)
            await server.close()
            return 2
    node = server.node                   # what HEP and the call history name this node
    admin_token = config.secret('admin_token')
    history = None
    if admin_token:
        from .admin import AdminSocket
        from .history import CallHistory
        server.server_options.admin = AdminSocket(
            server, token=admin_token, origins=config.admin_origin,
            max_tracers=config.max_tracers, secrets=config.trace_secrets,
            bodies=config.trace_bodies)
        history = CallHistory(size=config.call_history, age=config.call_history_age,
                              secrets=config.trace_secrets, bodies=config.trace_bodies,
                              node=node)
        history.follow(server.events)
        from .console import Console
        server.admin.console = Console(history, admin_token.encode(), server.admin.allowed)
    if setup is not None:
        setup(server)
    export = None
    if config.hep:
        from .hep import HepExport
        export = HepExport(config.hep, capture_id=config.hep_id,
                           password=config.secret('hep_password'), node=node,
                           secrets=config.trace_secrets, bodies=config.trace_bodies)
        try:
            await export.start(server.events)
        except (OSError, asyncio.TimeoutError) as exc:
            print('aiosip-ws serve: --hep: cannot reach the collector: %s' % exc,
                  file=sys.stderr)
            await export.close()
            return 2
        server.metrics.follow_hep(export)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    server.reload_hook = functools.partial(_reload, server, base.ssl, config)
    loop.add_signal_handler(signal.SIGHUP, server.reload_hook)
    loop.add_signal_handler(signal.SIGUSR1, _start_drain, server, config.drain_window)
    accept_failures = AcceptFailureHandler()      # out of descriptors: summaries, no tracebacks
    accept_failures.install(loop)
    try:
        try:
            listeners = await server.start(*config.listen_urls)
        except OSError as exc:
            print('aiosip-ws serve: cannot listen: %s' % exc, file=sys.stderr)
            return 2
        except RoutingError as exc:                # the app's startup failed
            print('aiosip-ws serve: %s' % exc, file=sys.stderr)
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
        _collect_less()
        await stop.wait()
        print('aiosip-ws serve: shutting down', flush=True)
        await server.close(spread=config.shutdown_window)
        if export is not None:
            await export.close()
        if history is not None:
            await history.close()
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


def _reload(server: Any, context: ssl.SSLContext | None, config: ServeConfig,
            why: str = 'SIGHUP') -> list[str]:
    """SIGHUP and the admin ``reload`` action: load the TLS certificate and key files again
    into the listeners' TLS context (new handshakes get it, established connections keep
    theirs) and the ``--users`` file into the Digest authenticator.  A file that cannot be
    loaded leaves the old one in place (logged).  What was reloaded."""
    done = []
    if context is not None:
        try:
            config.load_certificate(context)
        except ConfigurationError as exc:
            logger.error('%s: the TLS certificate was not reloaded, the old one stays: %s',
                         why, exc)
        else:
            logger.info('%s: reloaded the TLS certificate %s', why, config.tls_cert)
            done.append('tls-cert')
    if config.users is not None and server.auth is not None:
        from .auth import UserFile
        try:
            server.auth.users = UserFile.load(config.users)
        except (ConfigurationError, OSError) as exc:
            logger.error('%s: %s was not reloaded, the old users stay: %s', why, config.users,
                         exc)
        else:
            logger.info('%s: reloaded %d user(s) from %s', why, len(server.auth.users),
                        config.users)
            done.append('users')
    if server.app_router is not None and server.app_router.reload(why):
        done.append('app')
    return done


def _use_app(server: Any, config: ServeConfig, token: Any) -> None:
    """``--app``: into the pipeline; its credentials (in place of ``--users``) and its
    token_identity (with ``--jwt-secret``) where it has them."""
    from .credentials import CredentialStore
    router = server.use_app(config.app, timeout=config.app_timeout)
    hooks = router.current.hooks
    if 'credentials' in hooks:
        if config.users is not None:
            raise ConfigurationError('--users and an --app with credentials(): give one source '
                                     'of users')
        if not config.realm:
            raise ConfigurationError('the app\'s credentials() need --realm REALM')
        store = router.credential_store = CredentialStore(
            router.credentials, config.realm, size=config.credentials_cache,
            ttl=config.credentials_ttl, rate=config.credentials_rate,
            timeout=config.app_timeout)
        server.admission.auth = config.authenticator(store)
    elif config.users is None and (config.realm or config.nonce_secret or
                                   (config.domain and not config.secret('jwt_secret')
                                    and not (config.route or config.route_unregistered))):
        raise ConfigurationError('--realm, --domain and --nonce-secret need --users FILE or '
                                 'an --app with credentials()')
    if 'token_identity' in hooks:
        if token is None:
            raise ConfigurationError('the app\'s token_identity() needs --jwt-secret')
        token.claims_hook = router.token_user


def _start_drain(server: Any, window: float) -> None:
    """SIGUSR1: drain (see RelayServer.drain); a second signal does nothing more."""
    if server.draining:
        return
    server.spawn(server.drain(window))


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip('[]')).is_loopback
    except ValueError:
        return host.lower() == 'localhost'
