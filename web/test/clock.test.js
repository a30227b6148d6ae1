import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { ClockOffset } from '../js/clock.js';

const close = (a, b, eps = 1e-9) => assert.ok(Math.abs(a - b) < eps, `${a} != ${b}`);

describe('ClockOffset', () => {
  it('knows nothing before a probe', () => {
    const clock = new ClockOffset();
    assert.equal(clock.offset, null);
    assert.equal(clock.age(100, 1000), null);
  });

  it('uses offset = server_time - (t0 + t3) / 2 (page ms, bridge s)', () => {
    const clock = new ClockOffset();
    // page clock 2.5 s behind the bridge, 20 ms round trip
    clock.add(1_000_000, 1000 + 2.5 + 0.010, 1_000_020);
    close(clock.offset, 2.5);
    close(clock.rtt, 0.020);
    // a frame stamped 50 ms before "now" in bridge time is 50 ms old
    const now = 1_000_500;
    close(clock.age(now / 1000 + 2.5 - 0.050, now), 0.050, 1e-6);
    close(clock.bridgeTime(now), now / 1000 + 2.5, 1e-9);
  });

  it('trusts the sample with the smallest round trip', () => {
    const clock = new ClockOffset();
    clock.add(0, 10.2, 400);       // rtt 400 ms, asymmetric: offset 10.0
    clock.add(1000, 11.3005, 1010); // rtt 10 ms: offset 10.2955
    clock.add(2000, 12.5, 2300);   // rtt 300 ms
    close(clock.rtt, 0.010);
    close(clock.offset, 11.3005 - 1.005);
  });

  it('forgets old samples, so the estimate follows drift', () => {
    const clock = new ClockOffset(3);
    clock.add(0, 5.0005, 1);                   // the best, but it will age out
    for (let i = 1; i <= 3; i += 1) clock.add(i * 1000, i + 7 + 0.002, i * 1000 + 4);
    assert.equal(clock.samples.length, 3);
    close(clock.offset, 7.0);
    close(clock.rtt, 0.004);
  });

  it('ignores impossible samples and can be reset', () => {
    const clock = new ClockOffset();
    assert.equal(clock.add(100, 1, 50), null);   // answered before it was asked
    assert.equal(clock.add(NaN, 1, 50), null);
    assert.equal(clock.add(0, Infinity, 50), null);
    assert.equal(clock.offset, null);
    clock.add(0, 1, 2);
    clock.reset();
    assert.equal(clock.offset, null);
  });
});
