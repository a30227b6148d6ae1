// Wiring of the teleop page: sockets, inputs and what the user sees.

import { pageNow } from './clock.js';
import { ControlClient, PROBE_PERIOD } from './control.js';
import { DriveController } from './drive.js';
import { GamepadInput, Joystick, KeyboardInput } from './input.js';
import { controlPath, errorNotice, streamChoices, streamsPath, videoPath,
         websocketBase } from './protocol.js';
import { formatBitrate, formatDuration, statsTooltip, transportLabel } from './stats.js';
import { PathPolicy, pathChoice } from './sfu.js';
import { SfuVideo } from './sfu_video.js';
import { safeStorage, TokenKeeper } from './token.js';
import { TransportPolicy, transportChoice } from './transport.js';
import { VideoClient } from './video.js';
import { CHANNEL_COMMANDS, WebRtcVideo } from './webrtc.js';

const $ = (id) => document.getElementById(id);
const STREAM_KEY = 'video_bridge.stream';
const SPEED_KEY = 'video_bridge.speed';
const TRANSPORT_KEY = 'video_bridge.transport';  // auto | webrtc | websocket
const PATH_KEY = 'video_bridge.path';            // auto | direct | sfu

const session = safeStorage(window.sessionStorage);

// A token in the page URL (?token=...) moves to sessionStorage and out of the address bar.
const pageParams = new URLSearchParams(location.search);
const tokens = new TokenKeeper(session);
const search = tokens.takeFromUrl(location.search);
if (search !== null) history.replaceState(null, '', location.pathname + search + location.hash);

// ?transport=websocket|webrtc|auto picks the video transport; ?relay=1 forces TURN relay.
if (pageParams.has('transport')) session.set(TRANSPORT_KEY, pageParams.get('transport'));
// ?path=direct|sfu|auto picks the path where the bridge has an SFU (docs/sfu.md).
if (pageParams.has('path')) session.set(PATH_KEY, pageParams.get('path'));
const relayOnly = pageParams.get('relay') === '1';
const wsBase = websocketBase(location);

const ui = {
  choices: [],
  choice: null,
  streamsLoaded: false,
  videoProblem: null,   // why the video is not shown and is not retried
  notice: null,
  noticeLevel: 'info',
  noticeTimer: null,
  gamepad: null,
  path: 'direct',       // the path applied last: 'direct' or 'sfu' (sfu.js decides)
};

// --- sockets -------------------------------------------------------------------------------------

const control = new ControlClient({
  url: () => wsBase + controlPath(tokens.value),
  onStatus: render,
  onHello(hello) {
    drive.setHello(hello);
    tokens.hello(hello);
    video.retrySoon();
    loadStreams().then(() => {
      if (!['starting', 'playing'].includes(webrtc.status)
          && !['starting', 'playing'].includes(sfu.status)) {
        restartVideo();
      }
    });
    render();
  },
  onState(state) {
    drive.setState(state);
    render();
  },
  onReply(message, request) {
    if (request?.type?.startsWith('webrtc_')) {  // a version 1 bridge: no WebRTC
      webrtc.refused(message.message || message.code);
      return;
    }
    if (request?.type?.startsWith('sfu_')) {     // a bridge without an SFU
      sfu.refused(message.message || message.code);
      return;
    }
    drive.reply(message, request);
    if (message.type === 'error') {
      showNotice(errorNotice(message.code, message.message), 'warn');
    }
  },
  onClose(info) {
    drive.setDisconnected();
    webrtc.stop();
    sfu.stop();   // the bridge stops publishing for a closed session: the next hello starts afresh
    showVideoTransport();
    if (info.meaning.needsToken) tokenRefused(info);
    render();
  },
  onOther: (message) => (message.type?.startsWith('sfu_') ? sfu.message(message)
    : webrtc.message(message)),
});

