// Which video transport the page uses, and when Auto gives up on WebRTC: decisions only.
//
// WebRTC (protocol 2) shows the <video>; the websocket JPEG stream draws on the canvas. Auto
// starts WebRTC alone (on a thin link a JPEG stream beside it would starve its start) and
// starts JPEG if WebRTC has not played within AUTO_FALLBACK ms or has failed; a version 1
// bridge gets JPEG at once. While WebRTC plays the JPEG socket stays closed.
//
// The policy reads a snapshot of the page (`ctx`, built by app.js) and answers with actions;
// app.js carries them out. Time comes from the injected `now`, so Node tests drive it.

export const AUTO_FALLBACK = 4000;   // ms Auto waits for WebRTC to play before JPEG
export const TRANSPORTS = ['auto', 'webrtc', 'websocket'];

/** The stored choice, or 'auto' for anything else (a stale or hand-edited value). */
export function transportChoice(value) {
  return TRANSPORTS.includes(value) ? value : 'auto';
}

const ACTIVE = ['starting', 'playing'];
const GAVE_UP = ['failed', 'unavailable'];

// ctx: { wanted: 'auto' | 'webrtc' | 'websocket',
//        protocol: the hello's protocol (1 when it names none), null before a hello,
//        connected: the /control socket is connected,
//        stream: the chosen stream's name, null when there is none,
//        webrtc: { status, stream },            // WebRtcVideo
//        jpeg: { status, retryAt } }            // VideoClient
export class TransportPolicy {
  constructor({ now }) {
    this.now = now;
    this.fallbackAt = null;   // page time at which Auto starts JPEG unless WebRTC plays
  }

  /** A fresh start (a new stream, transport or hello): { webrtc: 'start' | 'stop',
   *  jpeg: 'restart' | 'stop' }; the caller stops WebRTC before carrying them out. */
  restart(ctx) {
    this.fallbackAt = null;
    const v1 = ctx.protocol !== null && ctx.protocol < 2;
    let jpeg = 'stop';
    if (ctx.wanted === 'websocket' || v1) jpeg = 'restart';
    else if (ctx.wanted === 'auto') this.fallbackAt = this.now() + AUTO_FALLBACK;
    // WebRTC is stopped first in any case: a restart starts it afresh where it may run.
    return { webrtc: this.webrtc(ctx) === 'stop' ? 'stop' : 'start', jpeg };
  }

  /** Whether WebRTC should run now: 'start', 'stop' or 'keep' (already on this stream). */
  webrtc(ctx) {
    if (ctx.wanted === 'websocket' || !ctx.connected || ctx.stream === null
        || (ctx.protocol ?? 1) < 2) {
      return 'stop';
    }
    return ACTIVE.includes(ctx.webrtc.status) && ctx.webrtc.stream === ctx.stream
      ? 'keep' : 'start';
  }

  /** After WebRTC's status changed: which element shows, and what the JPEG socket does. */
  show(ctx) {
    const playing = ctx.webrtc.status === 'playing';
    let jpeg = null;
    if (playing && ctx.jpeg.status !== 'disconnected') jpeg = 'stop';
    if (!playing && GAVE_UP.includes(ctx.webrtc.status) && ctx.jpeg.status === 'disconnected'
        && ctx.jpeg.retryAt === null && ctx.stream !== null && ctx.wanted !== 'webrtc') {
      jpeg = 'restart';
    }
    return { webrtcVisible: playing, jpeg };
  }

  /** Called periodically: 'restart' when Auto's wait for WebRTC ran out, else null. */
  tick(ctx) {
    if (this.fallbackAt === null || this.now() < this.fallbackAt) return null;
    this.fallbackAt = null;
    return ctx.webrtc.status !== 'playing' && ctx.stream !== null
      && ctx.jpeg.status === 'disconnected' ? 'restart' : null;
  }
}
