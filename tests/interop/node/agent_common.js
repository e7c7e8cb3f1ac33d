'use strict';
// Shared plumbing for jssip_agent.js and sipjs_agent.js.
//
// Line protocol (one JSON object per line):
//   stdin  <- {"cmd": "register" | "unregister" | "message" | "quit", ...}
//   stdout -> {"event": "...", ...}
//   stderr -> free-form debug logs
//
// Every WebSocket frame is reported as an event, so tests can check what
// went over the wire:
//   {"event":"raw","dir":"out"|"in","data":"<text>","binary":false}
//   {"event":"wsUpgrade","status":101,"headers":{...}}  handshake response
//   {"event":"wsPing","data":"..."} / {"event":"wsPong","data":"..."}  control frames received
//   {"event":"wsClose","code":1000,"reason":"..."}

const fs = require('fs');
const path = require('path');
const readline = require('readline');
const util = require('util');
const WS = require('ws');

// stdout carries the line protocol only: send any library console output
// to stderr.
for (const name of ['log', 'info', 'debug', 'warn', 'error', 'trace']) {
  console[name] = (...args) => process.stderr.write(util.format(...args) + '\n');
}

let quitHandler = null;
let quitting = false;

function emit(obj) {
  try {
    process.stdout.write(JSON.stringify(obj) + '\n');
  } catch (err) {
    process.stderr.write(`cannot write event: ${err}\n`);
  }
}

function log(...args) {
  process.stderr.write(args.map(String).join(' ') + '\n');
}

function parseArgs(argv) {
  const opts = {
    url: null,
    aor: null,
    user: null,
    password: null,
    display: null,
    userAgent: null,
    expires: null,
    keepalive: 0,
    debug: false,
  };
  const valueOpts = {
    '--url': 'url',
    '--aor': 'aor',
    '--user': 'user',
    '--password': 'password',
    '--display': 'display',
    '--user-agent': 'userAgent',
    '--expires': 'expires',
    '--keepalive': 'keepalive',
  };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--debug') {
      opts.debug = true;
    } else if (Object.prototype.hasOwnProperty.call(valueOpts, arg)) {
      if (i + 1 >= argv.length) throw new Error(`missing value for ${arg}`);
      opts[valueOpts[arg]] = argv[++i];
    } else {
      throw new Error(`unknown argument ${arg}`);
    }
  }
  if (!opts.url) throw new Error('--url is required');
  if (!opts.aor) throw new Error('--aor is required');
  if (opts.expires !== null) opts.expires = parseInt(opts.expires, 10);
  opts.keepalive = parseInt(opts.keepalive, 10) || 0;
  if (!opts.user) {
    const m = /^sips?:([^@;]+)@/.exec(opts.aor);
    opts.user = m ? decodeURIComponent(m[1]) : null;
  }
  return opts;
}

function frameText(data) {
  if (typeof data === 'string') return data;
  if (Buffer.isBuffer(data)) return data.toString('utf8');
  if (Array.isArray(data)) return Buffer.concat(data).toString('utf8');
  if (data instanceof ArrayBuffer) return Buffer.from(data).toString('utf8');
  if (ArrayBuffer.isView(data)) {
    return Buffer.from(data.buffer, data.byteOffset, data.byteLength).toString('utf8');
  }
  return String(data);
}

// A `ws` WebSocket that reports every frame it sends or receives. Installed
// as globalThis.WebSocket, which is what both JsSIP and SIP.js instantiate
// (`new WebSocket(url, 'sip')`). TLS goes through Node's tls module, so
// NODE_EXTRA_CA_CERTS is honoured for wss:// URLs.
class TracingWebSocket extends WS {
  constructor(address, protocols, options) {
    super(address, protocols, options);
    this.on('upgrade', (res) => {
      emit({ event: 'wsUpgrade', status: res.statusCode, headers: res.headers });
    });
    this.on('message', (data, isBinary) => {
      emit({ event: 'raw', dir: 'in', data: frameText(data), binary: !!isBinary });
    });
    this.on('ping', (data) => emit({ event: 'wsPing', data: frameText(data) }));
    this.on('pong', (data) => emit({ event: 'wsPong', data: frameText(data) }));
    this.on('close', (code, reason) => {
      emit({ event: 'wsClose', code, reason: frameText(reason) });
    });
    this.on('error', (err) => {
      emit({ event: 'wsError', message: String(err && err.message || err) });
    });
  }

  send(data, ...rest) {
    const binary = typeof data !== 'string';
    emit({ event: 'raw', dir: 'out', data: frameText(data), binary });
    return super.send(data, ...rest);
  }
}

// Version from the installed package.json (sip.js's own version constant
// lags behind its releases).
function packageVersion(name) {
  try {
    const file = path.join(__dirname, 'node_modules', name, 'package.json');
    return JSON.parse(fs.readFileSync(file, 'utf8')).version;
  } catch (err) {
    return null;
  }
}

function installWebSocket() {
  globalThis.WebSocket = TracingWebSocket;
}

async function shutdown(code) {
  if (quitting) return;
  quitting = true;
  const timer = setTimeout(() => {
    log('shutdown took too long, exiting');
    process.exit(code);
  }, 4000);
  try {
    if (quitHandler) await quitHandler();
  } catch (err) {
    log(`error during shutdown: ${err && err.stack || err}`);
  }
  clearTimeout(timer);
  // give pipes a chance to drain
  setTimeout(() => process.exit(code), 50);
}

function fatal(kind, err) {
  emit({
    event: 'error',
    kind,
    message: String(err && err.message || err),
    stack: err && err.stack ? String(err.stack) : undefined,
  });
  process.exitCode = 1;
  setTimeout(() => process.exit(1), 50);
}

function installErrorHandlers() {
  process.on('uncaughtException', (err) => fatal('uncaughtException', err));
  process.on('unhandledRejection', (err) => fatal('unhandledRejection', err));
}

// Reads commands from stdin and dispatches them to handlers[cmd](command).
// "quit" and end of stdin both shut down cleanly via onQuit().
function runCommandLoop(handlers, onQuit) {
  quitHandler = onQuit;
  const rl = readline.createInterface({ input: process.stdin, terminal: false });
  rl.on('line', (line) => {
    line = line.trim();
    if (!line) return;
    let command;
    try {
      command = JSON.parse(line);
    } catch (err) {
      emit({ event: 'commandError', message: `bad JSON: ${err.message}`, line });
      return;
    }
    const name = command && command.cmd;
    if (name === 'quit') {
      rl.close();
      return;
    }
    const handler = handlers[name];
    if (!handler) {
      emit({ event: 'commandError', message: `unknown command ${JSON.stringify(name)}`, line });
      return;
    }
    Promise.resolve()
      .then(() => handler(command))
      .catch((err) => emit({
        event: 'commandError', cmd: name, message: String(err && err.message || err),
      }));
  });
  rl.on('close', () => shutdown(0));
}

// The start every agent shares: error handlers, the command line (exit 2 on a usage
// error), and a global WebSocket for the SIP library.
function setUp() {
  installErrorHandlers();
  let opts;
  try {
    opts = parseArgs(process.argv.slice(2));
  } catch (err) {
    emit({ event: 'error', kind: 'usage', message: err.message });
    process.exit(2);
  }
  installWebSocket();
  return opts;
}

module.exports = {
  setUp,
  emit,
  log,
  parseArgs,
  installWebSocket,
  packageVersion,
  installErrorHandlers,
  runCommandLoop,
  shutdown,
};