const video = new VideoClient($('video'), {
  url: () => (ui.choice ? wsBase + videoPath(ui.choice.video, { token: tokens.value }) : null),
  clock: control.clock,
  onStatus: render,
  onClose(info) {
    if (info.meaning.needsToken) tokenRefused(info);
    else ui.videoProblem = info.meaning.retry ? null : info.meaning.text;
    render();
  },
  onFirstFrame() {
    ui.videoProblem = null;
    control.retrySoon();  // the bridge is back: no need to wait out the control backoff
    render();
  },
});

// --- WebRTC (protocol v2): preferred when the bridge offers it, websocket JPEG otherwise ------

const webrtc = new WebRtcVideo($('webrtc-video'), {
  control, clock: control.clock, relay: relayOnly,
  onStatus: () => {
    showVideoTransport();
    render();
  },
});

const transports = new TransportPolicy({ now: pageNow });

function transportWanted() {
  return transportChoice(session.get(TRANSPORT_KEY));
}

function streamName(choice) {
  return choice ? decodeURIComponent(choice.video.replace(/^\/video\//, '')) : null;
}

// What the transport policy reads (transport.js): a snapshot of the page, taken per decision.
function transportContext() {
  return {
    wanted: transportWanted(),
    protocol: control.hello ? (control.hello.protocol ?? 1) : null,
    connected: control.status === 'connected',
    stream: streamName(ui.choice),
    webrtc: { status: webrtc.status, stream: webrtc.stream },
    jpeg: { status: video.status, retryAt: video.retryAt },
  };
}

function applyJpeg(action) {
  if (action === 'restart') video.restart();
  else if (action === 'stop') video.stop();
}

function startWebRtc() {
  const ctx = transportContext();
  const action = transports.webrtc(ctx);
  if (action === 'stop') webrtc.stop();
  else if (action === 'start') webrtc.start(ctx.stream);
}

// While WebRTC plays, the <video> shows it and the JPEG socket is closed; otherwise the canvas.
// The SFU's <video> shows while it plays on the SFU path, or until the direct path shows.
function showVideoTransport() {
  const plan = showVideoElements();
  if (ui.path === 'direct') applyJpeg(plan.jpeg);
}

function showVideoElements() {
  const sfuShown = sfu.status === 'playing' && (ui.path === 'sfu' || !directShows());
  $('sfu-video').hidden = !sfuShown;
  const plan = transports.show(transportContext());
  $('webrtc-video').hidden = sfuShown || !plan.webrtcVisible;
  $('video').hidden = sfuShown || plan.webrtcVisible;
  return plan;
}

function restartDirect() {
  const plan = transports.restart(transportContext());
  webrtc.stop();
  applyJpeg(plan.jpeg);
  if (plan.webrtc === 'start') webrtc.start(streamName(ui.choice));
}

/** A fresh start of the video (a new stream, transport, path or hello) on the path it takes. */
function restartVideo() {
  ui.path = paths.path(pathContext());
  if (ui.path === 'direct') restartDirect();
  else stopDirect();
  applyPath();   // starts the SFU unless it already plays this stream
}

// Auto's wait for WebRTC runs out on its own clock, not when the view happens to render.
setInterval(() => {
  if (ui.path === 'direct') applyJpeg(transports.tick(transportContext()));
  applyPath();
}, 250);

// --- the SFU path (sfu.js): observers watch through the cloud's Janus, the driver directly ----

const paths = new PathPolicy({ now: pageNow });
const sfu = new SfuVideo($('sfu-video'), {
  control,
  iceServers: () => webrtc.config?.ice_servers ?? [],
  onStatus: () => {
    applyPath();
    showVideoTransport();
    render();
  },
  onFailed: () => paths.failed(),
});

function pathWanted() {
  return pathChoice(session.get(PATH_KEY));
}

function directShows() {
  return webrtc.status === 'playing' || (video.status === 'open' && video.connectionFrames > 0);
}

// What the path policy reads (sfu.js): a snapshot of the page, taken per decision.
function pathContext() {
  return {
    wanted: pathWanted(),
    available: Boolean(ui.choice?.sfu) && transportWanted() !== 'websocket'
      && control.status === 'connected' && (control.hello?.protocol ?? 1) >= 2,
    driving: drive.youDrive || drive.acquireId !== null,
    stream: streamName(ui.choice),
    direct: directShows(),
    sfu: { status: sfu.status, stream: sfu.stream },
  };
}

function stopDirect() {
  transports.fallbackAt = null;
  if (webrtc.status !== 'off') webrtc.stop();
  if (video.status !== 'disconnected' || video.retryAt !== null) video.stop();
}

let applyingPath = false;

/** Carry out the path policy's decisions (re-entered from status callbacks: once at a time). */
function applyPath() {
  if (applyingPath) return;
  applyingPath = true;
  try {
    const ctx = pathContext();
    const path = paths.path(ctx);
    const sfuAction = paths.sfu(ctx, path);
    const directAction = paths.direct(ctx, path);
    const switched = path !== ui.path;
    ui.path = path;
    if (sfuAction === 'start') sfu.start(ctx.stream);
    else if (sfuAction === 'stop') sfu.stop();
    if (directAction === 'stop') stopDirect();
    else if (directAction === 'run' && switched) restartDirect();
    if (sfu.status === 'playing') paths.playing(sfu.playedFor());
    showVideoElements();
  } finally {
    applyingPath = false;
  }
}

function tokenRefused(info) {
  if (tokens.refused(info.meaning)) queueMicrotask(reconnectAll);  // once, not per socket
}

function reconnectAll() {
  drive.setDisconnected();
  control.reconnectNow();
  restartVideo();
  loadStreams();
  render();
}

async function loadStreams() {
  let response;
  try {
    response = await fetch(streamsPath(tokens.value), { cache: 'no-store' });
  } catch {
    return;  // the bridge is away: the control socket's reconnect will call us again
  }
  if (response.status === 401) {
    tokens.watchRefused();
    render();
    return;
  }
  if (!response.ok) return;
  let doc;
  try {
    doc = await response.json();
  } catch {
    return;
  }
  ui.choices = streamChoices(doc);
  ui.streamsLoaded = true;
  const wanted = ui.choice?.video ?? session.get(STREAM_KEY);
  const next = ui.choices.find((c) => c.video === wanted) ?? ui.choices[0] ?? null;
  fillStreamSelect(next);
  if (next?.video !== ui.choice?.video) {
    ui.choice = next;
    if (next) restartVideo();
  }
  render();
}

function fillStreamSelect(selected) {
  const select = $('stream');
  select.replaceChildren(...ui.choices.map((choice) => {
    const option = document.createElement('option');
    option.value = choice.video;
    option.textContent = choice.label;
    option.selected = choice === selected;
    return option;
  }));
  select.disabled = ui.choices.length === 0;
}

// The path selector shows only where the chosen stream can be watched through an SFU.
function showPathPicker() {
  $('path-picker').hidden = !ui.choice?.sfu;
}

// --- driving -------------------------------------------------------------------------------------

const drive = new DriveController({
  // Driving commands take the data channel when WebRTC plays (unordered, no retransmits);
  // everything else, e-stop included, the /control websocket. Replies come on /control.
  send: (message) => control.send(message, {
    via: CHANNEL_COMMANDS.has(message.type) && webrtc.status === 'playing'
      ? (text) => webrtc.sendCommand(text) || control.socket.send(text) : null,
  }),
  onNotice: showNotice,
  onCancelInputs: () => {
    keyboard.cancel();
    joystick.cancel();
    gamepad.cancel();
  },
  onChange: render,
});

const keyboard = new KeyboardInput(window, {
  onChange: (command) => drive.input('keys', command),
  onEstop: engageEstop,
  available: () => control.hello?.commands ?? null,
});
const joystick = new Joystick($('joystick'), $('joystick-knob'), {
  onChange: (command) => drive.input('joystick', command),
});
const gamepad = new GamepadInput(window, {
  onChange: (command) => drive.input('gamepad', command),
  onEstop: engageEstop,
  onConnected: (id) => {
    ui.gamepad = id;
    render();
  },
});

function engageEstop() {
  drive.engageEstop();
  webrtc.sendCommand(JSON.stringify({ type: 'estop', engage: true }));  // also the fast path
  render();
}

// Stop the car whenever the page stops being the thing the user looks at.
window.addEventListener('blur', () => drive.cancelAll('window lost focus'));
document.addEventListener('visibilitychange', () => {
  if (document.visibilityState === 'hidden') drive.cancelAll('page hidden');
});
window.addEventListener('pagehide', () => drive.cancelAll('page closed'));

$('estop').addEventListener('click', engageEstop);
$('estop-release').addEventListener('click', () => drive.releaseEstop());
$('drive').addEventListener('click', () => drive.acquire(drive.role === 'other'));
$('release').addEventListener('click', () => drive.release());

const speedInput = $('speed');
const savedSpeed = Number(session.get(SPEED_KEY));
if (savedSpeed >= Number(speedInput.min) && savedSpeed <= Number(speedInput.max)) {
  speedInput.value = String(savedSpeed);
}
drive.setSpeed(Number(speedInput.value));
speedInput.addEventListener('input', () => {
  drive.setSpeed(Number(speedInput.value));
  session.set(SPEED_KEY, speedInput.value);
  render();
});

$('stream').addEventListener('change', (event) => {
  const choice = ui.choices.find((c) => c.video === event.target.value);
  if (!choice) return;
  ui.choice = choice;
  ui.videoProblem = null;
  session.set(STREAM_KEY, choice.video);
  restartVideo();
  render();
});
$('stream').addEventListener('focus', loadStreams);  // topics come and go
$('path').value = pathWanted();
$('path').addEventListener('change', (event) => {
  session.set(PATH_KEY, event.target.value);
  paths.chosen();
  applyPath();
  render();
});
$('transport').value = transportWanted();
$('transport').addEventListener('change', (event) => {
  session.set(TRANSPORT_KEY, event.target.value);
  restartVideo();
  render();
});

// After a change made with the mouse or a finger, focus leaves the slider and the selector so
// the arrow keys drive again; keyboard users keep focus (and the arrows) where they are.
let pointerChange = false;
for (const element of [speedInput, $('stream'), $('path')]) {
  element.addEventListener('pointerdown', () => { pointerChange = true; });
  element.addEventListener('keydown', () => { pointerChange = false; });
  element.addEventListener('change', () => {
    if (pointerChange) element.blur();
    pointerChange = false;
  });
}
speedInput.addEventListener('pointerup', () => {
  if (pointerChange) speedInput.blur();
});

$('token-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const value = $('token-input').value.trim();
  if (!value) return;
  tokens.entered(value);
  $('token-input').value = '';
  showNotice('Token saved for this tab; reconnecting…', 'info');
  reconnectAll();
});
$('forget-token').addEventListener('click', () => {
  tokens.forget();
  showNotice('Token forgotten.', 'info');
  reconnectAll();
});

// --- what the user sees ----------------------------------------------------------------------------

function showNotice(text, level = 'info') {
  ui.notice = text;
  ui.noticeLevel = level;
  clearTimeout(ui.noticeTimer);
  ui.noticeTimer = setTimeout(() => {
    ui.notice = null;
    render();
  }, 6000);
  render();
}

function seconds(at) {
  return Math.max(0, Math.ceil((at - pageNow()) / 1000));
}

function setText(element, text) {
  if (element.textContent !== text) element.textContent = text;
}

function setAttr(element, name, value) {
  if (element.getAttribute(name) !== value) element.setAttribute(name, value);
}

function connectionView() {
  switch (control.status) {
    case 'connected':
      return ['connected', 'Connected'];
    case 'connecting':
      return control.wasConnected ? ['reconnecting', 'Reconnecting…'] : ['connecting', 'Connecting…'];
    default:
      if (control.retryAt !== null) {
        return ['reconnecting', `Reconnecting in ${seconds(control.retryAt)} s`];
      }
      return ['disconnected', tokens.need === 'watch' ? 'Token needed' : 'Disconnected'];
  }
}

function roleView() {
  if (control.status !== 'connected') return ['offline', 'Not connected'];
  if (drive.youDrive) return ['you', 'You drive'];
  if (drive.driver !== null) return ['other', `Someone else drives (${drive.driver})`];
  return ['none', drive.canDrive ? 'Viewing only · nobody drives' : 'Viewing only'];
}

function videoOverlayText(stats) {
  if (tokens.need === 'watch') return 'This bridge needs a token to show video.';
  if (ui.videoProblem) return ui.videoProblem;
  if (ui.streamsLoaded && !ui.choice) return 'This bridge offers no video stream.';
  if (!ui.choice) return 'Looking for video streams…';
  if (sfu.status === 'playing' || webrtc.status === 'playing') {
    return stats.frameAge !== null && stats.frameAge > 2
      ? `No new frame for ${Math.floor(stats.frameAge)} s` : '';
  }
  if (ui.path === 'sfu') {
    if (sfu.status === 'starting') return 'Starting video through the cloud server…';
    if (sfu.status === 'failed') {
      return paths.retryAt !== null
        ? `Cloud server video lost · trying again in ${seconds(paths.retryAt)} s`
        : 'Cloud server video lost';
    }
  }
  if (webrtc.status === 'starting' && video.status === 'disconnected') {
    return 'Starting WebRTC video…';
  }
  if (webrtc.status === 'failed' && webrtc.retryAt !== null && video.status === 'disconnected') {
    return `WebRTC video lost · trying again in ${seconds(webrtc.retryAt)} s`;
  }
  if (video.status === 'disconnected') {
    return video.retryAt !== null ? `Video lost · reconnecting in ${seconds(video.retryAt)} s`
      : 'Video disconnected';
  }
  if (video.status === 'connecting') return 'Connecting to video…';
  if (stats.drawn === 0 || video.connectionFrames === 0) return 'Waiting for the first frame…';
  if (stats.frameAge !== null && stats.frameAge > 2) {
    return `No new frame for ${Math.floor(stats.frameAge)} s`;
  }
  return '';
}

function render() {
  const body = document.body;
  const [connState, connText] = connectionView();
  const conn = $('conn');
  setText(conn, connText);
  setAttr(conn, 'data-state', connState);
  body.dataset.conn = connState;

  const [role, roleText] = roleView();
  const roleEl = $('role');
  setText(roleEl, roleText);
  setAttr(roleEl, 'data-role', role);
  body.dataset.role = role;

  const connected = control.status === 'connected';
  const estop = connected && drive.estop;
  $('estop-state').hidden = !estop;
  body.dataset.estop = String(estop);
  const estopButton = $('estop');
  setAttr(estopButton, 'aria-pressed', String(estop));
  setText(estopButton.querySelector('.estop-title'), estop ? 'E-STOP ENGAGED' : 'STOP');
  const releaseEstop = $('estop-release');
  releaseEstop.hidden = !estop;
  releaseEstop.disabled = !drive.canDrive;
  releaseEstop.title = drive.canDrive ? '' : 'Only a client that may drive can release it';

  const hello = control.hello;
  const driveButton = $('drive');
  const takeover = role === 'other' && Boolean(hello?.allow_takeover);
  driveButton.disabled = !connected || !drive.canDrive || drive.youDrive || estop
    || (role === 'other' && !takeover) || drive.acquireId !== null;
  setText(driveButton, drive.youDrive ? 'You drive' : drive.acquireId !== null ? 'Asking…'
    : takeover ? 'Take over' : 'Drive');
  driveButton.classList.toggle('is-driving', drive.youDrive);
  $('release').disabled = !drive.youDrive;

  const speed = Number(speedInput.value);
  setText($('speed-value'), `${Math.round(speed * 100)} %`);
  const limits = drive.limits;
  setText($('speed-limits'), limits.linear || limits.angular
    ? `up to ${(limits.linear * speed).toFixed(2)} m/s · ${(limits.angular * speed).toFixed(2)} rad/s`
    : 'up to – m/s · – rad/s');

  const v = control.state?.velocity;
  const lin = v ? Math.hypot(v.linear.x, v.linear.y) * Math.sign(v.linear.x || 1) : 0;
  setText($('velocity'), `${lin.toFixed(2)} m/s · ${(v?.angular.z ?? 0).toFixed(2)} rad/s`);
  $('velocity').classList.toggle('moving', Boolean(v && (v.linear.x || v.linear.y || v.angular.z)));

  const form = $('token-form');
  form.hidden = !tokens.need && !tokens.error;
  setText($('token-label'), tokens.need === 'watch' ? 'This bridge needs a token to watch and drive.'
    : 'This bridge needs a token to drive.');
  const tokenError = $('token-error');
  tokenError.hidden = !tokens.error;
  setText(tokenError, tokens.error ?? '');
  $('forget-token').hidden = !tokens.value;

  const notice = $('notice');
  setText(notice, ui.notice ?? '');
  setAttr(notice, 'data-level', ui.noticeLevel);

  setText($('gamepad'), ui.gamepad ? `Gamepad: ${ui.gamepad} (hold LB to drive)`
    : 'No gamepad connected.');

  renderVideo();
}

function renderVideo() {
  const viaSfu = !$('sfu-video').hidden;
  const viaWebRtc = webrtc.status === 'playing';
  const stats = viaSfu ? sfu.stats() : viaWebRtc ? webrtc.stats() : video.stats();
  const transport = $('stat-transport');
  const [transportText, transportValue] = transportLabel({
    webrtc: webrtc.status, websocket: video.status, codec: stats.codec ?? '',
    sfu: viaSfu || (ui.path === 'sfu' && sfu.status === 'starting') ? sfu.status : 'off',
    candidateType: stats.candidateType ?? '' });
  setText(transport, transportText);
  setAttr(transport, 'data-value', transportValue);
  transport.title = [webrtc.problem ? `WebRTC: ${webrtc.problem}` : '',
    sfu.problem ? `Cloud server: ${sfu.problem}` : ''].filter(Boolean).join('\n');
  showPathPicker();
  setAttr($('path'), 'data-path', ui.path);
  const overlay = $('video-overlay');
  const text = videoOverlayText(stats);
  setText(overlay, text);
  overlay.hidden = !text;
  const fps = $('stat-fps');
  setText(fps, stats.fps.toFixed(0));
  setAttr(fps, 'data-value', stats.fps.toFixed(1));
  const latency = $('stat-latency');
  setText(latency, formatDuration(stats.latency));
  setAttr(latency, 'data-value', stats.latency === null ? '' : stats.latency.toFixed(4));
  latency.title = stats.bridgeLatency === null ? ''
    : `bridge received → drawn: ${formatDuration(stats.bridgeLatency)}; clock offset known `
      + `within ±${formatDuration((control.clock.rtt ?? 0) / 2)}`;
  const rate = $('stat-rate');
  setText(rate, formatBitrate(stats.kbps));
  setAttr(rate, 'data-value', stats.kbps.toFixed(0));
  $('stats').dataset.size = stats.width ? `${stats.width}×${stats.height}` : '';
}

$('stats').title = statsTooltip(PROBE_PERIOD);
setInterval(render, 250);

// Devtools and tests read the live objects here; nothing on the page depends on it.
window.videoBridge = { control, video, drive, ui, webrtc, tokens, transports, sfu, paths };

control.start();
loadStreams();
render();
