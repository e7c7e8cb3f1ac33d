"""Several ``aiosip-ws serve`` nodes sharing one location service and one bus in Redis.

``serve --redis redis://HOST:PORT/DB --node-id NAME``.  Redis (redis-py's ``redis.asyncio``,
the extra ``aiosip-ws[cluster]``) holds every node's bindings, and carries the SIP messages
one node relays to a client connected to another.  The in-memory registrar of each node
stays the record of the bindings its own connections hold (``/registrations``, metrics).

The location service, readable with ``redis-cli`` (``KEYS aiosip-ws:*``):

* ``aiosip-ws:aor:<AOR>``: a sorted set of the AOR's binding ids, scored by their expiry
  (ms since the epoch), pruned on every read; it expires with its last binding;
* ``aiosip-ws:binding:<AOR>:<id>``: a hash per binding (``contact``, ``node``,
  ``incarnation``, ``connection``, ``instance``, ``reg_id``, ``call_id``, ``cseq``, ``q``,
  ``expires``, ``registered``, ``remote``, ``via``) with the binding's own TTL (Redis 7.0
  has no per-field TTL, hence one key per binding);
* ``aiosip-ws:version:<AOR>``: a counter bumped by every change of the AOR.

A REGISTER is applied as the in-memory registrar applies it (the same code,
:meth:`~aiosip_ws.serve.registrar.Registrar.evaluate`: RFC 3261 §10.3's Call-ID/CSeq
check, the Contact cap, RFC 5626 flow replacement) to the AOR's bindings as read, then
written by one Lua script only if the AOR's version is still the one read: otherwise it
is evaluated again on what is there now (optimistic concurrency), so concurrent
REGISTERs through any nodes end as if applied one after the other.  A closing connection's
bindings are deleted at once.

The bus: each node subscribes to ``aiosip-ws:node:<NAME>``.  A request for a binding of
another node is published there (``send``: that node writes it to its client's
connection); the client's responses carry the branch of the node that relayed the
request (``z9hG4bK<random>.<NAME>``), so the node holding the connection publishes them
back to it (``response``).  A connection gone by the time a ``send`` arrives is answered
``gone`` at once (480 upstream); a message lost on the bus ends by the transaction
timers (408).  The node that relays a request owns its transaction, its fork and its
timers, wherever the branches are.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import logging
import secrets
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Awaitable
from typing import Any, Protocol, cast
from urllib.parse import urlsplit, urlunsplit

from ..core.codec import SIPMessage, parse, serialize
from ..core.sipuri import NameAddr
from ..core.transaction import new_branch
from ..errors import ConfigurationError, ConnectionLost, SIPParseError
from ..options import ServerOptions
from ..transport.tap import WireTap
from ..transport.throttle import LogThrottle
from .contacts import ContactIndex
from .flow import Flow, FlowState
from .registrar import Binding, RegisterResult, Registrar, register_aor
from .transactions import ClientTransactions

__all__ = ['Cluster', 'RemoteConnection', 'check_node_id']

#: what a Redis that is down or too slow raises (redis-py's errors, and OSError/timeouts)
REDIS_ERRORS: tuple[type[BaseException], ...] = (OSError, asyncio.TimeoutError)
try:
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError
    REDIS_ERRORS += (RedisConnectionError, RedisTimeoutError)
except ImportError:                             # without the cluster extra: Cluster refuses
    pass

logger = logging.getLogger(__name__)
#: what repeats while Redis is away: a few lines, then a count
peer_log = LogThrottle(logger)

PREFIX = 'aiosip-ws:'
#: attempts at one REGISTER before it gets 500 (each lost a race with another REGISTER)
MAX_ATTEMPTS = 200
#: messages waiting for the bus publisher; more are refused (the branch fails: 480)
MAX_OUTBOX = 10000
#: AORs whose last written state a node remembers (to skip the read of a refresh)
MAX_KNOWN = 10000
#: connections one node keeps to Redis (commands wait for a free one)
MAX_REDIS_CONNECTIONS = 32
#: seconds between heartbeats; a node silent for 3 of them is taken for dead
HEARTBEAT = 2.0

_READ = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local found = {}
local alive = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local flat = redis.call('HGETALL', ARGV[2] .. id)
  local fields = {}
  for i = 1, #flat, 2 do
    fields[flat[i]] = flat[i + 1]
  end
  local node = fields['node']
  if node and alive[node] == nil then
    alive[node] = redis.call('GET', ARGV[3] .. node) or false
  end
  if node and alive[node] == fields['incarnation'] then
    table.insert(found, fields)
  else
    -- gone, or held by a node that stopped heart-beating or started again since
    redis.call('DEL', ARGV[2] .. id)
    redis.call('ZREM', KEYS[1], id)
  end
end
-- one JSON string: the client parses one reply, not a nested array per field
return cjson.encode({redis.call('GET', KEYS[2]) or '0', found})
"""

