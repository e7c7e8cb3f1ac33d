'use strict';
// JsSIP 3.13 in a real browser: register, message, and calls with WebRTC media.
/* global JsSIP, emit, watchIce, AUDIO_ONLY */

let ua = null;
let session = null;
// payload type -> RTP frames received, when the call counts them (countPayloads)
const payloads = new Map();

// Encoded insertable streams on every sender and receiver of the call's peer connection
// (Chromium asks for all of them once the connection has encodedInsertableStreams), the
// received frames counted by payload type: RFC 4733 telephone-events show up there.
function countPayloads(pc) {
  const pipe = (endpoint, count) => {
    const { readable, writable } = endpoint.createEncodedStreams();
    readable.pipeThrough(new TransformStream({
      transform(frame, controller) {
        if (count) {
          const type = frame.getMetadata().payloadType;
          payloads.set(type, (payloads.get(type) || 0) + 1);
        }
        controller.enqueue(frame);
      },
    })).pipeTo(writable);
  };
  pc.addEventListener('track', (e) => pipe(e.receiver, true));
  const addTrack = pc.addTrack.bind(pc);
  pc.addTrack = (...args) => {
    const sender = addTrack(...args);
    pipe(sender, false);
    return sender;
  };
}

function attach(s) {
  session = s;
  s.on('progress', (e) => emit({ event: 'progress', status: e.response ? e.response.status_code : null }));
  s.on('accepted', () => emit({ event: 'accepted' }));
  s.on('confirmed', () => emit({ event: 'confirmed' }));
  s.on('peerconnection', (e) => watchIce(e.peerconnection));
  s.on('newDTMF', (e) => {
    if (e.originator === 'remote') emit({ event: 'dtmf', tone: e.dtmf.tone });
  });
  s.on('hold', (e) => emit({ event: 'hold', originator: e.originator }));
  s.on('unhold', (e) => emit({ event: 'unhold', originator: e.originator }));
  s.on('ended', (e) => emit({ event: 'ended', cause: e.cause, originator: e.originator }));
  s.on('failed', (e) => emit({
    event: 'failed',
    cause: e.cause,
    originator: e.originator,
    status: e.message && e.message.status_code ? e.message.status_code : null,
    method: e.message && e.message.method ? e.message.method : null,
    reason: e.message && e.message.getHeader ? (e.message.getHeader('Reason') || null) : null,
  }));
  if (s.connection) watchIce(s.connection);
}

window.agent = {
  start(opts) {
    JsSIP.debug.disable();
    const config = {
      sockets: [new JsSIP.WebSocketInterface(opts.url)],
      uri: opts.aor,
      register: false,
      session_timers: false,
      user_agent: `JsSIP ${JsSIP.version} (aiosip-ws browser interop)`,
      connection_recovery_min_interval: 2,
      connection_recovery_max_interval: 30,
    };
    if (opts.user) config.authorization_user = opts.user;
    if (opts.password) config.password = opts.password;
    ua = new JsSIP.UA(config);
    ua.on('connected', () => emit({ event: 'connected' }));
    ua.on('disconnected', (e) => emit({ event: 'disconnected', code: e && e.code }));
    ua.on('registered', (e) => emit({ event: 'registered', status: e.response.status_code }));
    ua.on('registrationFailed', (e) => emit({
      event: 'registrationFailed', cause: e.cause, status: e.response ? e.response.status_code : null,
    }));
    ua.on('newMessage', (e) => {
      if (e.originator !== 'remote') return;
      emit({ event: 'message', from: e.request.from.uri.toString(), body: e.request.body || '' });
    });
    ua.on('newRTCSession', (e) => {
      if (e.originator !== 'remote') return;
      attach(e.session);
      emit({ event: 'incomingCall', from: e.request.from.uri.toString() });
    });
    ua.start();
    emit({ event: 'started', library: 'jssip', version: JsSIP.version });
  },
  register() { ua.register(); },
  message(to, body) {
    ua.sendMessage(to, body, {
      eventHandlers: {
        succeeded: (e) => emit({ event: 'messageSent', status: e.response.status_code }),
        failed: (e) => emit({
          event: 'messageFailed', cause: e.cause, status: e.response ? e.response.status_code : null,
        }),
      },
    });
  },
  // video: offer the fake camera too
  call(target, video) {
    const mediaConstraints = video ? { audio: true, video: true } : AUDIO_ONLY;
    attach(ua.call(target, { mediaConstraints, pcConfig: { iceServers: [] } }));
  },
  // counting: count the received RTP frames by payload type (payloadTypes)
  answer(video, counting) {
    const mediaConstraints = video ? { audio: true, video: true } : AUDIO_ONLY;
    const pcConfig = counting ? { iceServers: [], encodedInsertableStreams: true }
      : { iceServers: [] };
    if (counting) session.on('peerconnection', (e) => countPayloads(e.peerconnection));
    session.answer({ mediaConstraints, pcConfig });
  },
  payloadTypes() { return Object.fromEntries(payloads); },
  hangup() { session.terminate(); },
  dtmf(tones) { session.sendDTMF(tones); },          // SIP INFO, JsSIP's default
  hold() { session.hold(); },
  unhold() { session.unhold(); },
  // The dominant frequency (Hz) of what the call's remote stream plays, over about a second.
  listen() { return dominantFrequency(session.connection); },
  // RTP counters of the call (getStats): what came in and what went out.
  // (and the video frames decoded and sent, when the call has video)
  async stats() {
    const out = { received: 0, sent: 0, framesDecoded: 0, framesSent: 0 };
    (await session.connection.getStats()).forEach((report) => {
      if (report.kind === 'video') {
        if (report.type === 'inbound-rtp') out.framesDecoded += report.framesDecoded || 0;
        if (report.type === 'outbound-rtp') out.framesSent += report.framesSent || 0;
        return;
      }
      if (report.kind !== 'audio') return;
      if (report.type === 'inbound-rtp') out.received += report.packetsReceived || 0;
      if (report.type === 'outbound-rtp') out.sent += report.packetsSent || 0;
    });
    return out;
  },
  sdps() {
    const pc = session.connection;
    return { local: pc.localDescription.sdp, remote: pc.remoteDescription.sdp };
  },
  stop() { if (ua) ua.stop(); },
};
