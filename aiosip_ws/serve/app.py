"""The routing app of ``aiosip-ws serve --app``: loading it, its stages, failure routing,
reload, and the watchdog that names a hook blocking the event loop.

The app's API (what it is handed and returns) is :mod:`aiosip_ws.serve.routing`.  Here
:class:`AppRouter` puts the app into serve's pipeline:

* the ``app`` stage, after ``identity``: an out-of-dialog request goes to ``on_request``
  in a task of its own (an INVITE gets 100 Trying first, and its CANCEL is answered
  while the app decides); its outcome is a reply, a relay to the app's targets (a
  :class:`~aiosip_ws.serve.fork.Fork` like any other), or the stages after ``app``;
* the ``app in-dialog`` stage, after ``cancel``: ``on_in_dialog`` may refuse;
* failure routing (:attr:`Forker.failure <aiosip_ws.serve.fork.Forker.failure>`): a
  final non-2xx bound for the caller of an INVITE goes to ``on_failure`` first.

Each hook runs at most ``timeout`` seconds (then 500 and a log line); an exception in
it answers 500 and logs one line with its traceback per kind (rate-limited).  Without
an app none of this is in the pipeline: serve costs what it did.
"""
from __future__ import annotations

import asyncio
import dataclasses
import importlib
import importlib.util
import inspect
import itertools
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Iterable
from types import FrameType, ModuleType
from typing import TYPE_CHECKING, Any

from ..core.codec import SIPMessage, make_response
from ..core.sipuri import NameAddr, SipURI
from ..core.transaction import cancel_key, new_tag
from ..errors import AiosipWSError, RoutingError, SIPParseError
from ..transport.throttle import LogThrottle
from .auth import Identity as Verified
from .context import SERVER_HEADER, Context, max_forwards_of
from .flow import Flow
from .fork import Forker
from .registrar import Binding
from .routing import (
    Identity,
    Registered,
    Relay,
    Reply,
    Request,
    Response,
    Target,
    aor_key,
    hooks_of,
    reply_parts,
)

if TYPE_CHECKING:
    from .hops import Hops
    from .observe import Metrics

__all__ = ['AppRouter', 'LoadedApp', 'load_app', 'LoopWatchdog', 'MAX_FAILURE_ROUNDS']

logger = logging.getLogger(__name__)
app_log = LogThrottle(logger)

#: how many times one INVITE's failure may be routed again (a voicemail that fails too...)
MAX_FAILURE_ROUNDS = 4
#: how long ``startup`` and ``shutdown`` may take
LIFE_CYCLE_TIMEOUT = 30.0
#: a lookup of an AOR's bindings: ``await lookup(aor)``
Lookup = Callable[[str], Awaitable[list[Binding]]]
#: the rest of the pipeline after a stage: ``resume(flow, request, stage_name)``
Resume = Callable[[Flow, SIPMessage, str], None]

_generation = itertools.count(1)


class LoadedApp:
    """An app as loaded: the object whose hooks serve calls, and where its code lives."""

    __slots__ = ('spec', 'target', 'hooks', 'files', 'inflight', 'module_name', 'name')

    def __init__(self, spec: object, target: object, files: Iterable[str],
                 module_name: str | None = None) -> None:
        #: what ``--app`` (or ``app=``) gave
        self.spec = spec
        self.target = target
        #: hook name -> the function
        self.hooks = hooks_of(target)
        if not {'on_request', 'on_failure', 'on_in_dialog'} & self.hooks.keys():
            raise RoutingError('the app %s defines none of on_request, on_failure and '
                               'on_in_dialog (as functions of the module, or methods of its '
                               '"app" object)' % (spec,))
        #: the source files the watchdog blames (the app's own code)
        self.files = frozenset(os.path.realpath(f) for f in files)
        #: hook calls in progress (a retired app shuts down once none is)
        self.inflight = 0
        #: the module's name in sys.modules when serve loaded it from a file
        self.module_name = module_name
        self.name = spec if isinstance(spec, str) else type(target).__name__

    def __repr__(self) -> str:
        return '<app %s>' % self.name


