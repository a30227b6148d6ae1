// The video_bridge wire protocol, version 2 (v2 adds WebRTC signalling, see webrtc.js): the page's copy of
// src/video_bridge/video_bridge/protocol.py (docs/protocol.md is the contract; all three change
// together). Pure: no DOM, no sockets, so Node's test runner can check it.

export const PROTOCOL_VERSION = 2;

// WebRTC signalling on /control (version 2); the bridge offers, the page answers.
export const WEBRTC_REQUESTS = Object.freeze(['webrtc_config', 'webrtc_start', 'webrtc_answer',
  'webrtc_ice', 'webrtc_stop']);
export const DATA_CHANNEL_LABEL = 'control';

// --- routes ----------------------------------------------------------------------------------

export const VIDEO_PREFIX = '/video/';
export const CONTROL_PATH = '/control';
export const STREAMS_PATH = '/api/streams';

/** Escape a stream name for one URL path segment (topic streams contain '/'). */
export function quoteStream(name) {
  return encodeURIComponent(name);
}

/** ws:// or wss:// base URL for the page's own origin (a Location-like object). */
export function websocketBase(location) {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${scheme}//${location.host}`;
}

function withQuery(path, params) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== '' && value !== 0) {
      query.set(key, String(value));
    }
  }
  const text = query.toString();
  return text ? `${path}?${text}` : path;
}

/** Path of a video websocket: `videoPath` from /api/streams (or a stream name) + variant + token. */
export function videoPath(stream, { token, width, height, quality } = {}) {
  const path = stream.startsWith('/video/') ? stream : VIDEO_PREFIX + quoteStream(stream);
  return withQuery(path, { width, height, quality, token });
}

/** Path of the control websocket, with the token as a query parameter when there is one. */
export function controlPath(token) {
  return withQuery(CONTROL_PATH, { token });
}

/** Path of the stream list, with the token when there is one. */
export function streamsPath(token) {
  return withQuery(STREAMS_PATH, { token });
}

/**
 * The choices of the stream selector from a GET /api/streams document: configured streams
 * first (by name), then image topics of the ROS graph no configured stream already shows.
 * Each choice: {label, video (websocket path), kind}.
 */
export function streamChoices(doc) {
  const choices = [];
  const shown = new Set();
  for (const stream of doc?.streams ?? []) {
    choices.push({ label: stream.name, video: stream.video ?? VIDEO_PREFIX + quoteStream(stream.name),
                   kind: stream.kind, name: stream.name, sfu: stream.sfu === true });
    shown.add(stream.topic);
    shown.add(stream.name);
  }
  for (const topic of doc?.topics ?? []) {
    if (shown.has(topic.topic)) continue;
    shown.add(topic.topic);
    choices.push({ label: `${topic.topic} (topic)`, video: VIDEO_PREFIX + quoteStream(topic.topic),
                   kind: topic.kind, name: topic.topic, sfu: false });
  }
  return choices;
}

// --- close codes -----------------------------------------------------------------------------

export const CLOSE = Object.freeze({
  NORMAL: 1000,
  GOING_AWAY: 1001,        // bridge shutting down
  UNSUPPORTED_DATA: 1003,  // something was sent on a receive-only video socket
  ABNORMAL: 1006,          // no close frame: connection refused or lost (browser-side code)
  TOO_LARGE: 1009,
  BAD_REQUEST: 4400,       // bad variant parameters
  UNAUTHORIZED: 4401,      // 'token required' or 'invalid token'
  UNKNOWN_STREAM: 4404,
  RATE_LIMITED: 4429,      // kept exceeding the per-connection command rate
  CAPACITY: 4503,          // viewer or variant limit reached
});

/**
 * What a close means for the page: a text for the user, whether to reconnect on its own,
 * and whether a (different) token is needed first.
 */
export function closeMeaning(code, reason = '') {
  const why = reason ? `: ${reason}` : '';
  switch (code) {
    case CLOSE.UNAUTHORIZED:
      if (reason === 'invalid token') {
        return { text: 'The bridge refused the token (invalid token).', retry: false,
                 needsToken: true, invalidToken: true };
      }
      return { text: 'This bridge needs a token.', retry: false, needsToken: true,
               invalidToken: false };
    case CLOSE.GOING_AWAY:
      return { text: 'The bridge is shutting down or restarting.', retry: true, needsToken: false };
    case CLOSE.BAD_REQUEST:
      return { text: `Bad request${why}.`, retry: false, needsToken: false };
    case CLOSE.UNKNOWN_STREAM:
      return { text: `Unknown stream${why}.`, retry: false, needsToken: false };
    case CLOSE.RATE_LIMITED:
      return { text: 'Disconnected: too many messages.', retry: true, needsToken: false };
    case CLOSE.CAPACITY:
      return { text: `The bridge is full${why}.`, retry: true, needsToken: false };
    case CLOSE.UNSUPPORTED_DATA:
      return { text: 'The bridge closed the video socket (unexpected data).', retry: true,
               needsToken: false };
    case CLOSE.TOO_LARGE:
      return { text: 'A message was too large for the bridge.', retry: true, needsToken: false };
    case CLOSE.NORMAL:
      return { text: 'The bridge closed the connection.', retry: true, needsToken: false };
    default:
      return { text: 'Connection to the bridge lost.', retry: true, needsToken: false };
  }
}

// --- video frames ----------------------------------------------------------------------------

export const FRAME_MAGIC = 'VBF1';
export const FRAME_HEADER_SIZE = 32;
export const FLAG_PASSTHROUGH = 1;  // the source's own JPEG bytes
export const FLAG_SCALED = 2;       // downscaled to the viewer's bounds
export const FLAG_COLORMAPPED = 4;  // depth / 16-bit data drawn through a colour map