_WRITE = """
if ARGV[1] ~= '*' and (redis.call('GET', KEYS[2]) or '0') ~= ARGV[1] then
  return 0
end
local ops = cjson.decode(ARGV[3])
for _, id in ipairs(ops.delete) do
  redis.call('DEL', ARGV[2] .. id)
  redis.call('ZREM', KEYS[1], id)
end
for _, b in ipairs(ops.put) do
  local key = ARGV[2] .. b.id
  redis.call('DEL', key)
  for field, value in pairs(b.fields) do
    redis.call('HSET', key, field, value)
  end
  redis.call('PEXPIREAT', key, b.at)
  redis.call('ZADD', KEYS[1], b.at, b.id)
end
local version = redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], 86400000)
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if #last > 0 then
  redis.call('PEXPIREAT', KEYS[1], last[2])
end
return version
"""


_RELEASE = """
local value = redis.call('GET', KEYS[1])
if value and string.sub(value, 1, string.len(ARGV[1])) == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
return 1
"""


_CLAIM_NC = """
if tonumber(ARGV[1]) <= tonumber(redis.call('GET', KEYS[1]) or '0') then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""


def _without_password(url: str) -> str:
    """``redis://user:secret@host/0`` as ``redis://user:***@host/0``: URLs reach log lines."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ''
    host = parts.netloc.rpartition('@')[2]
    return urlunsplit(parts._replace(netloc='%s:***@%s' % (user, host)))


def check_node_id(node: str) -> str:
    if not node or len(node) > 64 or not all(c.isalnum() or c == '-' for c in node):
        raise ConfigurationError('--node-id %r: use 1-64 letters, digits and "-"' % (node,))
    return node


def _binding_id(binding: Binding) -> str:
    return hashlib.sha1('\0'.join(binding.key).encode()).hexdigest()[:20]


class ClusterHost(Protocol):
    """What the cluster uses of the server it belongs to."""

    registrar: Registrar
    server_options: ServerOptions

    @property
    def transactions(self) -> ClientTransactions: ...

    @property
    def contacts(self) -> ContactIndex: ...

    def spawn(self, coroutine: Awaitable[Any]) -> asyncio.Task[Any]: ...

    def media_ended(self, call_id: str) -> None: ...

    #: where the bytes of SIP messages go (the bus is tapped too: see RemoteConnection)
    wire_tap: WireTap


class RemoteConnection:
    """A client connection that another node holds, as the relay core sees a connection:
    what is sent to it goes over the bus to that node."""

    def __init__(self, cluster: Cluster, node: str, incarnation: str, connection: str,
                 via: str, remote: str) -> None:
        self.cluster = cluster
        self.node, self.incarnation, self.connection = node, incarnation, connection
        self.via_transport, _, self.via_host = via.partition(' ')
        host, _, port = remote.rpartition(':')
        self.remote_addr = (host, int(port) if port.isdigit() else 0)
        self.flow_state = FlowState()
        self.options = cluster.relay.server_options
        self.is_open = True

    #: the relay core's test for a connection of another node
    is_remote = True
    #: its node holds it over WebSocket
    transport_name = 'ws'
    #: the bus and the WebSocket behind it lose nothing: no retransmissions
    reliable = True

    def __repr__(self) -> str:
        return '<RemoteConnection %s on node %s>' % (self.connection, self.node)

    def via(self, branch: str) -> str:
        return 'SIP/2.0/%s %s;branch=%s' % (self.via_transport, self.via_host, branch)

    #: not a socket of this node: what it carries goes over the bus (traces and the call
    #: history show it as going to the node; HEP leaves it to the node that holds it)
    local_addr = ('0.0.0.0', 0)

    def send(self, message: SIPMessage) -> bool:
        data = serialize(message)
        sink = self.cluster.relay.wire_tap.sink
        if sink is not None:
            sink('out', self, data)
        return self.cluster.publish(self.node, {
            'type': 'send', 'incarnation': self.incarnation, 'connection': self.connection,
            'message': data.decode('utf-8', 'surrogateescape')})


