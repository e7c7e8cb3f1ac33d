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

// WebAudio on the remote track of a call: the strongest frequency bin, measured 20 times
// over a second, the most frequent answer wins.  Chromium feeds a remote WebRTC track to
// WebAudio only while a media element plays it too (muted here).
async function dominantFrequency(pc) {
  const track = pc.getReceivers().map((r) => r.track).find((t) => t && t.kind === 'audio');
  if (!track) throw new Error('the call has no remote audio track');
  const stream = new MediaStream([track]);
  const element = new Audio();
  element.muted = true;
  element.srcObject = stream;
  await element.play();
  const context = new AudioContext();
  await context.resume();
  const analyser = context.createAnalyser();
  analyser.fftSize = 8192;
  context.createMediaStreamSource(stream).connect(analyser);
  const bins = new Float32Array(analyser.frequencyBinCount);
  const votes = new Map();
  for (let i = 0; i < 20; i += 1) {
    await new Promise((done) => setTimeout(done, 50));
    analyser.getFloatFrequencyData(bins);
    let best = 0;
    for (let j = 1; j < bins.length; j += 1) if (bins[j] > bins[best]) best = j;
    if (bins[best] > -80) {
      const hz = Math.round((best * context.sampleRate) / analyser.fftSize);
      votes.set(hz, (votes.get(hz) || 0) + 1);
    }
  }
  await context.close();
  element.srcObject = null;
  let answer = null;
  for (const [hz, count] of votes) if (answer === null || count > votes.get(answer)) answer = hz;
  return answer;
}
