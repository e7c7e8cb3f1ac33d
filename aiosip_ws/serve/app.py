"""The routing app of ``aiosip-ws serve --app``: loading it, its stages, failure routing,
reload, and the watchdog that names a hook blocking the event loop.

The app's API (what it is handed and returns) is :mod:`aiosip_ws.serve.routing`.  Here
:class:`AppRouter` puts the app into serve's pipeline:

* the ``app`` stage, after ``identity``: an out-of-dialog request goes to ``on_request``,
  run at once; only a hook that awaits gets a task of its own (and an INVITE then gets
  100 Trying first, its CANCEL answered while the app decides); the outcome is a reply,
  a relay to the app's targets (a :class:`~aiosip_ws.serve.fork.Fork` like any other),
  or the stages after ``app``;
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
import signal
import sys
import threading
import time
import traceback
import types
from collections.abc import Awaitable, Callable, Generator, Iterable, Mapping
from types import FrameType, ModuleType
from typing import TYPE_CHECKING, Any

from ..core.codec import SIPMessage, make_response
from ..core.sipuri import NameAddr, SipURI
from ..core.transaction import cancel_key, new_branch, new_call_id, new_tag
from ..errors import AiosipWSError, RoutingError, SIPParseError
from ..options import ConnectionOptions
from ..transport.throttle import LogThrottle
from .auth import Identity as Verified
from .context import SERVER_HEADER, Context, forwarding_refusal, max_forwards_of
from .events import (
    CallChanged,
    ConnectionClosed,
    ConnectionOpened,
    Event,
    EventStream,
    RegistrationChanged,
)
from .flow import Flow, FlowState
from .fork import Forker
from .registrar import Binding
from .routing import (
    Credentials,
    Identity,
    Registered,
    Relay,
    Reply,
    Request,
    Response,
    Target,
    TokenUser,
    aor_key,
    hooks_of,
    reply_parts,
)

if TYPE_CHECKING:
    from .hops import Hops
    from .observe import Metrics

__all__ = ['AppRouter', 'LoadedApp', 'load_app', 'LoopWatchdog', 'MAX_FAILURE_ROUNDS',
           'ServeHandle', 'APP_EVENTS']

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

#: the events an app's on_event gets unless its ``events`` attribute names others
APP_EVENTS: tuple[type[Event], ...] = (RegistrationChanged, CallChanged, ConnectionOpened,
                                       ConnectionClosed)
#: the events an app's on_event queue holds before it drops
APP_EVENT_QUEUE = 10000
#: the reason of the 500 a request gets when the app failed to decide
FAILED = 'Server Internal Error (routing app)'


def _start(hook: Callable[..., Any], *args: Any) -> tuple[bool, Any]:
    """Call ``hook``: ``(True, its result)`` when it finished without waiting (a plain
    function, or a coroutine that never suspended: no task, no timer), else ``(False,
    an awaitable that goes on from where it stopped)``.  What it raises propagates."""
    result = hook(*args)
    if not isinstance(result, types.CoroutineType):
        if inspect.isawaitable(result):
            return False, result
        return True, result
    try:
        yielded = result.send(None)
    except StopIteration as stop:
        return True, stop.value
    return False, _continued(result, yielded)


@types.coroutine
def _continued(coro: Any, yielded: Any) -> Generator[Any, Any, Any]:
    """The rest of a coroutine :func:`_start` began: what it yields goes to the task that
    awaits this, what the task sends or throws goes back to it."""
    try:
        while True:
            try:
                sent = yield yielded
            except GeneratorExit:
                raise
            except BaseException as exc:  # noqa: BLE001 - the task's (CancelledError)
                try:
                    yielded = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    yielded = coro.send(sent)
                except StopIteration as stop:
                    return stop.value
    finally:
        coro.close()


async def _awaited(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


class LoadedApp:
    """An app as loaded: the object whose hooks serve calls, and where its code lives."""

    __slots__ = ('spec', 'target', 'hooks', 'files', 'inflight', 'module_name', 'name',
                 'startup_takes_serve', 'events')

    def __init__(self, spec: object, target: object, files: Iterable[str],
                 module_name: str | None = None) -> None:
        #: what ``--app`` (or ``app=``) gave
        self.spec = spec
        self.target = target
        #: hook name -> the function
        self.hooks = hooks_of(target)
        if not {'on_request', 'on_failure', 'on_in_dialog', 'credentials', 'on_event',
                'token_identity'} & self.hooks.keys():
            raise RoutingError('the app %s defines none of on_request, on_failure, '
                               'on_in_dialog, credentials, token_identity and on_event (as '
                               'functions of the module, or methods of its "app" object)'
                               % (spec,))
        token = self.hooks.get('token_identity')
        if token is not None and inspect.iscoroutinefunction(token):
            raise RoutingError('the app %s: token_identity must be a plain function (it '
                               'runs in the WebSocket handshake), not a coroutine' % (spec,))
        startup = self.hooks.get('startup')
        try:
            parameters = inspect.signature(startup).parameters if startup else {}
        except (TypeError, ValueError):
            parameters = {}
        #: ``startup(serve)`` rather than ``startup()``
        self.startup_takes_serve = bool(parameters)
        kinds = getattr(target, 'events', APP_EVENTS)
        if not isinstance(kinds, (tuple, list, frozenset, set)) or not all(
                isinstance(k, type) and issubclass(k, Event) for k in kinds):
            raise RoutingError('the app %s: its "events" names classes of '
                               'aiosip_ws.serve.events, e.g. (CallChanged,)' % (spec,))
        #: the events its on_event gets
        self.events: tuple[type[Event], ...] = tuple(kinds)
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
                 watchdog: bool = True, events: EventStream | None = None,
                 domains: Iterable[str] = ()) -> None:
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
        #: hook calls that wait (a task each), at most ``--max-pending``
        self.waiting = 0
        #: what the app may ask of serve (handed to its ``startup``)
        self.serve = ServeHandle(self, frozenset(d.lower() for d in domains))
        #: the event stream on_event is subscribed to (when the app has one)
        self.events = events
        self._subscription: Any = None
        #: credentials looked up (see :mod:`~aiosip_ws.serve.credentials`), or None
        self.credential_store: Any = None

    # -- life cycle ------------------------------------------------------------------------
    async def start(self) -> None:
        """The app's ``startup``; a failure is a :class:`RoutingError`."""
        await self._life_cycle(self.current, 'startup')
        self._subscribe()
        if self.watchdog is not None:
            self.watchdog.start()

    def _subscribe(self) -> None:
        """on_event to the event stream, for the kinds the current app asks for."""
        stream, app, subscription = self.events, self.current, self._subscription
        kinds = frozenset(app.events if 'on_event' in app.hooks else ())
        if stream is None or kinds == (subscription.kinds if subscription else frozenset()):
            return
        if subscription is not None:
            self.ctx.spawn(subscription.close())
            self._subscription = None
        if kinds:
            self._subscription = stream.subscribe('app', self._on_event, kinds,
                                                  maxsize=APP_EVENT_QUEUE)

    async def _on_event(self, event: Event) -> None:
        app = self.current
        if 'on_event' in app.hooks:
            await self._ask(app, 'on_event', event)

    async def close(self) -> None:
        if self.watchdog is not None:
            self.watchdog.stop()
        for task in list(self._retiring):
            task.cancel()
        await asyncio.gather(*self._retiring, return_exceptions=True)
        if self._subscription is not None:
            await self._subscription.close()
            self._subscription = None
        if self.credential_store is not None:
            await self.credential_store.close()
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
            result = hook(self.serve) if name == 'startup' and app.startup_takes_serve \
                else hook()
            if inspect.isawaitable(result):
                await asyncio.wait_for(_awaited(result), LIFE_CYCLE_TIMEOUT)
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
        self._subscribe()
        if self.credential_store is not None:
            self.credential_store.clear()           # the new app's store may say otherwise
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
    def _begin(self, app: LoadedApp, name: str, *args: Any) -> tuple[str, Any]:
        """Call a hook: ``('done', its result)`` when it finished at once, ``('wait', an
        awaitable)`` for :meth:`_wait` when it waits, ``('error', None)`` (logged)."""
        app.inflight += 1
        try:
            done, value = _start(app.hooks[name], *args)
        except Exception as exc:  # noqa: BLE001 - the app's bug must not be serve's
            app.inflight -= 1
            self._raised(name, exc)
            return 'error', None
        if done:
            app.inflight -= 1
            return 'done', value
        self.waiting += 1
        return 'wait', value

    async def _wait(self, app: LoadedApp, name: str, awaitable: Awaitable[Any]
                    ) -> tuple[bool, Any]:
        """The rest of a hook :meth:`_begin` began, within the timeout: ``(True, what it
        returned)``, or ``(False, None)`` when it failed or took too long (logged)."""
        try:
            return True, await asyncio.wait_for(_awaited(awaitable), self.timeout)
        except asyncio.TimeoutError:
            self._count(name, 'timeout')
            app_log.warning('app timeout ' + name, 'the app\'s %s took longer than '
                            '--app-timeout %g s: 500', name, self.timeout)
            return False, None
        except Exception as exc:  # noqa: BLE001
            self._raised(name, exc)
            return False, None
        finally:
            app.inflight -= 1
            self.waiting -= 1

    def over_cap(self) -> bool:
        """Whether as many hook calls wait as requests may be relayed at once
        (``--max-pending``): then a request the app would see gets 503."""
        return self.waiting >= self.ctx.limits.max_pending

    async def _ask(self, app: LoadedApp, name: str, *args: Any) -> tuple[bool, Any]:
        """:meth:`_begin`, then :meth:`_wait` if it waits."""
        state, value = self._begin(app, name, *args)
        if state == 'wait':
            return await self._wait(app, name, value)
        return state == 'done', value

    def _raised(self, name: str, exc: BaseException) -> None:
        self._count(name, 'error')
        where = ''.join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        app_log.log(logging.ERROR, 'app error %s %s' % (name, type(exc).__name__),
                    'the app\'s %s raised %s: 500\n%s', name, type(exc).__name__,
                    where.rstrip())

    def _count(self, hook: str, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.app_hook(hook, outcome)

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
    def identity_of(flow: Flow, request: SIPMessage, verified: Any = False) -> Identity | None:
        """The identity the identity stage verified for ``request`` (``verified``: the one
        kept for it, else its flow's now), as the app sees it."""
        if verified is False:
            verified = flow.flow_state.identity
        if not isinstance(verified, Verified) or verified.user is None:
            return None
        how = 'token' if getattr(flow, 'identity', None) is verified else 'digest'
        try:
            aor = aor_key(request.get('From') or '')
        except SIPParseError:
            aor = ''
        return Identity(verified.user, aor, how)

    def _failed(self, request: SIPMessage, status: int = 500,
                reason: str = FAILED) -> SIPMessage:
        """serve's answer when the app could not decide (500), or the caller left (487)."""
        return self.ctx.answer(request, status, reason)

    def _answer_of(self, hook: str, request: SIPMessage, reply: object,
                   lowest: int = 200) -> SIPMessage:
        """The response of a :class:`Reply` the app returned (at least ``lowest``), counted;
        :class:`RoutingError` for anything else."""
        if not isinstance(reply, Reply):
            raise RoutingError('%s returned %r: return %s' % (
                hook, reply, 'a Reply, a Relay or None' if hook != 'on_in_dialog'
                else 'None or a Reply of 300-699 (in-dialog requests are routed by serve)'))
        status, reason, headers, body = reply_parts(reply, request.method or '')
        if status < lowest:
            raise RoutingError('%s returned Reply(%d): answer with %d-699 here'
                               % (hook, status, lowest))
        self._count(hook, 'reply')
        return self.ctx.answer(request, status, reason, headers=headers, body=body)

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
        if self.over_cap():
            self.ctx.busy(flow, request, 'too many requests wait for the routing app')
            return True
        state, value = self._begin(app, 'on_request',
                                   self._view(flow, request, self.identity_of(flow, request)))
        if state == 'done':                      # decided at once: no task, no timer
            if value is None:
                self._count('on_request', 'default')
                return False                     # on to the next stage, now
            if isinstance(value, Reply):
                self._reply_now('on_request', flow, request, value)
                return True
        elif state == 'error':
            self.ctx.reply(flow, request, 500, FAILED)
            return True
        held = None
        if request.method == 'INVITE':
            held = _Held()
            key = cancel_key(request)
            self.forker.held[key] = held.cancel
            if flow.is_open:                             # §16.2: at once, hop by hop
                self.ctx.send(flow, make_response(request, 100,
                                                  headers=[('Server', SERVER_HEADER)]))
        self.ctx.spawn(self._on_request(app, flow, request, state, value, held,
                                        flow.flow_state.identity))
        return True

    def _reply_now(self, hook: str, flow: Flow, request: SIPMessage, reply: object,
                   lowest: int = 200) -> None:
        try:
            response = self._answer_of(hook, request, reply, lowest)
        except RoutingError as exc:
            self._broken(hook, exc)
            response = self._failed(request)
        self.ctx.send_response(flow, request, response)

    async def _on_request(self, app: LoadedApp, flow: Flow, request: SIPMessage,
                          state: str, value: Any, held: _Held | None,
                          verified: Verified | None) -> None:
        key = cancel_key(request) if held is not None else None
        try:
            if state == 'wait':
                ok, outcome = await self._wait(app, 'on_request', value)
            else:
                ok, outcome = True, value
            if held is not None and held.cancelled:
                self.ctx.reply(flow, request, 487)
                return
            if not ok:
                self.ctx.reply(flow, request, 500, FAILED)
                return
            if outcome is None:
                self._count('on_request', 'default')
                assert self.resume is not None
                if key is not None:
                    self.forker.tried.add(key)
                # the flow's identity is the request in hand's: another request of the
                # flow may have come through the identity stage while the app decided
                flow.flow_state.identity = verified
                try:
                    self.resume(flow, request, 'app')
                finally:
                    if key is not None:
                        self.forker.tried.discard(key)
                return
            await self._outcome('on_request', flow, request, outcome, 0, None, held, verified)
        finally:
            if key is not None and held is not None and \
                    self.forker.held.get(key) == held.cancel:
                del self.forker.held[key]

    async def _outcome(self, hook: str, flow: Flow, request: SIPMessage, outcome: object,
                       rounds: int, deliver: Callable[[SIPMessage], None] | None,
                       held: _Held | None, verified: Any) -> None:
        """Carry out a Reply or a Relay (``deliver``: how a failure's answer goes back)."""
        send = deliver or (lambda response: self.ctx.send_response(flow, request, response))
        try:
            if isinstance(outcome, Relay):
                self._count(hook, 'relay')
                await self._relay(flow, request, outcome, rounds, held, verified, send)
                return
            send(self._answer_of(hook, request, outcome, 300 if deliver is not None else 200))
        except RoutingError as exc:
            self._broken(hook, exc)
            send(self._failed(request))

    async def _relay(self, flow: Flow, request: SIPMessage, relay: Relay, rounds: int,
                     held: _Held | None, verified: Any,
                     send: Callable[[SIPMessage], None]) -> None:
        """Send ``request`` to the app's targets, as a fork of serve's (``send``: how an
        answer of serve's own goes back)."""
        ctx = self.ctx
        max_forwards = max_forwards_of(request)
        refusal = forwarding_refusal(max_forwards)
        if refusal is not None:
            send(ctx.answer(request, *refusal))
            return
        assert max_forwards is not None
        if self.hops.looped(request):                    # RFC 3261 §16.3 step 4
            send(ctx.answer(request, 482))
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
            send(self._failed(request, 487, 'Request Terminated'))
            return
        if not bindings:
            if unreachable:
                self.forker.refuse(flow, request, 503, 'Service Unavailable (the app\'s '
                                   'targets are unreachable)',
                                   [('Retry-After', str(ctx.limits.retry_after))],
                                   rounds=rounds, identity=verified)
            else:
                self.forker.refuse(flow, request, 404, 'Not Found (not registered)',
                                   rounds=rounds, identity=verified)
            return
        key = cancel_key(request) if request.method == 'INVITE' and rounds == 0 else None
        if key is not None:
            self.forker.tried.add(key)                  # 100 Trying went at the stage
        try:
            self.forker.relay(flow, request, bindings, max_forwards, reconnect=True,
                              timeouts=timeouts or None, rounds=rounds, identity=verified)
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
               rounds: int, deliver: Callable[[SIPMessage], None], verified: Any) -> bool:
        """Forker.failure: an INVITE's final non-2xx, to ``on_failure`` (True: taken)."""
        app = self.current
        if 'on_failure' not in app.hooks or rounds >= MAX_FAILURE_ROUNDS or self.over_cap():
            return False
        held = _Held()
        key = cancel_key(request)
        self.forker.held[key] = held.cancel
        self.ctx.spawn(self._on_failure(app, origin, request, response, by_serve, rounds,
                                        deliver, held, key, verified))
        return True

    async def _on_failure(self, app: LoadedApp, origin: Flow, request: SIPMessage,
                          response: SIPMessage, by_serve: bool, rounds: int,
                          deliver: Callable[[SIPMessage], None], held: _Held,
                          key: tuple[str, int, str], verified: Any) -> None:
        try:
            ok, outcome = await self._ask(
                app, 'on_failure',
                self._view(origin, request, self.identity_of(origin, request, verified),
                           rounds + 1),
                Response(response, by_serve=by_serve, attempt=rounds + 1))
            if held.cancelled:
                deliver(self._failed(request, 487, 'Request Terminated'))
            elif not ok:
                deliver(self._failed(request))
            elif outcome is None:
                self._count('on_failure', 'default')
                deliver(response)
            else:
                await self._outcome('on_failure', origin, request, outcome, rounds + 1,
                                    deliver, held, verified)
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
        if self.over_cap():
            self.ctx.busy(flow, request, 'too many requests wait for the routing app')
            return True
        state, value = self._begin(app, 'on_in_dialog',
                                   self._view(flow, request, self.identity_of(flow, request)))
        if state == 'done':
            if value is None:
                self._count('on_in_dialog', 'default')
                return False
            self._reply_now('on_in_dialog', flow, request, value, 300)
        elif state == 'error':
            self.ctx.reply(flow, request, 500, FAILED)
        else:
            self.ctx.spawn(self._on_in_dialog(app, flow, request, value))
        return True

    async def _on_in_dialog(self, app: LoadedApp, flow: Flow, request: SIPMessage,
                            awaitable: Awaitable[Any]) -> None:
        ok, outcome = await self._wait(app, 'on_in_dialog', awaitable)
        if not ok:
            self.ctx.reply(flow, request, 500, FAILED)
            return
        if outcome is None:
            self._count('on_in_dialog', 'default')
            assert self.resume is not None
            self.resume(flow, request, 'app in-dialog')
            return
        self._reply_now('on_in_dialog', flow, request, outcome, 300)

    # -- identity from the app -------------------------------------------------------------
    async def credentials(self, user: str, realm: str) -> Credentials | None:
        """The current app's ``credentials(user, realm)``, within the timeout; a failure
        raises :class:`RoutingError` (the store answers 503 then, and caches nothing)."""
        app = self.current
        if 'credentials' not in app.hooks:
            raise RoutingError('the app has no credentials hook any more')
        ok, found = await self._ask(app, 'credentials', user, realm)
        if not ok:
            raise RoutingError('the app\'s credentials failed')
        if found is not None and not isinstance(found, Credentials):
            self._broken('credentials', RoutingError(
                'credentials returned %r: return Credentials or None' % (found,)))
            raise RoutingError('the app\'s credentials returned no Credentials')
        self._count('credentials', 'found' if found is not None else 'unknown')
        return found

    def token_user(self, claims: Mapping[str, Any]) -> TokenUser | None:
        """The current app's ``token_identity(claims)`` (None: refused); what it raises
        refuses too, logged."""
        app = self.current
        hook = app.hooks.get('token_identity')
        if hook is None:
            raise RoutingError('the app has no token_identity hook any more')
        try:
            found = hook(claims)
        except Exception as exc:  # noqa: BLE001
            self._raised('token_identity', exc)
            return None
        if found is not None and not isinstance(found, TokenUser):
            self._broken('token_identity', RoutingError(
                'token_identity returned %r: return TokenUser or None' % (found,)))
            return None
        self._count('token_identity', 'found' if found is not None else 'refused')
        return found