export class FrameError extends Error {}

/**
 * Split one binary video message (ArrayBuffer) into its header fields and a Uint8Array view
 * of the JPEG (no copy). Layout, little-endian (protocol.py FRAME_HEADER '<4sHHIHHiId'):
 * magic 0..4, header_length u16 @4, flags u16 @6, seq u32 @8, width u16 @12, height u16 @14,
 * stamp_sec i32 @16, stamp_nanosec u32 @20, received_time f64 @24, JPEG @header_length.
 */
export function parseFrame(buffer) {
  if (!(buffer instanceof ArrayBuffer)) {
    throw new FrameError('a video frame is a binary message');
  }
  if (buffer.byteLength < FRAME_HEADER_SIZE) {
    throw new FrameError(`frame message too short (${buffer.byteLength} bytes)`);
  }
  const view = new DataView(buffer);
  const magic = String.fromCharCode(view.getUint8(0), view.getUint8(1), view.getUint8(2),
                                    view.getUint8(3));
  const headerLength = view.getUint16(4, true);
  if (magic !== FRAME_MAGIC || headerLength < FRAME_HEADER_SIZE || headerLength > buffer.byteLength) {
    throw new FrameError('not a video_bridge frame');
  }
  const stampSec = view.getInt32(16, true);
  const stampNanosec = view.getUint32(20, true);
  return {
    flags: view.getUint16(6, true),
    seq: view.getUint32(8, true),
    width: view.getUint16(12, true),
    height: view.getUint16(14, true),
    stampSec,
    stampNanosec,
    stamp: stampSec + stampNanosec * 1e-9,       // camera clock, s
    receivedTime: view.getFloat64(24, true),     // bridge wall clock, s since the epoch
    headerLength,
    jpeg: new Uint8Array(buffer, headerLength),
    byteLength: buffer.byteLength,
  };
}

/** Build a header (tests and tools; the mirror of protocol.pack_frame_header). */
export function packFrameHeader({ flags = 0, seq = 0, width = 0, height = 0, stampSec = 0,
                                  stampNanosec = 0, receivedTime = 0 } = {}) {
  const buffer = new ArrayBuffer(FRAME_HEADER_SIZE);
  const view = new DataView(buffer);
  for (let i = 0; i < 4; i += 1) view.setUint8(i, FRAME_MAGIC.charCodeAt(i));
  view.setUint16(4, FRAME_HEADER_SIZE, true);
  view.setUint16(6, flags, true);
  view.setUint32(8, seq >>> 0, true);
  view.setUint16(12, width, true);
  view.setUint16(14, height, true);
  view.setInt32(16, stampSec, true);
  view.setUint32(20, stampNanosec, true);
  view.setFloat64(24, receivedTime, true);
  return buffer;
}

// --- control messages ------------------------------------------------------------------------

export const MAX_CONTROL_MESSAGE = 4096;

function finite(value, what) {
  if (typeof value !== 'number' || !Number.isFinite(value)) {
    throw new RangeError(`${what} must be a finite number, got ${value}`);
  }
  return value;
}

/** Round to 4 decimals and turn -0 into 0, so messages stay short and readable. */
function tidy(value) {
  const rounded = Math.round(value * 1e4) / 1e4;
  return rounded === 0 ? 0 : rounded;
}

/** Builders of the client-to-server messages (the `id` is added by the sender). */
export const messages = Object.freeze({
  acquire(takeover = false) {
    return takeover ? { type: 'acquire', takeover: true } : { type: 'acquire' };
  },
  release() {
    return { type: 'release' };
  },
  command(name, speed) {
    if (typeof name !== 'string' || !name) throw new TypeError('a command needs a name');
    const message = { type: 'command', name };
    if (speed !== undefined && speed !== null) {
      message.speed = tidy(Math.min(Math.max(finite(speed, 'speed'), 0), 1));
    }
    return message;
  },
  stop() {
    return { type: 'command', name: 'stop' };
  },
  velocity(linearX, angularZ, linearY = 0) {
    const linear = { x: tidy(finite(linearX, 'linear.x')) };
    if (finite(linearY, 'linear.y') !== 0) linear.y = tidy(linearY);
    return { type: 'velocity', linear, angular: { z: tidy(finite(angularZ, 'angular.z')) } };
  },
  estop(engage) {
    return { type: 'estop', engage: Boolean(engage) };
  },
  time(t0) {
    return { type: 'time', t0: finite(t0, 't0') };
  },
});

/** Parse a server-to-client text message; throws on anything that is not a typed object. */
export function parseControl(text) {
  const message = JSON.parse(text);
  if (message === null || typeof message !== 'object' || typeof message.type !== 'string') {
    throw new TypeError('not a control message');
  }
  return message;
}

/** Texts for the error codes the bridge answers with. */
export const ERROR_TEXT = Object.freeze({
  not_driver: 'You are not driving.',
  driver_busy: 'Someone else is driving.',
  estop_engaged: 'The emergency stop is engaged: release it first.',
  unauthorized: 'A valid token is required to drive.',
  rate_limited: 'Too many messages: slow down.',
  unknown_command: 'The bridge does not know this command.',
  shutting_down: 'The bridge is stopping.',
});

/**
 * The notice for an `error` reply: the page's text for its code, with the bridge's message
 * after it unless that only says the same again ("A valid token is required to drive." and
 * "a valid token is required to drive").
 */
export function errorNotice(code, message) {
  const text = ERROR_TEXT[code];
  if (!text) return message || code;
  const plain = (value) => String(value ?? '').toLowerCase().replace(/[^a-z0-9]+/g, ' ').trim();
  return !message || plain(text).includes(plain(message)) ? text : `${text} (${message})`;
}
