import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { formatBitrate, formatDuration, plausibleLatency, RateMeter, RecentMedian } from '../js/stats.js';
import { NewestOnly } from '../js/video.js';

function deferred() {
  let resolve;
  let reject;
  const promise = new Promise((res, rej) => { resolve = res; reject = rej; });
  return { promise, resolve, reject };
}
const tick = () => new Promise((resolve) => setImmediate(resolve));

describe('NewestOnly (the newest frame wins)', () => {
  it('keeps only the latest frame that arrived during a decode', async () => {
    const started = [];
    const pending = [];
    const queue = new NewestOnly((item) => {
      started.push(item);
      const d = deferred();
      pending.push(d);
      return d.promise;
    });
    queue.push(1);
    queue.push(2);
    queue.push(3);
    queue.push(4);
    assert.deepEqual(started, [1]);
    pending.shift().resolve();
    await tick();
    assert.deepEqual(started, [1, 4]);
    assert.equal(queue.dropped, 2);
    pending.shift().resolve();
    await tick();
    assert.equal(queue.busy, false);
    queue.push(5);
    assert.deepEqual(started, [1, 4, 5]);
  });

  it('carries on after a frame that fails to decode', async () => {
    const done = [];
    const queue = new NewestOnly(async (item) => {
      if (item === 'bad') throw new Error('corrupt JPEG');
      done.push(item);
    });
    queue.push('bad');
    queue.push('good');
    await tick();
    await tick();
    assert.deepEqual(done, ['good']);
    assert.equal(queue.errors, 1);
  });

  it('drops the waiting frame on clear()', async () => {
    const d = deferred();
    const seen = [];
    const queue = new NewestOnly((item) => { seen.push(item); return item === 1 ? d.promise : null; });
    queue.push(1);
    queue.push(2);
    queue.clear();
    d.resolve();
    await tick();
    assert.deepEqual(seen, [1]);
  });
});

describe('stats', () => {
  it('measures frames per second and kbit/s over a sliding window', () => {
    const meter = new RateMeter(2000);
    for (let t = 0; t < 4000; t += 1000 / 30) meter.add(t, 10_000);
    const now = 4000;
    assert.ok(Math.abs(meter.rate(now) - 30) <= 0.5, `${meter.rate(now)}`);
    assert.ok(Math.abs(meter.kbps(now) - 2400) <= 40, `${meter.kbps(now)}`);
    assert.equal(meter.rate(now + 5000), 0, 'no frames: 0 fps');
  });

  it('is right while young too (not diluted by an empty window)', () => {
    const meter = new RateMeter(2000);
    for (let t = 0; t < 1000; t += 40) meter.add(t);
    assert.ok(Math.abs(meter.rate(1000) - 25) <= 1, `${meter.rate(1000)}`);
  });

  it('takes the median of recent latencies', () => {
    const median = new RecentMedian(3);
    assert.equal(median.value(), null);
    median.add(0.010);
    median.add(5);      // one stall
    median.add(0.012);
    assert.equal(median.value(), 0.012);
    median.add(NaN);
    median.add(0.014);
    assert.equal(median.value(), 0.014);
  });

  it('formats figures and hides implausible latencies', () => {
    assert.equal(formatDuration(0.0421), '42 ms');
    assert.equal(formatDuration(1.26), '1.3 s');
    assert.equal(formatDuration(null), '–');
    assert.equal(formatBitrate(2431.6), '2432 kbit/s');
    assert.equal(formatBitrate(12_400), '12.4 Mbit/s');
    assert.equal(plausibleLatency(0.05), true);
    assert.equal(plausibleLatency(-3), false);       // camera clock not the bridge's
    assert.equal(plausibleLatency(1.7e9), false);    // sim time stamps
    assert.equal(plausibleLatency(null), false);
  });
});