class LocalOrigin:
    """Where the final response to a request serve itself sends (:meth:`ServeHandle.
    send_message`) comes back: a flow in the pipeline's terms, no socket."""

    transport_name = 'local'
    via_transport = 'WS'
    reliable = True
    remote_addr = ('127.0.0.1', 0)
    options = ConnectionOptions()
    via_host = 'serve.invalid'

    def __init__(self) -> None:
        self.flow_state = FlowState()
        self.final: asyncio.Future[SIPMessage] = asyncio.get_running_loop().create_future()

    @property
    def is_open(self) -> bool:
        return not self.final.done()

    def via(self, branch: str) -> str:
        return 'SIP/2.0/WS %s;branch=%s' % (self.via_host, branch)

    def send(self, message: SIPMessage) -> bool:
        if (message.status or 0) >= 200 and not self.final.done():
            self.final.set_result(message)
        return True

    def __repr__(self) -> str:
        return '<serve itself>'


class ServeHandle:
    """What an app may ask of serve: see :class:`aiosip_ws.serve.routing.Serve`."""

    def __init__(self, router: AppRouter, domains: frozenset[str]) -> None:
        self._router = router
        self.domains = domains
        #: tasks of the app's (spawn) running now
        self.running = 0

    @property
    def node(self) -> str | None:
        node: str | None = self._router.ctx.calls.node
        return node

    def spawn(self, coroutine: Awaitable[Any]) -> asyncio.Task[Any]:
        """Run ``coroutine`` in a task serve ends at shutdown (what it raises is logged);
        at most ``--max-pending`` at once (beyond: :class:`RoutingError`, and the
        coroutine is closed)."""
        router = self._router
        if self.running >= router.ctx.limits.max_pending:
            close = getattr(coroutine, 'close', None)
            if close is not None:
                close()
            raise RoutingError('the app has %d tasks running already (--max-pending)'
                               % self.running)
        self.running += 1
        task = router.ctx.spawn(self._logged(coroutine))
        task.add_done_callback(self._ended)
        return task

    def _ended(self, task: asyncio.Task[Any]) -> None:
        self.running -= 1

    @staticmethod
    async def _logged(coroutine: Awaitable[Any]) -> Any:
        try:
            return await coroutine
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - the app's task: logged, not lost
            logger.exception('a task the app spawned failed')
            return None

    async def lookup(self, aor: str) -> list[str]:
        try:
            key = SipURI.parse(aor).aor
        except SIPParseError as exc:
            raise RoutingError('lookup(%r): not a SIP URI (%s)' % (aor, exc)) from None
        return [str(b.contact.uri) for b in await self._router.lookup(key)]

    async def send_message(self, sender: str, to: str, body: str | bytes,
                           content_type: str = 'text/plain') -> int:
        router = self._router
        try:
            target = SipURI.parse(to)
            SipURI.parse(sender)
        except SIPParseError as exc:
            raise RoutingError('send_message(%r, %r): not a SIP URI (%s)' % (sender, to, exc)
                               ) from None
        if any(c in text for text in (sender, to, content_type) for c in '\r\n<>'):
            raise RoutingError('send_message: a URI or content type holds <, > or a line break')
        data = body.encode('utf-8') if isinstance(body, str) else bytes(body)
        origin = LocalOrigin()
        request = SIPMessage(method='MESSAGE', uri=str(target), headers=[
            ('Via', origin.via(new_branch())), ('Max-Forwards', '70'),
            ('From', '<%s>;tag=%s' % (sender, new_tag())), ('To', '<%s>' % to),
            ('Call-ID', new_call_id()), ('CSeq', '1 MESSAGE'),
            ('Content-Type', content_type)], body=data)
        bindings = await router.lookup(target.aor)
        if bindings or not router.hops.route(origin, request, target, 70):
            router.forker.relay(origin, request, bindings, 70)
        try:
            response = await asyncio.wait_for(
                asyncio.shield(origin.final), router.ctx.timer_c if bindings else 40.0)
        except asyncio.TimeoutError:
            return 408
        return response.status or 500


