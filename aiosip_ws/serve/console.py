"""The operator's console on serve's own port: ``/calls`` and each call as a ladder.

Plain HTTP on the listeners (:class:`Console`, reached through
:class:`~aiosip_ws.serve.observe.AdminEndpoints`), read-only, GET only:

* ``/calls/login``: a form that takes the admin token; its script sends it once in an
  ``Authorization: Bearer`` header to ``/calls/session``, which answers with the console's
  cookie (``HttpOnly``, ``SameSite=Strict``, 8 hours): the token never travels in a URL;
* ``/calls``: the recent calls and transactions (:mod:`aiosip_ws.serve.history`),
  filterable by AOR, address and Call-ID; ``/calls.json`` the same as JSON;
* ``/calls/<Call-ID>``: the call as a ladder, drawn in the page as SVG by
  ``/calls/console.js`` (one column per party, one arrow per message; a click shows the
  message), live while the call goes on: the page follows it over the admin WebSocket
  (:mod:`aiosip_ws.serve.admin`), which takes the console's cookie too;
* ``/calls/<Call-ID>.json``, and ``/calls/<Call-ID>.pcap``: a pcapng file, one UDP
  datagram per message with the real addresses and ports (a comment names the real
  transport), or with ``?framing=tcp`` TCP segments that reassemble.

Every view answers only ``--metrics-allow`` addresses that present the admin token (the
header or the cookie).  Pages carry ``Content-Security-Policy: default-src 'self'``; the
script sets every string from SIP as text (``textContent``), never as markup; Call-IDs in
paths are percent-encoded.
"""
from __future__ import annotations

import hashlib
import hmac
import html
import json
import time
import urllib.parse
from typing import Any

__all__ = ['Console', 'COOKIE', 'cookie_value', 'valid_cookie', 'token_offered']

#: the console's cookie
COOKIE = 'aiosip_ws_console'
#: how long a console cookie is good for
COOKIE_LIFETIME = 8 * 3600

TEXT = 'text/plain; charset=utf-8'
PAGE_HEADERS = [('Content-Security-Policy', "default-src 'self'"),
                ('X-Content-Type-Options', 'nosniff'), ('Cache-Control', 'no-store'),
                ('Referrer-Policy', 'no-referrer')]


def cookie_value(token: bytes, now: float | None = None) -> str:
    """A console cookie for ``token``: its expiry and an HMAC of it under the token."""
    expires = int((time.time() if now is None else now) + COOKIE_LIFETIME)
    mac = hmac.new(token, b'aiosip-ws console %d' % expires, hashlib.sha256).hexdigest()
    return '%d.%s' % (expires, mac)


def valid_cookie(token: bytes, headers: Any, now: float | None = None) -> bool:
    """Whether ``headers`` carry a console cookie made with ``token`` that has not expired."""
    for header in headers.get_all('Cookie'):
        for item in header.split(';'):
            name, _, value = item.strip().partition('=')
            if name != COOKIE:
                continue
            expires, _, mac = value.partition('.')
            if not expires.isdigit() or int(expires) < (time.time() if now is None else now):
                continue
            good = hmac.new(token, b'aiosip-ws console %d' % int(expires),
                            hashlib.sha256).hexdigest()
            if hmac.compare_digest(mac, good):
                return True
    return False


def token_offered(token: bytes, headers: Any) -> bool:
    """Whether ``headers`` carry ``token`` in an ``Authorization: Bearer`` header."""
    for value in headers.get_all('Authorization'):
        scheme, _, credentials = value.strip().partition(' ')
        if scheme.lower() == 'bearer' and hmac.compare_digest(credentials.strip().encode(),
                                                              token):
            return True
    return False