def load_app(spec: object) -> LoadedApp:
    """Load an app: ``FILE.py``, ``package.module[:attribute]``, or an object (a module, an
    instance, a class to instantiate).  A module's hooks are its ``app`` attribute's
    when it has one, else its own functions.  :class:`RoutingError` says what failed."""
    if not isinstance(spec, str):
        return _loaded(spec, spec, None)
    path, _, attribute = spec.partition(':') if not spec.endswith('.py') else (spec, '', '')
    try:
        if path.endswith('.py') or os.sep in path:
            if not os.path.isfile(path):
                raise RoutingError('--app %s: no such file' % spec)
            name = 'aiosip_ws_app_%d' % next(_generation)
            file_spec = importlib.util.spec_from_file_location(name, path)
            if file_spec is None or file_spec.loader is None:
                raise RoutingError('--app %s: not a Python file' % spec)
            module = importlib.util.module_from_spec(file_spec)
            sys.modules[name] = module              # dataclasses and pickling look here
            try:
                file_spec.loader.exec_module(module)
            except BaseException:
                sys.modules.pop(name, None)
                raise
            return _loaded(spec, module, attribute or None, name)
        module = importlib.import_module(path)
        if getattr(module, '__aiosip_ws_loaded__', False):   # a reload: run it again
            module = importlib.reload(module)
        module.__dict__['__aiosip_ws_loaded__'] = True
        return _loaded(spec, module, attribute or None)
    except RoutingError:
        raise
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - whatever the app's code raises
        where = ''.join(traceback.format_exception_only(type(exc), exc)).strip()
        raise RoutingError('--app %s cannot be loaded: %s' % (spec, where)) from exc


def _loaded(spec: object, source: object, attribute: str | None,
            module_name: str | None = None) -> LoadedApp:
    if attribute is not None:
        if not hasattr(source, attribute):
            raise RoutingError('--app %s: the module has no %r' % (spec, attribute))
        target = getattr(source, attribute)
    elif isinstance(source, ModuleType) and hasattr(source, 'app'):
        target = source.app
    else:
        target = source
    if inspect.isclass(target):
        target = target()
    files = set()
    for thing in (source, target, type(target)):
        module = thing if isinstance(thing, ModuleType) else \
            sys.modules.get(getattr(thing, '__module__', '') or '')
        path = getattr(module, '__file__', None)
        if path:
            files.add(path)
    return LoadedApp(spec, target, files, module_name)


