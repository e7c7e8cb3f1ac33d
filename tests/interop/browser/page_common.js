'use strict';
// Shared by jssip.html and sipjs.html: tests/support/browser.py drives the page over the
// DevTools protocol. It calls window.agent.<command>(args) with Runtime.evaluate, and the
// page reports events through the "report" binding (Runtime.addBinding), one JSON object
// each, the same events as the Node agents (tests/interop/node) plus the call events:
//   {"event":"incomingCall","from":"sip:..."}  {"event":"progress","status":180}
//   {"event":"confirmed"}  {"event":"ended","cause":"...","originator":"..."}
//   {"event":"failed","cause":"...","status":487,"reason":"SIP;cause=200;..."}
//   {"event":"ice","state":"connected"}  ICE of the call's RTCPeerConnection

function emit(obj) {
  window.report(JSON.stringify(obj));
}

window.addEventListener('error', (e) => emit({ event: 'error', message: String(e.message) }));
window.addEventListener('unhandledrejection',
  (e) => emit({ event: 'error', message: String(e.reason && (e.reason.stack || e.reason)) }));

// Report ICE states of a peer connection (media between the pages, on loopback).
function watchIce(pc) {
  if (!pc || pc.__watched) return;
  pc.__watched = true;
  const report = () => emit({ event: 'ice', state: pc.iceConnectionState });
  pc.addEventListener('iceconnectionstatechange', report);
  if (pc.iceConnectionState !== 'new') report();      // watched late: where it is now
}

// A microphone from --use-fake-device-for-media-stream (a beep), no camera.
const AUDIO_ONLY = { audio: true, video: false };