class Console:
    """The console's pages (see the module); ``allowed(address)`` is ``--metrics-allow``."""

    def __init__(self, history: Any, token: bytes, allowed: Any) -> None:
        self.history = history
        self.token = token
        self.allowed = allowed

    def __call__(self, path: str, headers: Any, address: str) -> tuple[Any, ...]:
        if not self.allowed(address):
            return 403, TEXT, b'not from this address\n', PAGE_HEADERS
        parts = urllib.parse.urlsplit(path)
        route = parts.path
        if route == '/calls/login':
            return 200, 'text/html; charset=utf-8', LOGIN_PAGE, PAGE_HEADERS
        if route == '/calls/console.js':
            return 200, 'text/javascript; charset=utf-8', SCRIPT, PAGE_HEADERS
        if route == '/calls/session':
            if not token_offered(self.token, headers):
                return 401, TEXT, b'the admin token, in Authorization: Bearer\n', PAGE_HEADERS
            return 204, TEXT, b'', [*PAGE_HEADERS, (
                'Set-Cookie', '%s=%s; Path=/; Max-Age=%d; HttpOnly; SameSite=Strict'
                % (COOKIE, cookie_value(self.token), COOKIE_LIFETIME))]
        if not (token_offered(self.token, headers) or valid_cookie(self.token, headers)):
            return 401, TEXT, b'the admin token, in Authorization: Bearer (or log in at ' \
                b'/calls/login)\n', [*PAGE_HEADERS, ('WWW-Authenticate',
                                                     'Bearer realm="aiosip-ws"')]
        query = {k: v[0] for k, v in urllib.parse.parse_qs(parts.query).items()}
        if route in ('/calls', '/calls.json'):
            wanted = {name: query[name] for name in ('aor', 'address', 'call_id')
                      if query.get(name)}
            try:
                rows = self.history.recent(**wanted)
            except ValueError as exc:
                return 400, TEXT, ('%s\n' % exc).encode(), PAGE_HEADERS
            if route == '/calls.json':
                return 200, 'application/json', _json(rows), PAGE_HEADERS
            return 200, 'text/html; charset=utf-8', _calls_page(rows, wanted), PAGE_HEADERS
        name = route[len('/calls/'):]
        suffix = next((s for s in ('.json', '.pcap') if name.endswith(s)), '')
        call_id = urllib.parse.unquote(name[:len(name) - len(suffix)])
        record = self.history.get(call_id)
        if record is None:
            return 404, TEXT, b'no such call in the history\n', PAGE_HEADERS
        if suffix == '.pcap':
            framing = query.get('framing', 'udp')
            if framing not in ('udp', 'tcp'):
                return 400, TEXT, b'framing=udp or framing=tcp\n', PAGE_HEADERS
            return 200, 'application/octet-stream', self.history.pcap(call_id, framing), [
                *PAGE_HEADERS, ('Content-Disposition', 'attachment; filename="%s.pcap"'
                                % urllib.parse.quote(call_id, safe=''))]
        if suffix == '.json':
            return 200, 'application/json', _json(
                {**record.summary(), 'entries': [e.as_json() for e in record.entries]}), \
                PAGE_HEADERS
        return 200, 'text/html; charset=utf-8', _ladder_page(call_id), PAGE_HEADERS


def _json(value: Any) -> bytes:
    return (json.dumps(value, indent=1) + '\n').encode()


_HEAD = ('<!DOCTYPE html><html><head><meta charset="utf-8"><title>aiosip-ws: %s</title>'
         '<script src="/calls/console.js" defer></script></head><body>')

LOGIN_PAGE = (_HEAD % 'log in' + '<h1>aiosip-ws console</h1><form id="login">'
              '<label>admin token <input id="token" type="password" autocomplete="off">'
              '</label> <button>log in</button> <span id="failed"></span></form>'
              '</body></html>').encode()


def _calls_page(rows: list[dict[str, Any]], wanted: dict[str, str]) -> bytes:
    """The /calls page: every string from SIP escaped."""
    esc = html.escape
    lines = [_HEAD % 'recent calls', '<h1>Recent calls</h1>',
             '<form method="get" action="/calls">',
             *('<label>%s <input name="%s" value="%s"></label> ' % (label, name,
                                                                  esc(wanted.get(name, '')))
               for name, label in (('aor', 'AOR'), ('address', 'address'),
                                   ('call_id', 'Call-ID'))),
             '<button>filter</button></form>',
             '<table><tr><th>started</th><th>method</th><th>From</th><th>To</th><th>status'
             '</th><th>duration (s)</th><th>peers</th><th>node</th><th>Call-ID</th></tr>']
    for row in rows:
        quoted = urllib.parse.quote(row['call_id'], safe='')
        lines.append('<tr><td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td>'
                     '<td>%s</td><td>%s</td><td><a href="/calls/%s">%s</a> '
                     '<a href="/calls/%s.pcap">pcap</a></td></tr>' % (
                         esc(time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(row['started']))),
                         esc(row['method'] or ''), esc(row['from']), esc(row['to']),
                         esc(str(row['status'] or '')), row['duration'],
                         esc(' '.join(row['peers'])), esc(row['node'] or ''), quoted,
                         esc(row['call_id']), quoted))
    lines.append('</table></body></html>')
    return '\n'.join(lines).encode()


def _ladder_page(call_id: str) -> bytes:
    esc = html.escape
    return (_HEAD % esc('call ' + call_id) + '<h1>Call <span id="call-id">%s</span></h1>'
            '<p><a href="/calls">recent calls</a> <a href="/calls/%s.pcap">pcap</a> '
            '<span id="live"></span></p><div id="ladder" data-call-id="%s"></div>'
            '<pre id="message"></pre></body></html>'
            % (esc(call_id), urllib.parse.quote(call_id, safe=''),
               esc(call_id, quote=True))).encode()


