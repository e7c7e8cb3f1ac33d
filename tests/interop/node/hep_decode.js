#!/usr/bin/env node
// HEP v3 test receiver built on npm's hep-js (Homer's encoder/decoder).
//
// Usage: node hep_decode.js udp|tcp|both PORT [HOST=127.0.0.1]
//   Prints "ready" on stdout once listening (and "listening <t> <host>:<port>"
//   on stderr, so PORT 0 can be used), then one JSON line per HEP packet:
//   {"transport","peer","rcinfo":{...hep-js rcinfo...},
//    "payload_b64"        raw bytes of chunk 15 (extracted here, lossless),
//    "hepjs_payload_b64"  hep-js's decoded payload string re-encoded as UTF-8,
//    "hepjs_payload_lossless"  whether the two are equal,
//    "chunks":[[vendor,type,length],...]  every chunk found in the packet,
//    "not_decoded_by_hepjs":{type: value}  chunks hep-js ignores (IPv6 5/6 etc.)}
//   Undecodable input gives {"error":...} lines. TCP streams may carry packets
//   back to back; they are split on "HEP3" + u16 total length.
'use strict';
const dgram = require('dgram');
const net = require('net');
const hep = require('hep-js');

const [mode, portArg, host = '127.0.0.1'] = process.argv.slice(2);
if (!['udp', 'tcp', 'both'].includes(mode) || portArg === undefined) {
  process.stderr.write('usage: node hep_decode.js udp|tcp|both PORT [HOST]\n');
  process.exit(2);
}
const port = Number(portArg);
const MAGIC = Buffer.from('HEP3');

function out(obj) { process.stdout.write(JSON.stringify(obj) + '\n'); }

function walkChunks(buf) {
  const chunks = [], extra = {};
  let payload = null, pos = 6;
  const end = Math.min(buf.readUInt16BE(4), buf.length);
  while (pos + 6 <= end) {
    const vendor = buf.readUInt16BE(pos), type = buf.readUInt16BE(pos + 2);
    const len = buf.readUInt16BE(pos + 4);
    chunks.push([vendor, type, len]);
    if (len < 6 || pos + len > end) break;
    const data = buf.subarray(pos + 6, pos + len);
    if (vendor === 0 && type === 15) payload = data;
    else if (vendor === 0 && (type === 5 || type === 6) && data.length === 16) {
      const groups = [];
      for (let i = 0; i < 16; i += 2) groups.push(data.readUInt16BE(i).toString(16));
      extra[type] = groups.join(':');
    } else if (vendor !== 0 || ![1, 2, 3, 4, 7, 8, 9, 10, 11, 12, 14, 17, 19, 32, 36].includes(type)) {
      extra[vendor ? vendor + ':' + type : type] = data.toString('hex');
    }
    pos += len;
  }
  return { chunks, extra, payload };
}

function handle(buf, transport, peer) {
  let decoded;
  try { decoded = hep.decapsulate(buf); } catch (e) { decoded = false; }
  if (!decoded) {
    out({ transport, peer, error: 'hep-js could not decode', hep_b64: buf.toString('base64') });
    return;
  }
  const { chunks, extra, payload } = walkChunks(buf);
  const hjs = typeof decoded.payload === 'string' ? Buffer.from(decoded.payload, 'utf8') : null;
  out({
    transport, peer,
    rcinfo: decoded.rcinfo || {},
    payload_b64: payload ? payload.toString('base64') : null,
    hepjs_payload_b64: hjs ? hjs.toString('base64') : null,
    hepjs_payload_lossless: !!(payload && hjs && payload.equals(hjs)),
    chunks,
    not_decoded_by_hepjs: extra,
  });
}

let pending = mode === 'both' ? 2 : 1;
function listening(t, addr) {
  process.stderr.write(`listening ${t} ${addr.address}:${addr.port}\n`);
  if (--pending === 0) process.stdout.write('ready\n');
}

if (mode === 'udp' || mode === 'both') {
  const sock = dgram.createSocket('udp4');
  sock.on('message', (msg, rinfo) => handle(msg, 'udp', `${rinfo.address}:${rinfo.port}`));
  sock.on('error', (e) => { process.stderr.write(`udp error: ${e.message}\n`); process.exit(1); });
  sock.bind(port, host, () => listening('udp', sock.address()));
}

if (mode === 'tcp' || mode === 'both') {
  const server = net.createServer((conn) => {
    const peer = `${conn.remoteAddress}:${conn.remotePort}`;
    let buf = Buffer.alloc(0);
    conn.on('data', (data) => {
      buf = Buffer.concat([buf, data]);
      for (;;) {
        const at = buf.indexOf(MAGIC);
        if (at < 0) { buf = buf.subarray(Math.max(0, buf.length - 3)); return; }
        if (at > 0) {
          out({ transport: 'tcp', peer, error: `skipped ${at} bytes before HEP3 magic` });
          buf = buf.subarray(at);
        }
        if (buf.length < 6) return;
        const total = buf.readUInt16BE(4);
        if (total < 6) {
          out({ transport: 'tcp', peer, error: `bad HEP3 length ${total}` });
          buf = buf.subarray(4);
          continue;
        }
        if (buf.length < total) return;
        handle(buf.subarray(0, total), 'tcp', peer);
        buf = buf.subarray(total);
      }
    });
    conn.on('error', () => {});
  });
  server.on('error', (e) => { process.stderr.write(`tcp error: ${e.message}\n`); process.exit(1); });
  server.listen(port, host, () => listening('tcp', server.address()));
}

for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(0));
