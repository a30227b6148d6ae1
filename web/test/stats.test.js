import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { PROBE_PERIOD } from '../js/control.js';
import { statsTooltip, transportLabel } from '../js/stats.js';

describe('transportLabel (the "via" figure)', () => {
  it('names WebRTC only once it plays, with codec and relay', () => {
    assert.deepEqual(transportLabel({ webrtc: 'playing', websocket: 'disconnected', codec: 'h264' }),
      ['WebRTC H264', 'webrtc']);
    assert.deepEqual(transportLabel({ webrtc: 'playing', websocket: 'disconnected', codec: 'vp8',
      candidateType: 'relay' }), ['WebRTC VP8 relay', 'webrtc']);
  });

  it('never says WebSocket JPEG while WebRTC starts and no video socket is open', () => {
    const [text, value] = transportLabel({ webrtc: 'starting', websocket: 'disconnected' });
    assert.equal(text, 'WebRTC…');
    assert.equal(value, 'webrtc-starting');
    assert.notEqual(transportLabel({ webrtc: 'off', websocket: 'disconnected' })[0],
      'WebSocket JPEG');
  });

  it('says SFU when the picture comes through the SFU, before what the direct path shows', () => {
    assert.deepEqual(transportLabel({ webrtc: 'playing', websocket: 'disconnected', sfu: 'playing',
      codec: 'h264' }), ['SFU H264', 'sfu']);
    assert.deepEqual(transportLabel({ webrtc: 'off', websocket: 'disconnected', sfu: 'starting' }),
      ['SFU…', 'sfu-starting']);
    assert.deepEqual(transportLabel({ webrtc: 'playing', websocket: 'disconnected', sfu: 'starting',
      codec: 'h264' }), ['WebRTC H264', 'webrtc']);
  });

  it('says WebSocket JPEG when the video socket draws the picture', () => {
    assert.deepEqual(transportLabel({ webrtc: 'starting', websocket: 'open' }),
      ['WebSocket JPEG', 'websocket']);
    assert.deepEqual(transportLabel({ webrtc: 'unavailable', websocket: 'open' }),
      ['WebSocket JPEG', 'websocket']);
    assert.deepEqual(transportLabel({ webrtc: 'off', websocket: 'connecting' }),
      ['WebSocket…', 'websocket-connecting']);
  });
});

describe('statsTooltip', () => {
  it('states the probe period the control client really uses', () => {
    assert.match(statsTooltip(PROBE_PERIOD), new RegExp(`one probe every ${PROBE_PERIOD / 1000} s`));
    assert.match(statsTooltip(1500), /one probe every 1500 ms/);
    assert.doesNotMatch(statsTooltip(PROBE_PERIOD), /5 s/);
  });
});

describe('errorNotice', () => {
  it('does not repeat what the bridge said in other words of the same text', async () => {
    const { errorNotice } = await import('../js/protocol.js');
    assert.equal(errorNotice('unauthorized', 'a valid token is required to drive'),
      'A valid token is required to drive.');
    assert.equal(errorNotice('estop_engaged', 'the emergency stop is engaged; release it first'),
      'The emergency stop is engaged: release it first.');
    assert.equal(errorNotice('not_driver', 'c2 is driving'), 'You are not driving. (c2 is driving)');
    assert.equal(errorNotice('bad_json', 'not valid JSON'), 'not valid JSON');
    assert.equal(errorNotice('bad_json', ''), 'bad_json');
  });
});