SCRIPT = br"""'use strict';
// aiosip-ws console: the login form, and a call's ladder (SVG), live over the admin
// WebSocket. Every string from SIP goes in as text (textContent), never as markup.
(function () {
  const SVG = 'http://www.w3.org/2000/svg';
  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  const login = document.getElementById('login');
  if (login) {
    login.addEventListener('submit', async (event) => {
      event.preventDefault();
      const token = document.getElementById('token').value;
      const answer = await fetch('/calls/session', {headers: {Authorization: 'Bearer ' + token},
                                                   credentials: 'same-origin'});
      if (answer.ok) { location.href = '/calls'; return; }
      document.getElementById('failed').textContent = 'refused (' + answer.status + ')';
    });
    return;
  }

  const ladder = document.getElementById('ladder');
  if (!ladder) return;
  const callId = ladder.dataset.callId;
  const entries = [];
  const seen = new Set();
  function add(entry) {
    const key = [entry.time, entry.kind, entry.label, entry.direction,
                 (entry.source || []).join(':'), (entry.destination || []).join(':')].join('|');
    if (seen.has(key)) return false;
    seen.add(key);
    entries.push(entry);
    return true;
  }
  function peerOf(entry) {
    const end = entry.direction === 'in' ? entry.source : entry.destination;
    if (entry.kind === 'media') return null;
    if (entry.kind === 'closed' || entry.kind === 'opened')
      return entry.transport + ' ' + entry.source.join(':');
    return entry.transport + ' ' + end.join(':');
  }
  function draw() {
    entries.sort((a, b) => a.time - b.time);
    const peers = [];
    for (const entry of entries) {
      const peer = peerOf(entry);
      if (peer !== null && !peers.includes(peer)) peers.push(peer);
    }
    const columns = [peers[0], 'serve', ...peers.slice(1)].filter((c) => c !== undefined);
    const x = (name) => 110 + 220 * columns.indexOf(name);
    const width = 220 * columns.length + 120, height = 60 + 34 * entries.length;
    const drawing = svg('svg', {width: width, height: height, viewBox: '0 0 ' + width + ' ' + height});
    const defs = svg('defs');
    const marker = svg('marker', {id: 'head', markerWidth: 10, markerHeight: 8, refX: 10, refY: 4,
                                  orient: 'auto'});
    marker.appendChild(svg('path', {d: 'M0,0 L10,4 L0,8 z'}));
    defs.appendChild(marker);
    drawing.appendChild(defs);
    for (const name of columns) {
      const column = svg('g', {'class': 'party'});
      column.appendChild(svg('text', {x: x(name), y: 20, 'text-anchor': 'middle'}, name));
      column.appendChild(svg('line', {x1: x(name), y1: 30, x2: x(name), y2: height - 10,
                                      stroke: '#999'}));
      drawing.appendChild(column);
    }
    const first = entries.find((e) => e.kind === 'message');
    const start = first ? first.time : 0;
    entries.forEach((entry, i) => {
      const y = 55 + 34 * i;
      const ms = Math.round((entry.time - start) * 1000);
      const since = (ms >= 0 ? '+' : '') + ms + ' ms';
      if (entry.kind === 'message') {
        const peer = x(peerOf(entry)), serve = x('serve');
        const [from, to] = entry.direction === 'in' ? [peer, serve] : [serve, peer];
        const arrow = svg('g', {'class': 'message', 'data-index': i, cursor: 'pointer'});
        arrow.appendChild(svg('line', {x1: from, y1: y, x2: to, y2: y, stroke: '#036',
                                       'stroke-width': 1.5, 'marker-end': 'url(#head)'}));
        arrow.appendChild(svg('text', {x: (from + to) / 2, y: y - 5, 'text-anchor': 'middle',
                                       'class': 'label'}, entry.label));
        arrow.appendChild(svg('text', {x: Math.min(from, to) + 2, y: y + 12, 'font-size': 10,
                                       'class': 'since'}, since));
        arrow.addEventListener('click', () => {
          document.getElementById('message').textContent = entry.text;
        });
        drawing.appendChild(arrow);
      } else {
        const where = entry.kind === 'media' ? x('serve') : x(peerOf(entry));
        const note = svg('g', {'class': entry.kind});
        note.appendChild(svg('text', {x: where + 6, y: y, 'font-size': 11},
                             (entry.kind === 'closed' ? 'connection closed '
                              : entry.kind === 'opened' ? 'connection ' : 'media: ')
                             + entry.label + ' ' + since));
        drawing.appendChild(note);
      }
    });
    ladder.replaceChildren(drawing);
  }

  async function load() {
    const answer = await fetch('/calls/' + encodeURIComponent(callId) + '.json',
                               {credentials: 'same-origin'});
    if (!answer.ok) { ladder.textContent = 'no such call (' + answer.status + ')'; return; }
    for (const entry of (await answer.json()).entries) add(entry);
    draw();
    const live = document.getElementById('live');
    const socket = new WebSocket((location.protocol === 'https:' ? 'wss://' : 'ws://')
                                 + location.host + '/', ['aiosip-ws.admin']);
    socket.addEventListener('open', () => {
      socket.send(JSON.stringify({trace: {call_id: callId}}));
    });
    socket.addEventListener('message', (event) => {
      const frame = JSON.parse(event.data);
      if (frame.type === 'tracing') { live.textContent = 'live'; return; }
      if (frame.type !== 'message') return;
      const entry = {time: frame.time, kind: 'message', direction: frame.direction,
                     transport: frame.transport, source: frame.source,
                     destination: frame.destination, text: frame.text || '',
                     label: frame.method || String(frame.status)};
      if (add(entry)) draw();
    });
    socket.addEventListener('close', () => { live.textContent = ''; });
  }
  load();
})();
"""