class LoopWatchdog:
    """Names the code that blocks the event loop, without a thread: a heartbeat on the
    loop every ``interval`` arms a one-shot timer of the kernel (``setitimer``) for
    ``interval + threshold``.  While the loop runs, each beat re-arms it before it
    expires; when something holds the loop longer, SIGALRM interrupts it and its handler
    (Python runs it in the main thread, between two bytecodes or in the middle of a
    ``time.sleep``) notes the frame running then; the heartbeat, back, logs how long the
    loop was held and where (the app's innermost function, else the innermost one).

    A thread that woke to look would cost every request: each of its wakes takes the GIL
    from the loop (about 5 % of a busy loop's CPU at 40 wakes a second, measured).  The
    timer costs one system call per beat.  It needs the loop in the main thread and
    SIGALRM free; elsewhere the watchdog stays off (logged)."""

    def __init__(self, files: Callable[[], frozenset[str]], *, threshold: float = 0.1,
                 interval: float = 0.05, metrics: Metrics | None = None) -> None:
        self.files = files
        self.threshold, self.interval = threshold, interval
        self.metrics = metrics
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._previous: Any = None
        self._armed = False
        self._due = 0.0
        #: (where, in the app) noted by the alarm while the loop was held, or None
        self._culprit: tuple[str, bool] | None = None
        #: times the loop was held longer than the threshold
        self.blocks = 0

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if threading.current_thread() is not threading.main_thread():
            logger.info('the loop watchdog is off: the event loop is not the main thread\'s')
            return
        previous = signal.getsignal(signal.SIGALRM)
        if previous not in (signal.SIG_DFL, signal.SIG_IGN, None):
            logger.info('the loop watchdog is off: SIGALRM has a handler already')
            return
        self._previous = previous
        signal.signal(signal.SIGALRM, self._alarm)
        self._armed = True
        self._due = time.monotonic() + self.interval
        self._handle = self._loop.call_later(self.interval, self._beat)
        signal.setitimer(signal.ITIMER_REAL, self.interval + self.threshold)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._armed:
            self._armed = False
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self._previous if self._previous is not None
                          else signal.SIG_DFL)

    def _beat(self) -> None:
        now = time.monotonic()
        late = now - self._due
        if late > self.threshold:
            self._report(late)
        self._culprit = None
        self._due = now + self.interval
        signal.setitimer(signal.ITIMER_REAL, self.interval + self.threshold)
        assert self._loop is not None
        self._handle = self._loop.call_later(self.interval, self._beat)

    def _alarm(self, signum: int, frame: FrameType | None) -> None:
        if self._culprit is None and self._armed:
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
                            'at least %d ms in %s: every call waits meanwhile; await an async '
                            'client, or use loop.run_in_executor', late * 1000, where)
        else:
            app_log.warning('loop blocked', 'the event loop was blocked for at least %d ms (in '
                            '%s)',
                            late * 1000, where)
