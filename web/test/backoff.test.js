import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { Backoff, backoffDelay } from '../js/backoff.js';

describe('backoff', () => {
  it('doubles from 500 ms up to the cap (no jitter at random = 0.5)', () => {
    const mid = () => 0.5;
    assert.deepEqual([0, 1, 2, 3, 4, 5, 6].map((a) => backoffDelay(a, {}, mid)),
                     [500, 1000, 2000, 4000, 8000, 8000, 8000]);
  });

  it('spreads each delay by +-25 % and never exceeds the cap', () => {
    assert.equal(backoffDelay(0, {}, () => 0), 375);
    assert.equal(backoffDelay(0, {}, () => 0.999999), 625);
    assert.equal(backoffDelay(2, {}, () => 0), 1500);
    assert.equal(backoffDelay(10, {}, () => 0.999999), 8000);
    for (let attempt = 0; attempt < 20; attempt += 1) {
      for (let i = 0; i < 50; i += 1) {
        const d = backoffDelay(attempt);
        const ideal = Math.min(8000, 500 * 2 ** attempt);
        assert.ok(d >= ideal * 0.75 - 1 && d <= Math.min(8000, ideal * 1.25) + 1, `${attempt}: ${d}`);
      }
    }
  });

  it('takes options', () => {
    assert.equal(backoffDelay(3, { base: 100, factor: 3, max: 1e6, jitter: 0 }), 2700);
    assert.equal(backoffDelay(-1, { jitter: 0 }), 500);
  });

  it('counts attempts and starts again after reset()', () => {
    const backoff = new Backoff({ jitter: 0 });
    assert.deepEqual([backoff.next(), backoff.next(), backoff.next()], [500, 1000, 2000]);
    backoff.reset();
    assert.equal(backoff.next(), 500);
  });
});
