#!/usr/bin/env node
'use strict';
// JsSIP 3.13 user agent driven by JSON lines on stdin (see agent_common.js).
//
//   node jssip_agent.js --url ws://127.0.0.1:PORT/ --aor sip:alice@example.com \
//        [--user alice --password secret] [--display Alice] [--expires 600] [--debug]

const common = require('./agent_common');
const { emit, log } = common;

const opts = common.setUp();
const JsSIP = require('jssip');
emit({ event: 'started', library: 'jssip', version: JsSIP.version, pid: process.pid });

if (opts.debug) {
  JsSIP.debug.enable('JsSIP:*');
} else {
  JsSIP.debug.disable();
}
if (opts.keepalive) {
  log('jssip_agent: --keepalive is not supported by JsSIP, ignored');
}

const socket = new JsSIP.WebSocketInterface(opts.url);
const config = {
  sockets: [socket],
  uri: opts.aor,
  register: false,
  session_timers: false,
  user_agent: opts.userAgent || `JsSIP ${JsSIP.version} (aiosip-ws interop)`,
  // keep reconnect attempts slow enough that a test sees "disconnected"
  connection_recovery_min_interval: 2,
  connection_recovery_max_interval: 30,
};
if (opts.user) config.authorization_user = opts.user;
if (opts.password !== null) config.password = opts.password;
if (opts.display) config.display_name = opts.display;
if (opts.expires) config.register_expires = opts.expires;

const ua = new JsSIP.UA(config);

ua.on('connected', () => emit({ event: 'connected' }));
ua.on('disconnected', (e) => emit({
  event: 'disconnected',
  error: !!(e && e.error),
  code: e && e.code,
  reason: e && e.reason,
}));
ua.on('registered', (e) => emit({
  event: 'registered',
  status: e.response && e.response.status_code,
}));
ua.on('unregistered', (e) => emit({
  event: 'unregistered',
  status: e && e.response ? e.response.status_code : null,
  cause: e && e.cause ? e.cause : null,
}));
ua.on('registrationFailed', (e) => emit({
  event: 'registrationFailed',
  cause: e.cause,
  status: e.response ? e.response.status_code : null,
}));
ua.on('newMessage', (e) => {
  if (e.originator !== 'remote') return;
  const req = e.request;
  emit({
    event: 'message',
    from: req.from.uri.toString(),
    to: req.to.uri.toString(),
    body: req.body || '',
    contentType: req.getHeader('Content-Type') || null,
  });
  // JsSIP answers 200 by itself when the handler did not reply.
});

// Commands may arrive before the WebSocket is up: wait a bounded time for
// it, then go ahead anyway (JsSIP then reports the failure as an event).
function whenConnected(timeoutMs = 5000) {
  if (ua.isConnected()) return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      ua.removeListener('connected', done);
      resolve();
    };
    const timer = setTimeout(done, timeoutMs);
    ua.on('connected', done);
  });
}

const handlers = {
  async register() {
    await whenConnected();
    ua.register();
  },
  async unregister(cmd) {
    await whenConnected();
    ua.unregister({ all: Boolean(cmd && cmd.all) });   // all: Contact: * with Expires: 0
  },
  async message(cmd) {
    if (!cmd.to) throw new Error('message needs "to"');
    await whenConnected();
    ua.sendMessage(cmd.to, cmd.body || '', {
      contentType: cmd.contentType || 'text/plain',
      eventHandlers: {
        succeeded: (e) => emit({
          event: 'messageSent',
          status: e.response ? e.response.status_code : null,
        }),
        failed: (e) => emit({
          event: 'messageFailed',
          status: e.response ? e.response.status_code : null,
          cause: e.cause || null,
        }),
      },
    });
  },
};

async function onQuit() {
  await new Promise((resolve) => {
    if (!ua.isRegistered() && !ua.isConnected()) {
      resolve();
      return;
    }
    // ua.stop() un-registers first when registered, then closes the socket.
    ua.once('disconnected', () => resolve());
    setTimeout(resolve, 2500);
    ua.stop();
  });
}

ua.start();
common.runCommandLoop(handlers, onQuit);