class _Held:
    """An INVITE the app is deciding about: its CANCEL sets ``cancelled``."""

    __slots__ = ('cancelled',)

    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class AppRouter:
    """The app in serve's pipeline (see the module)."""

    def __init__(self, app: LoadedApp, *, ctx: Context, forker: Forker, hops: Hops,
                 lookup: Lookup, timeout: float = 5.0, metrics: Metrics | None = None,
                 watchdog: bool = True) -> None:
        if not timeout > 0:
            raise RoutingError('--app-timeout %r: give a positive number of seconds'
                               % (timeout,))
        self.current = app
        self.ctx, self.forker, self.hops, self.lookup = ctx, forker, hops, lookup
        self.timeout = timeout
        self.metrics = metrics
        #: the rest of the pipeline after a stage (set by the server)
        self.resume: Resume | None = None
        #: names the app's function when a hook blocks the loop
        self.watchdog = LoopWatchdog(lambda: self.current.files, metrics=metrics) \
            if watchdog else None
        self._retiring: set[asyncio.Task[None]] = set()
        forker.failure = self.failed

    # -- life cycle ------------------------------------------------------------------------
    async def start(self) -> None:
        """The app's ``startup``; a failure is a :class:`RoutingError`."""
        await self._life_cycle(self.current, 'startup')
        if self.watchdog is not None:
            self.watchdog.start()

    async def close(self) -> None:
        if self.watchdog is not None:
            self.watchdog.stop()
        for task in list(self._retiring):
            task.cancel()
        await asyncio.gather(*self._retiring, return_exceptions=True)
        try:
            await self._life_cycle(self.current, 'shutdown')
        except RoutingError as exc:
            logger.error('%s', exc)
        self.forker.failure = None

    async def _life_cycle(self, app: LoadedApp, name: str) -> None:
        hook = app.hooks.get(name)
        if hook is None:
            return
        try:
            result = hook()
            if inspect.isawaitable(result):
                await asyncio.wait_for(result, LIFE_CYCLE_TIMEOUT)
        except asyncio.TimeoutError:
            raise RoutingError('the app %s: %s took longer than %g s'
                               % (app.name, name, LIFE_CYCLE_TIMEOUT)) from None
        except Exception as exc:  # noqa: BLE001
            where = ''.join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            raise RoutingError('the app %s: %s failed: %s' % (app.name, name, where.strip())) \
                from None

    def reload(self, why: str = 'SIGHUP') -> bool:
        """Load the app again from where it came; once its ``startup`` succeeded, requests
        that arrive use it and those in progress finish with the old one, which then shuts
        down.  An app that fails to load or start leaves the old one in place (one ERROR
        line).  False when there is nothing to load again (an object given in Python)."""
        old = self.current
        if not isinstance(old.spec, str):
            return False
        try:
            new = load_app(old.spec)
        except RoutingError as exc:
            logger.error('%s: the app was not reloaded, the old one stays: %s', why, exc)
            return True
        self.ctx.spawn(self._swap(old, new, why))
        return True

    async def _swap(self, old: LoadedApp, new: LoadedApp, why: str) -> None:
        try:
            await self._life_cycle(new, 'startup')
        except RoutingError as exc:
            logger.error('%s: the app was not reloaded, the old one stays: %s', why,
                         str(exc).replace('\n', ' | '))
            self._forget(new)
            return
        self.current = new
        logger.info('%s: reloaded the app %s (%d hook call(s) of the old one in progress)',
                    why, new.name, old.inflight)
        task = asyncio.ensure_future(self._retire(old))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _retire(self, old: LoadedApp) -> None:
        """The old app's requests finish with it; then its ``shutdown``."""
        deadline = time.monotonic() + self.timeout * (MAX_FAILURE_ROUNDS + 1)
        while old.inflight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        try:
            await self._life_cycle(old, 'shutdown')
        except RoutingError as exc:
            logger.error('%s', exc)
        self._forget(old)

    @staticmethod
    def _forget(app: LoadedApp) -> None:
        if app.module_name is not None:
            sys.modules.pop(app.module_name, None)

    # -- calling the app -------------------------------------------------------------------
    async def _ask(self, app: LoadedApp, name: str, *args: Any) -> tuple[bool, Any]:
        """``(True, what the hook returned)``, or ``(False, None)`` when it failed or took
        longer than the timeout (logged)."""
        hook = app.hooks[name]
        app.inflight += 1
        try:
            result = hook(*args)
            if inspect.isawaitable(result):
                result = await asyncio.wait_for(result, self.timeout)
            return True, result
        except asyncio.TimeoutError:
            self._count(name, 'timeout')
            app_log.warning('app timeout ' + name, 'the app\'s %s took longer than '
                            '--app-timeout %g s: 500', name, self.timeout)
            return False, None
        except Exception as exc:  # noqa: BLE001 - the app's bug must not be serve's
            self._count(name, 'error')
            where = ''.join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            app_log.log(logging.ERROR, 'app error %s %s' % (name, type(exc).__name__),
                        'the app\'s %s raised %s: 500\n%s', name, type(exc).__name__,
                        where.rstrip())
            return False, None
        finally:
            app.inflight -= 1

    def _count(self, hook: str, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.app_hooks.labels(hook, outcome).inc()

    def _broken(self, name: str, exc: RoutingError) -> None:
        self._count(name, 'error')
        app_log.log(logging.ERROR, 'app outcome %s' % name, 'the app\'s %s: %s: 500', name,
                    exc)

    def _view(self, flow: Flow, request: SIPMessage, identity: Identity | None,
              attempt: int = 1) -> Request:
        return Request(request, identity=identity,
                       source=getattr(flow, 'remote_addr', None),
                       transport=flow.transport_name, attempt=attempt)

    @staticmethod
    def identity_of(flow: Flow, request: SIPMessage) -> Identity | None:
        """The identity the identity stage verified for ``request``, as the app sees it."""
        verified = flow.flow_state.identity
        if not isinstance(verified, Verified) or verified.user is None:
            return None
        how = 'token' if getattr(flow, 'identity', None) is verified else 'digest'
        try:
            aor = aor_key(request.get('From') or '')
        except SIPParseError:
            aor = ''
        return Identity(verified.user, aor, how)

    def _failed_reply(self, flow: Flow, request: SIPMessage, status: int = 500,
                      reason: str = 'Server Internal Error (routing app)') -> SIPMessage:
        return make_response(request, status, reason, to_tag=new_tag(),
                             headers=[('Server', SERVER_HEADER)])

    # -- the app stage --------------------------------------------------------------------
    def request_stage(self, flow: Flow, request: SIPMessage) -> bool:
        """Out of dialog, admitted and identified: to ``on_request`` (True: taken)."""
        app = self.current
        if 'on_request' not in app.hooks:
            return False
        try:
            uri = SipURI.parse(request.uri or '')
        except SIPParseError:
            return False                                 # the route stage answers it
        if uri.scheme not in ('sip', 'sips'):
            return False
        held = None
        if request.method == 'INVITE':
            held = _Held()
            key = cancel_key(request)
            self.forker.held[key] = held.cancel
            if flow.is_open:                             # §16.2: at once, hop by hop
                self.ctx.send(flow, make_response(request, 100,
                                                  headers=[('Server', SERVER_HEADER)]))
        self.ctx.spawn(self._on_request(app, flow, request, self.identity_of(flow, request),
                                        held))
        return True

    async def _on_request(self, app: LoadedApp, flow: Flow, request: SIPMessage,
                          identity: Identity | None, held: _Held | None) -> None:
        key = cancel_key(request) if held is not None else None
        try:
            ok, outcome = await self._ask(app, 'on_request',
                                          self._view(flow, request, identity))
            if held is not None and held.cancelled:
                self.ctx.send_response(flow, request, self._failed_reply(
                    flow, request, 487, 'Request Terminated'))
                return
            if not ok:
                self.ctx.send_response(flow, request, self._failed_reply(flow, request))
                return
            if outcome is None:
                self._count('on_request', 'default')
                assert self.resume is not None
                if key is not None:
                    self.forker.tried.add(key)
                try:
                    self.resume(flow, request, 'app')
                finally:
                    if key is not None:
                        self.forker.tried.discard(key)
                return
            await self._outcome('on_request', flow, request, outcome, 0, None, held)
        finally:
            if key is not None and held is not None and \
                    self.forker.held.get(key) == held.cancel:
                del self.forker.held[key]

    async def _outcome(self, hook: str, flow: Flow, request: SIPMessage, outcome: object,
                       rounds: int, deliver: Callable[[SIPMessage], None] | None,
                       held: _Held | None) -> None:
        """Carry out a Reply or a Relay (``deliver``: how a failure's answer goes back)."""
        send = deliver or (lambda response: self.ctx.send_response(flow, request, response))
        try:
            if isinstance(outcome, Reply):
                status, reason, headers, body = reply_parts(outcome, request.method or '')
                if deliver is not None and status < 300:
                    raise RoutingError('on_failure returned Reply(%d): a failure is answered '
                                       'with 300-699' % status)
                self._count(hook, 'reply')
                send(make_response(request, status, reason, to_tag=new_tag(),
                                   headers=headers + [('Server', SERVER_HEADER)], body=body))
                return
            if isinstance(outcome, Relay):
                self._count(hook, 'relay')
                await self._relay(flow, request, outcome, rounds, held)
                return
            raise RoutingError('%s returned %r: return a Reply, a Relay or None'
                               % (hook, outcome))
        except RoutingError as exc:
            self._broken(hook, exc)
            send(self._failed_reply(flow, request))

    async def _relay(self, flow: Flow, request: SIPMessage, relay: Relay, rounds: int,
                     held: _Held | None) -> None:
        """Send ``request`` to the app's targets, as a fork of serve's."""
        ctx = self.ctx
        max_forwards = max_forwards_of(request)
        if max_forwards is None:
            ctx.reply(flow, request, 400, 'Bad Request (Max-Forwards must be a number 0-255)')
            return
        if max_forwards == 0:
            ctx.reply(flow, request, 483)
            return
        if self.hops.looped(request):                    # RFC 3261 §16.3 step 4
            ctx.reply(flow, request, 482)
            return
        bindings: list[Binding] = []
        timeouts: dict[int, float] = {}
        unreachable = []
        count = len(relay.targets)
        for index, target in enumerate(relay.targets):
            q = 1.0 if relay.parallel else float(count - index)
            found: list[Binding] = []
            if isinstance(target, Registered):
                try:
                    aor = SipURI.parse(target.aor).aor
                except SIPParseError as exc:
                    raise RoutingError('Registered(%r): not a SIP URI (%s)'
                                       % (target.aor, exc)) from None
                found = [dataclasses.replace(b, q=q) for b in await self.lookup(aor)]
            else:
                binding = await self._target(target, q)
                if binding is None:
                    unreachable.append(target.uri)
                else:
                    found = [binding]
            for binding in found:
                bindings.append(binding)
                if target.timeout is not None:
                    timeouts[id(binding)] = target.timeout
        if held is not None and held.cancelled:
            ctx.send_response(flow, request, self._failed_reply(flow, request, 487,
                                                                'Request Terminated'))
            return
        if not bindings:
            if unreachable:
                self.forker.refuse(flow, request, 503, 'Service Unavailable (the app\'s '
                                   'targets are unreachable)',
                                   [('Retry-After', str(ctx.limits.retry_after))],
                                   rounds=rounds)
            else:
                self.forker.refuse(flow, request, 404, 'Not Found (not registered)',
                                   rounds=rounds)
            return
        key = cancel_key(request) if request.method == 'INVITE' and rounds == 0 else None
        if key is not None:
            self.forker.tried.add(key)                  # 100 Trying went at the stage
        try:
            self.forker.relay(flow, request, bindings, max_forwards, reconnect=True,
                              timeouts=timeouts or None, rounds=rounds)
        finally:
            if key is not None:
                self.forker.tried.discard(key)

    async def _target(self, target: Target, q: float) -> Binding | None:
        try:
            uri = SipURI.parse(target.uri)
            hop = SipURI.parse(target.proxy) if target.proxy else uri
        except SIPParseError as exc:
            raise RoutingError('%r: not a SIP URI (%s)' % (target, exc)) from None
        if uri.scheme not in ('sip', 'sips'):
            raise RoutingError('%r: serve sends to sip: and sips: URIs only' % (target,))
        try:
            hop_flow = await asyncio.wait_for(self.hops.hop_flow(hop), self.timeout)
        except RoutingError:
            raise
        except (AiosipWSError, OSError, asyncio.TimeoutError) as exc:
            app_log.warning('app target unreachable', 'the app\'s target %s is unreachable: %s',
                            hop, exc or type(exc).__name__)
            return None
        return Binding(aor='', contact=NameAddr(uri=uri), connection=hop_flow,
                       expires_at=float('inf'), call_id='', cseq=0, q=q)

    # -- failure routing ------------------------------------------------------------------
    def failed(self, origin: Flow, request: SIPMessage, response: SIPMessage, by_serve: bool,
               rounds: int, deliver: Callable[[SIPMessage], None]) -> bool:
        """Forker.failure: an INVITE's final non-2xx, to ``on_failure`` (True: taken)."""
        app = self.current
        if 'on_failure' not in app.hooks or rounds >= MAX_FAILURE_ROUNDS:
            return False
        held = _Held()
        key = cancel_key(request)
        self.forker.held[key] = held.cancel
        self.ctx.spawn(self._on_failure(app, origin, request, response, by_serve, rounds,
                                        deliver, held, key))
        return True

    async def _on_failure(self, app: LoadedApp, origin: Flow, request: SIPMessage,
                          response: SIPMessage, by_serve: bool, rounds: int,
                          deliver: Callable[[SIPMessage], None], held: _Held,
                          key: tuple[str, int, str]) -> None:
        try:
            ok, outcome = await self._ask(
                app, 'on_failure',
                self._view(origin, request, self.identity_of(origin, request), rounds + 1),
                Response(response, by_serve=by_serve, attempt=rounds + 1))
            if held.cancelled:
                deliver(self._failed_reply(origin, request, 487, 'Request Terminated'))
            elif not ok:
                deliver(self._failed_reply(origin, request))
            elif outcome is None:
                self._count('on_failure', 'default')
                deliver(response)
            else:
                await self._outcome('on_failure', origin, request, outcome, rounds + 1,
                                    deliver, held)
        finally:
            if self.forker.held.get(key) == held.cancel:
                del self.forker.held[key]

    # -- in-dialog requests -----------------------------------------------------------------
    def in_dialog_stage(self, flow: Flow, request: SIPMessage) -> bool:
        """An in-dialog request (not ACK) to ``on_in_dialog`` (True: taken)."""
        app = self.current
        if 'on_in_dialog' not in app.hooks or request.method in ('ACK', 'CANCEL') or \
                'tag=' not in (request.get('To') or ''):
            return False
        try:
            if request.to_addr().tag is None:
                return False
        except SIPParseError:
            return False
        self.ctx.spawn(self._on_in_dialog(app, flow, request,
                                          self.identity_of(flow, request)))
        return True

    async def _on_in_dialog(self, app: LoadedApp, flow: Flow, request: SIPMessage,
                            identity: Identity | None) -> None:
        ok, outcome = await self._ask(app, 'on_in_dialog', self._view(flow, request, identity))
        if not ok:
            self.ctx.send_response(flow, request, self._failed_reply(flow, request))
            return
        if outcome is None:
            self._count('on_in_dialog', 'default')
            assert self.resume is not None
            self.resume(flow, request, 'app in-dialog')
            return
        try:
            if not isinstance(outcome, Reply):
                raise RoutingError('on_in_dialog returned %r: in-dialog requests are routed '
                                   'by serve; return None or a Reply of 300-699' % (outcome,))
            status, reason, headers, body = reply_parts(outcome, request.method or '')
            if status < 300:
                raise RoutingError('on_in_dialog returned Reply(%d): it may refuse (300-699) '
                                   'and nothing more' % status)
        except RoutingError as exc:
            self._broken('on_in_dialog', exc)
            self.ctx.send_response(flow, request, self._failed_reply(flow, request))
            return
        self._count('on_in_dialog', 'reply')
        self.ctx.send_response(flow, request, make_response(
            request, status, reason, headers=headers + [('Server', SERVER_HEADER)], body=body))


class LoopWatchdog:
    """Names the code that blocks the event loop: a heartbeat on the loop every
    ``interval``; a thread that, when the heartbeat is late by more than ``threshold``,
    takes the loop thread's stack; the heartbeat, back, logs how long the loop was held
    and where (the app's innermost function, else the innermost one)."""

    def __init__(self, files: Callable[[], frozenset[str]], *, threshold: float = 0.1,
                 interval: float = 0.05, metrics: Metrics | None = None) -> None:
        self.files = files
        self.threshold, self.interval = threshold, interval
        self.metrics = metrics
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._loop_thread = 0
        self._due = 0.0
        #: (where, in the app) taken by the thread while the loop was held, or None
        self._culprit: tuple[str, bool] | None = None
        #: times the loop was held longer than the threshold
        self.blocks = 0

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._due = time.monotonic() + self.interval
        self._handle = self._loop.call_later(self.interval, self._beat)
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name='aiosip-ws loop watchdog',
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._stop.set()
        if self._thread is not None:
            self._thread.join(1.0)
            self._thread = None

    def _beat(self) -> None:
        now = time.monotonic()
        late = now - self._due
        if late > self.threshold:
            self._report(late)
        self._culprit = None
        self._due = now + self.interval
        assert self._loop is not None
        self._handle = self._loop.call_later(self.interval, self._beat)

    def _watch(self) -> None:
        while not self._stop.wait(self.interval / 2):
            if self._culprit is None and time.monotonic() - self._due > self.threshold:
                frame = sys._current_frames().get(self._loop_thread)
                if frame is not None:
                    self._culprit = self._where(frame)

    def _where(self, frame: FrameType | None) -> tuple[str, bool]:
        files = self.files()
        innermost = None
        while frame is not None:
            code = frame.f_code
            text = '%s (%s:%d)' % (code.co_name, code.co_filename, frame.f_lineno)
            if innermost is None:
                innermost = text
            if os.path.realpath(code.co_filename) in files:
                return text, True
            frame = frame.f_back
        return innermost or 'unknown code', False

    def _report(self, late: float) -> None:
        self.blocks += 1
        where, in_app = self._culprit or ('code the watchdog did not see', False)
        if self.metrics is not None:
            self.metrics.loop_blocked.labels('app' if in_app else 'other').inc()
        if in_app:
            app_log.warning('loop blocked by the app', 'the app blocked the event loop for '
                            '%d ms in %s: every call waits meanwhile; await an async '
                            'client, or use loop.run_in_executor', late * 1000, where)
        else:
            app_log.warning('loop blocked', 'the event loop was blocked for %d ms (in %s)',
                            late * 1000, where)
