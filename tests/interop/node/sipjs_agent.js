#!/usr/bin/env node
'use strict';
// SIP.js 0.21 user agent driven by JSON lines on stdin (see agent_common.js).
//
//   node sipjs_agent.js --url ws://127.0.0.1:PORT/ --aor sip:bob@example.com \
//        [--user bob --password secret] [--display Bob] [--expires 600] \
//        [--keepalive SECONDS] [--debug]
//
// sip.js is an ES module, so it is loaded with a dynamic import().

const common = require('./agent_common');
const { emit, log } = common;

async function main() {
  const opts = common.setUp();
  const SIP = await import('sip.js');
  const { UserAgent, Registerer, RegistererState, Messager } = SIP;

  const version = common.packageVersion('sip.js') || SIP.version;
  emit({ event: 'started', library: 'sip.js', version, pid: process.pid });

  const uri = UserAgent.makeURI(opts.aor);
  if (!uri) throw new Error(`bad --aor ${opts.aor}`);

  const transportOptions = {
    server: opts.url,
    connectionTimeout: 5,
    traceSip: opts.debug,
  };
  if (opts.keepalive) transportOptions.keepAliveInterval = opts.keepalive;

  const uaOptions = {
    uri,
    transportOptions,
    userAgentString: opts.userAgent || `SIP.js/${version} (aiosip-ws interop)`,
    logBuiltinEnabled: false,
    logConfiguration: opts.debug,
    logLevel: opts.debug ? 'debug' : 'warn',
    // SIP.js hands every level to the connector, whatever logLevel says
    logConnector: (level, category, label, content) => {
      if (!opts.debug && level !== 'warn' && level !== 'error') return;
      log(`[sip.js ${level}] ${category}${label ? ' ' + label : ''}: ${content}`);
    },
    delegate: {
      onConnect: () => emit({ event: 'connected' }),
      onDisconnect: (error) => emit({
        event: 'disconnected',
        error: !!error,
        reason: error ? String(error.message || error) : null,
      }),
      onMessage: (message) => {
        const req = message.request;
        emit({
          event: 'message',
          from: req.from.uri.toString(),
          to: req.to.uri.toString(),
          body: req.body || '',
          contentType: req.getHeader('Content-Type') || null,
        });
        message.accept().catch((err) => log(`accepting MESSAGE failed: ${err}`));
      },
    },
  };
  if (opts.user) uaOptions.authorizationUsername = opts.user;
  if (opts.password !== null) uaOptions.authorizationPassword = opts.password;
  if (opts.display) uaOptions.displayName = opts.display;

  const ua = new UserAgent(uaOptions);
  const registererOptions = { logConfiguration: opts.debug };
  if (opts.expires) registererOptions.expires = opts.expires;
  const registerer = new Registerer(ua, registererOptions);

  registerer.stateChange.addListener((state) => {
    if (state === RegistererState.Registered) {
      emit({ event: 'registered' });
    } else if (state === RegistererState.Unregistered) {
      emit({ event: 'unregistered' });
    } else if (state === RegistererState.Terminated) {
      emit({ event: 'registererTerminated' });
    }
  });

  // ua.start() resolves once the WebSocket is open; commands that arrive
  // before that wait for it (bounded), then go ahead anyway so SIP.js
  // reports the failure itself.
  let started = null;
  const whenConnected = () => Promise.race([
    (started || Promise.resolve()).catch(() => undefined),
    new Promise((resolve) => setTimeout(resolve, 5000)),
  ]);

  const handlers = {
    async register() {
      await whenConnected();
      await registerer.register({
        requestDelegate: {
          onReject: (response) => emit({
            event: 'registrationFailed',
            cause: response.message.reasonPhrase,
            status: response.message.statusCode,
          }),
        },
      });
    },
    async unregister() {
      await whenConnected();
      await registerer.unregister({
        requestDelegate: {
          onReject: (response) => emit({
            event: 'unregistrationFailed',
            cause: response.message.reasonPhrase,
            status: response.message.statusCode,
          }),
        },
      });
    },
    async message(cmd) {
      if (!cmd.to) throw new Error('message needs "to"');
      const target = UserAgent.makeURI(cmd.to);
      if (!target) throw new Error(`bad target URI ${cmd.to}`);
      await whenConnected();
      const messager = new Messager(ua, target, cmd.body || '', cmd.contentType || 'text/plain');
      await messager.message({
        requestDelegate: {
          onAccept: (response) => emit({
            event: 'messageSent',
            status: response.message.statusCode,
          }),
          onReject: (response) => emit({
            event: 'messageFailed',
            status: response.message.statusCode,
            cause: response.message.reasonPhrase,
          }),
        },
      });
    },
  };

  async function onQuit() {
    // stop() un-registers (gracefulShutdown) and disconnects the transport
    await Promise.race([
      ua.stop(),
      new Promise((resolve) => setTimeout(resolve, 3000)),
    ]);
  }

  started = ua.start();
  common.runCommandLoop(handlers, onQuit);
  try {
    await started;
  } catch (err) {
    // connection failure at start: report it, keep reading commands
    emit({ event: 'disconnected', error: true, reason: String(err && err.message || err) });
  }
}

main().catch((err) => {
  emit({ event: 'error', kind: 'startup', message: String(err && err.message || err), stack: String(err && err.stack) });
  process.exit(1);
});
