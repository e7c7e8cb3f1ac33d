'use strict';
// SIP.js 0.21 (its SimpleUser) in a real browser: register, message, calls with WebRTC.
/* global SIP, emit, watchIce, dominantFrequency, AUDIO_ONLY */

let user = null;

function peerConnection() {
  const session = user && user.session;        // private in the typings, there in the object
  const handler = session && session.sessionDescriptionHandler;
  return handler && handler.peerConnection;
}

window.agent = {
  start(opts) {
    const userAgentOptions = {
      uri: SIP.UserAgent.makeURI(opts.aor),
      userAgentString: `SIP.js ${SIP.version} (aiosip-ws browser interop)`,
      logLevel: 'error',
      // no STUN server (SIP.js defaults to a public one): host candidates only
      sessionDescriptionHandlerFactoryOptions: { peerConnectionConfiguration: { iceServers: [] } },
    };
    if (opts.user) userAgentOptions.authorizationUsername = opts.user;
    if (opts.password) userAgentOptions.authorizationPassword = opts.password;
    user = new SIP.Web.SimpleUser(opts.url, {
      aor: opts.aor,
      media: { constraints: AUDIO_ONLY },
      userAgentOptions,
      delegate: {
        onServerConnect: () => emit({ event: 'connected' }),
        onServerDisconnect: () => emit({ event: 'disconnected' }),
        onRegistered: () => emit({ event: 'registered' }),
        onMessageReceived: (body) => emit({ event: 'message', body }),
        onCallReceived: () => emit({ event: 'incomingCall' }),
        onCallAnswered: () => {
          watchIce(peerConnection());
          emit({ event: 'confirmed' });
        },
        onCallHangup: () => emit({ event: 'ended' }),
      },
    });
    user.connect().then(
      () => emit({ event: 'started', library: 'sipjs', version: SIP.version }),
      (err) => emit({ event: 'error', message: String(err) }));
  },
  register() {
    user.register({
      requestDelegate: {
        onReject: (response) => emit({
          event: 'registrationFailed', status: response.message.statusCode,
        }),
      },
    }).catch((err) => emit({ event: 'registrationFailed', cause: String(err) }));
  },
  message(to, body) {
    user.message(to, body).catch((err) => emit({ event: 'messageFailed', cause: String(err) }));
  },
  // lateOffer: the INVITE goes without SDP (the callee offers in its 2xx, SIP.js answers
  // in the ACK)
  call(target, lateOffer) {
    user.call(target, lateOffer ? { inviteWithoutSdp: true } : undefined, {
      requestDelegate: {
        onProgress: (response) => emit({ event: 'progress', status: response.message.statusCode }),
        onReject: (response) => emit({ event: 'failed', status: response.message.statusCode }),
      },
    }).catch((err) => emit({ event: 'failed', cause: String(err) }));
  },
  answer() {
    user.answer().catch((err) => emit({ event: 'error', message: String(err) }));
  },
  hangup() {
    user.hangup().catch((err) => emit({ event: 'error', message: String(err) }));
  },
  // RFC 4733 telephone-events in the call's RTP (RTCDTMFSender), not SIP INFO
  dtmf(tones) {
    const handler = user.session.sessionDescriptionHandler;
    if (!handler.sendDtmf(tones)) throw new Error('the call cannot send DTMF in RTP');
  },
  // The dominant frequency (Hz) of what the call's remote stream plays, over about a second.
  listen() { return dominantFrequency(peerConnection()); },
  // The call's SDPs, and which of them was the offer (a late offer: the remote one)
  sdps() {
    const pc = peerConnection();
    return {
      local: pc.localDescription.sdp,
      localType: pc.localDescription.type,
      remote: pc.remoteDescription.sdp,
    };
  },
  stop() { if (user) user.disconnect(); },
};