class Cluster:
    """This node's part of the location service and of the bus (see the module)."""

    def __init__(self, relay: ClusterHost, redis_url: str, node: str, *,
                 heartbeat: float = HEARTBEAT) -> None:
        try:
            import redis.asyncio as aioredis
        except ImportError:
            raise ConfigurationError('--redis needs redis-py: pip install "aiosip-ws[cluster]"'
                                     ) from None
        self.relay = relay
        self.node = check_node_id(node)
        #: random per start: bindings and messages of an earlier start are told apart
        self.incarnation = secrets.token_hex(6)
        from redis.asyncio.retry import Retry
        from redis.backoff import ExponentialBackoff
        # one retry on a fresh connection: after a Redis restart the pooled ones are dead
        # A bounded pool that makes commands wait for a free connection (up to 5 s): the
        # default one opens a connection per concurrent command, and under load runs into
        # "Too many connections".
        pool = aioredis.BlockingConnectionPool.from_url(
            redis_url, max_connections=MAX_REDIS_CONNECTIONS, timeout=5, decode_responses=True,
            socket_timeout=5, socket_connect_timeout=5,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
            retry_on_error=[RedisConnectionError, RedisTimeoutError])
        self.redis = aioredis.Redis(connection_pool=pool)
        #: for log lines: the URL without its password
        self.url = _without_password(redis_url)
        self._read = self.redis.register_script(_READ)
        self._write = self.redis.register_script(_WRITE)
        self._release_host = self.redis.register_script(_RELEASE)
        self._claim_nc = self.redis.register_script(_CLAIM_NC)
        self.registrar: Registrar = relay.registrar
        self.registrar.clock = time.time             # expiries are shared: wall clock
        #: connection id -> this node's connection
        self.local: dict[str, Flow] = {}
        self._ids = itertools.count(1)
        self._peers: weakref.WeakValueDictionary[tuple[str, str, str], RemoteConnection] = \
            weakref.WeakValueDictionary()
        #: Redis commands in the order they must run: PUBLISH, and the SETs of Contact
        #: hosts (written before the response that carries the Contact is published)
        self._outbox: deque[tuple[str, ...]] = deque()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._pubsub: Any = None
        #: Redis failed at the last try: this node serves from its own bindings
        self.degraded = False
        self.heartbeat = heartbeat
        self._beaten = False
        self._republishing = False
        #: AOR -> [the lock its REGISTERs take here, how many hold or wait for it]
        self._aor_locks: dict[str, list[Any]] = {}
        #: AOR -> (version, bindings) as this node last wrote them (most recent last)
        self._known: OrderedDict[str, tuple[str, list[Binding]]] = OrderedDict()

    # -- life cycle -------------------------------------------------------------------
    async def start(self) -> None:
        try:
            await asyncio.wait_for(self.redis.ping(), 5)
        except Exception as exc:  # noqa: BLE001 - whatever redis-py raises: say what to fix
            raise ConfigurationError('cannot reach Redis at %s: %s' % (self.url, exc)) from None
        await self._beat()                    # alive before any binding: see _READ
        self._pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        await self._pubsub.subscribe(self.channel(self.node))
        self._tasks = [asyncio.ensure_future(self._receive()), asyncio.ensure_future(self._publish()),
                       asyncio.ensure_future(self._heartbeats())]
        logger.info('cluster node %s (incarnation %s) on Redis %s', self.node, self.incarnation,
                    self.url)

    async def close(self) -> None:
        """Stop the bus and the heartbeats; this node's bindings die with its alive key."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):   # shutting down
                await task
        with contextlib.suppress(Exception):
            if self._pubsub is not None:
                await asyncio.wait_for(self._pubsub.aclose(), 5)
            await asyncio.wait_for(self.redis.delete(PREFIX + 'alive:' + self.node), 5)
        await self.redis.aclose()

    async def _beat(self) -> None:
        """``aiosip-ws:alive:<node>`` = this incarnation, for 3 heartbeats.  Found missing
        (Redis restarted empty, or it expired while Redis was away): publish again."""
        previous = await self.redis.set(PREFIX + 'alive:' + self.node, self.incarnation,
                                        px=int(self.heartbeat * 3000), get=True)
        if previous != self.incarnation and self._beaten:
            self.degraded = True                  # _reachable() publishes the bindings again
        self._beaten = True

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat)
            try:
                await self._beat()
            except REDIS_ERRORS as exc:
                self._unreachable(exc)
                continue
            self._reachable()

    @staticmethod
    def channel(node: str) -> str:
        return PREFIX + 'node:' + node

    # -- connections ------------------------------------------------------------------
    def connection_made(self, conn: Flow) -> None:
        conn.flow_state.cluster_id = cid = str(next(self._ids))
        self.local[cid] = conn

    def connection_lost(self, conn: Flow) -> None:
        """Before the local registrar forgets them: delete its bindings in Redis too, and
        its Contact hosts."""
        state = conn.flow_state
        cid = state.cluster_id
        self.local.pop(cid, None)
        hosts = list(state.contact_hosts)
        if hosts:
            self.relay.spawn(self._release(hosts, cid))
        held: dict[str, list[str]] = {}
        for binding in self.registrar.bindings_of(conn):
            held.setdefault(binding.aor, []).append(_binding_id(binding))
        for aor, ids in held.items():
            self._known.pop(aor, None)           # it changes now (and holds the connection)
            self.relay.spawn(self._delete(aor, ids))

    async def _delete(self, aor: str, ids: list[str]) -> None:
        try:
            await self._write(keys=self._keys(aor), args=['*', self._binding_prefix(aor),
                                                          json.dumps({'delete': ids, 'put': []})])
        except REDIS_ERRORS as exc:                      # they expire by themselves anyway
            self._unreachable(exc)
            logger.warning('could not delete %d binding(s) of %s from Redis: %s', len(ids), aor, exc)

    # -- the location service ----------------------------------------------------------
    @staticmethod
    def _keys(aor: str) -> list[str]:
        return [PREFIX + 'aor:' + aor, PREFIX + 'version:' + aor]

    @staticmethod
    def _binding_prefix(aor: str) -> str:
        return PREFIX + 'binding:' + aor + ':'

    async def _bindings(self, aor: str) -> tuple[str, list[Binding]]:
        """The AOR's version and live bindings, newest first."""
        version, found = json.loads(await self._read(keys=self._keys(aor), args=[
            int(time.time() * 1000), self._binding_prefix(aor), PREFIX + 'alive:']))
        bindings = []
        for fields in found if isinstance(found, list) else ():   # (cjson: {} for empty)
            binding = self._binding(aor, fields)
            if binding is not None:
                bindings.append(binding)
        bindings.sort(key=lambda b: b.registered_at, reverse=True)
        return version, bindings

    def _binding(self, aor: str, fields: dict[str, str]) -> Binding | None:
        try:
            contact = NameAddr.parse(fields['contact'])
            node, incarnation, cid = fields['node'], fields['incarnation'], fields['connection']
            if node == self.node and incarnation == self.incarnation:
                conn: Any = self.local.get(cid)
                if conn is None:
                    return None                       # closed here; being deleted
            else:
                key = (node, incarnation, cid)
                conn = self._peers.get(key)
                if conn is None:
                    conn = self._peers[key] = RemoteConnection(
                        self, node, incarnation, cid, fields.get('via', 'WS invalid'),
                        fields.get('remote', ''))
            return Binding(aor, contact, conn, float(fields['expires']), fields['call_id'],
                           int(fields['cseq']), fields.get('instance') or None,
                           fields.get('reg_id') or None,
                           registered_at=float(fields['registered']), q=float(fields['q']))
        except (KeyError, ValueError, SIPParseError) as exc:
            logger.warning('ignored a malformed binding of %s in Redis: %s', aor, exc)
            return None

    def _fields(self, binding: Binding) -> dict[str, str]:
        conn = binding.connection
        if isinstance(conn, RemoteConnection):
            node, incarnation, cid = conn.node, conn.incarnation, conn.connection
            via, remote = '%s %s' % (conn.via_transport, conn.via_host), '%s:%d' % conn.remote_addr
        else:
            node, incarnation, cid = self.node, self.incarnation, conn.flow_state.cluster_id
            via = '%s %s' % (conn.via_transport, conn.via_host)
            remote = '%s:%d' % tuple(conn.remote_addr[:2])
        return {'aor': binding.aor, 'contact': str(binding.contact), 'node': node,
                'incarnation': incarnation, 'connection': cid, 'via': via, 'remote': remote,
                'instance': binding.instance or '', 'reg_id': binding.reg_id or '',
                'call_id': binding.call_id, 'cseq': str(binding.cseq), 'q': repr(binding.q),
                'expires': repr(binding.expires_at), 'registered': repr(binding.registered_at)}

    async def lookup(self, aor: str) -> list[Binding] | None:
        """The AOR's bindings on every node, newest first; None while Redis is unreachable
        (the caller then has this node's own bindings only)."""
        try:
            bindings = (await self._bindings(aor))[1]
        except REDIS_ERRORS as exc:
            self._unreachable(exc)
            return None
        self._reachable()
        return bindings

    async def register(self, request: SIPMessage, conn: Flow, *,
                       authenticated: bool = False) -> RegisterResult:
        """Apply a REGISTER to the shared bindings of its AOR (see the module).  While
        Redis is unreachable it goes to this node's registrar alone (published again
        when Redis is back)."""
        aor = register_aor(request)
        if isinstance(aor, RegisterResult):
            return aor
        # One REGISTER per AOR at a time on this node, in arrival order (asyncio's locks
        # are fair): a client's pipelined refreshes must not overtake each other (their
        # CSeq order, RFC 3261 §10.3 step 7); races with other nodes are the script's.
        entry = self._aor_locks.get(aor)
        if entry is None:
            entry = self._aor_locks[aor] = [asyncio.Lock(), 0]
        entry[1] += 1
        try:
            async with entry[0]:
                try:
                    result = await self._register(aor, request, conn, authenticated)
                except REDIS_ERRORS as exc:
                    self._unreachable(exc)
                    return self.registrar.register(request, conn, authenticated=authenticated)
        finally:
            entry[1] -= 1
            if not entry[1]:
                del self._aor_locks[aor]
        self._reachable()
        return result

    async def _register(self, aor: str, request: SIPMessage, conn: Flow,
                        authenticated: bool) -> RegisterResult:
        known = self._known.pop(aor, None)
        for _ in range(MAX_ATTEMPTS):
            # what this node wrote last for the AOR (a refresh then costs one script), else
            # a read; a stale version only makes the write fail, then comes the read
            version, current = known if known is not None else await self._bindings(aor)
            known = None
            now = time.time()
            result, bindings = self.registrar.evaluate(request, conn, current,
                                                       authenticated=authenticated, now=now)
            if bindings is None:
                return result
            kept = {id(b) for b in bindings}
            ops = {'delete': [_binding_id(b) for b in current if id(b) not in kept],
                   'put': [self._put(b) for b in bindings if not any(b is c for c in current)]}
            written = await self._write(keys=self._keys(aor), args=[
                version, self._binding_prefix(aor), json.dumps(ops)])
            if not written:
                continue                                  # another REGISTER came first
            if not conn.is_open:                          # it closed while we wrote
                gone = [_binding_id(b) for b in bindings if b.connection is conn]
                bindings = [b for b in bindings if b.connection is not conn]
                if gone:
                    self.relay.spawn(self._delete(aor, gone))
            else:
                self._known[aor] = (str(written), bindings)
                if len(self._known) > MAX_KNOWN:
                    self._known.popitem(last=False)
            self.registrar.store(aor, [b for b in bindings
                                       if not isinstance(b.connection, RemoteConnection)])
            live = sorted(bindings, key=lambda b: b.registered_at, reverse=True)
            return self.registrar.accepted(live, now, request, conn, authenticated)
        logger.warning('REGISTER %s: lost %d races for the AOR in Redis', aor, MAX_ATTEMPTS)
        return RegisterResult(500, 'Server Internal Error (too many concurrent REGISTERs)')

    def _put(self, binding: Binding) -> dict[str, Any]:
        return {'id': _binding_id(binding), 'at': int(binding.expires_at * 1000),
                'fields': self._fields(binding)}

    # -- Redis unreachable -------------------------------------------------------------
    def _unreachable(self, exc: BaseException) -> None:
        if not self.degraded:
            logger.error('Redis at %s is unreachable (%s): serving this node\'s own '
                         'connections only until it is back', self.url, exc)
        self.degraded = True

    def _reachable(self) -> None:
        if self.degraded:
            self.degraded = False
            if self._republishing:
                return
            logger.warning('Redis at %s is back: publishing this node\'s bindings again', self.url)
            self._republishing = True
            self.relay.spawn(self._republish())

    async def _republish(self) -> None:
        """Write this node's live bindings to Redis again, with their remaining time."""
        try:
            now = time.time()
            for binding in list(self.registrar.bindings()):
                if binding.expires_at <= now:
                    continue
                try:
                    await self._write(keys=self._keys(binding.aor), args=[
                        '*', self._binding_prefix(binding.aor),
                        json.dumps({'delete': [], 'put': [self._put(binding)]})])
                except REDIS_ERRORS as exc:
                    self._unreachable(exc)
                    return
        finally:
            self._republishing = False

    # -- Digest nonce counts shared by the nodes ------------------------------------------
    async def claim_nonce_count(self, nonce: str, nc: int, *, lifetime: float) -> bool:
        """True when ``nc`` is above every count of ``nonce`` any node accepted (then it is
        the highest); False for a replay.  Redis unreachable: True (this node's own store
        has checked it)."""
        try:
            return bool(await self._claim_nc(keys=[PREFIX + 'nc:' + nonce],
                                             args=[nc, int(lifetime * 1000) + 60000]))
        except REDIS_ERRORS as exc:
            self._unreachable(exc)
            return True

    # -- Contact hosts: in-dialog requests between nodes --------------------------------
    def claim(self, host: str, conn: Flow) -> None:
        """``host`` (a `.invalid` Contact host) is behind this node's ``conn``: record it
        in ``aiosip-ws:contact:<host>`` for the other nodes, in order with the bus."""
        value = ' '.join((self.node, self.incarnation, conn.flow_state.cluster_id,
                          '%s %s' % (conn.via_transport, conn.via_host),
                          '%s:%d' % (conn.remote_addr[0], conn.remote_addr[1])))
        if len(self._outbox) < MAX_OUTBOX:
            self._outbox.append(('SET', PREFIX + 'contact:' + host, value,
                                 'EX', str(self.registrar.max_expires)))
            self._wake.set()

    async def peer_for(self, host: str) -> RemoteConnection | None:
        """The connection of another live node that ``host`` is behind, or None."""
        try:
            value = cast('str | None', await self.redis.get(PREFIX + 'contact:' + host))
            if value is None:
                return None
            node, incarnation, cid, transport, via_host, remote = value.split(' ')
            alive = await self.redis.get(PREFIX + 'alive:' + node)
        except REDIS_ERRORS as exc:
            self._unreachable(exc)
            return None
        except ValueError:
            return None
        if alive != incarnation or (node == self.node and incarnation == self.incarnation):
            return None
        key = (node, incarnation, cid)
        peer = self._peers.get(key)
        if peer is None:
            peer = self._peers[key] = RemoteConnection(self, node, incarnation, cid,
                                                       '%s %s' % (transport, via_host), remote)
        return peer

    async def _release(self, hosts: list[str], cid: str) -> None:
        """A closed connection's Contact hosts, unless another connection took them."""
        try:
            for host in hosts:
                await self._release_host(keys=[PREFIX + 'contact:' + host],
                                         args=['%s %s %s ' % (self.node, self.incarnation, cid)])
        except REDIS_ERRORS as exc:
            self._unreachable(exc)

    # -- calls anchored on a media relay ---------------------------------------------
    def record_media(self, call_id: str, fields: dict[str, str], ttl: int) -> None:
        """An anchored call, for whichever node gets its in-dialog requests:
        ``aiosip-ws:media:<Call-ID>`` (JSON: the relay, the tags and the profiles)."""
        if len(self._outbox) < MAX_OUTBOX:
            self._outbox.append(('SET', PREFIX + 'media:' + call_id, json.dumps(fields),
                                 'EX', str(ttl)))
            self._wake.set()

    def forget_media(self, call_id: str) -> None:
        if len(self._outbox) < MAX_OUTBOX:
            self._outbox.append(('DEL', PREFIX + 'media:' + call_id))
            self._wake.set()

    async def media_of(self, call_id: str) -> dict[str, str] | None:
        """What :meth:`record_media` wrote for ``call_id``, or None."""
        try:
            value = await self.redis.get(PREFIX + 'media:' + call_id)
        except REDIS_ERRORS as exc:
            self._unreachable(exc)
            return None
        try:
            fields = json.loads(value) if value else None
        except ValueError:
            return None
        return fields if isinstance(fields, dict) else None

    # -- the bus ----------------------------------------------------------------------
    def branch(self) -> str:
        """A branch that names this node, for the requests it relays."""
        return '%s.%s' % (new_branch(), self.node)

    def publish(self, node: str, message: dict[str, Any]) -> bool:
        if len(self._outbox) >= MAX_OUTBOX:
            peer_log.warning('bus backlog', 'the Redis bus is behind (%d messages): refused '
                             'one for node %s', MAX_OUTBOX, node)
            return False
        message['from'] = self.node
        self._outbox.append(('PUBLISH', self.channel(node), json.dumps(message)))
        self._wake.set()
        return True

    async def _publish(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._outbox:
                batch = [self._outbox.popleft() for _ in range(min(len(self._outbox), 500))]
                try:
                    async with self.redis.pipeline(transaction=False) as pipe:
                        for command in batch:
                            pipe.execute_command(*command)
                        await pipe.execute()
                except Exception as exc:  # noqa: BLE001 - lost: the transaction timers end them
                    self._unreachable(exc)
                    peer_log.warning('bus losses', 'the Redis bus lost %d message(s): %s',
                                     len(batch), exc)

    async def _receive(self) -> None:
        while True:
            try:
                async for item in self._pubsub.listen():
                    if item.get('type') == 'message':
                        self._received(item['data'])
                # listen() ends when nothing is subscribed any more: subscribe again
                peer_log.warning('bus subscription failures', 'the Redis bus subscription '
                                 'ended; subscribing again')
                await asyncio.sleep(0.5)
                await self._pubsub.subscribe(self.channel(self.node))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - reconnect and go on
                self._unreachable(exc)
                peer_log.warning('bus subscription failures', 'the Redis bus subscription '
                                 'failed: %s; subscribing again', exc)
                await asyncio.sleep(0.5)

    def _received(self, data: str) -> None:
        try:
            message = json.loads(data)
            kind = message['type']
            sip = parse(message['message'].encode('utf-8', 'surrogateescape')) \
                if 'message' in message else None
        except (ValueError, KeyError, SIPParseError) as exc:
            logger.warning('dropped a malformed message from the Redis bus: %s', exc)
            return
        origin = message.get('from', '')
        if kind == 'send':
            conn = self.local.get(message.get('connection', ''))
            if (sip is None or conn is None or not conn.is_open
                    or message.get('incarnation') != self.incarnation):
                if sip is not None and sip.is_request and sip.method != 'ACK':
                    self.publish(origin, {'type': 'gone', 'branch': sip.top_branch or '',
                                          'method': sip.method})
                return
            if sip.is_request:
                self.relay.transactions.carry(conn, sip)    # its responses: forward_response
            else:
                conn.send(sip)
        elif kind == 'response' and sip is not None:
            peer = self._peers.get((origin, message.get('incarnation', ''),
                                    message.get('connection', '')))
            if peer is not None:
                sink = self.relay.wire_tap.sink
                if sink is not None:
                    sink('in', peer, message['message'].encode('utf-8', 'surrogateescape'))
                self.relay.transactions.response_received(peer, sip)
        elif kind == 'media-ended':               # a call this node anchored, ended there
            self.relay.media_ended(str(message.get('call-id', '')))
        elif kind == 'gone':
            gone = ConnectionLost('the client left node %s before the request reached it'
                                  % origin)
            self.relay.transactions.finish(message.get('branch', ''), message.get('method', ''),
                                           gone)

    def forward_response(self, conn: Flow, response: SIPMessage, branch: str) -> bool:
        """A response on one of this node's connections to a request another node relayed
        (its branch names that node): published back to it.  False: not such a response."""
        node = branch.rpartition('.')[2] if '.' in branch else ''
        if not node or node == self.node:
            return False
        self.relay.contacts.learn_contact(conn, response)   # its Contact host, before the response
        return self.publish(node, {
            'type': 'response', 'incarnation': self.incarnation,
            'connection': conn.flow_state.cluster_id,
            'message': serialize(response).decode('utf-8', 'surrogateescape')})
