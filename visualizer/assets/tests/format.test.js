// @ts-check
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { fmtDur, fmtTime, pct, plural } from '../format.js';

test('fmtDur picks µs, ms, s or min and trims trailing zeros', () => {
  assert.equal(fmtDur(0), '0µs');
  assert.equal(fmtDur(7.256), '7.26µs');
  assert.equal(fmtDur(999), '999µs');
  assert.equal(fmtDur(1000), '1ms');
  assert.equal(fmtDur(30_000), '30ms');
  assert.equal(fmtDur(430_000), '430ms');
  assert.equal(fmtDur(15_000.4), '15ms');
  assert.equal(fmtDur(1_234_567), '1.23s');
  assert.equal(fmtDur(59_999_999), '60s');
  assert.equal(fmtDur(60_000_000), '1min');
  assert.equal(fmtDur(150_000_000), '2.5min');
});

test('fmtDur keeps the sign of negative durations and dashes non-numbers', () => {
  assert.equal(fmtDur(-15_000), '-15ms');
  assert.equal(fmtDur(-3), '-3µs');
  assert.equal(fmtDur(NaN), '–');
  assert.equal(fmtDur(Infinity), '–');
});

test('fmtTime is local time to the millisecond', () => {
  const saved = process.env.TZ;
  try {
    process.env.TZ = 'UTC';
    assert.equal(fmtTime(Date.UTC(2024, 0, 2, 3, 4, 5, 6) * 1000), '2024-01-02 03:04:05.006');
    assert.equal(fmtTime(Date.UTC(1999, 11, 31, 23, 59, 59, 999) * 1000 + 999), '1999-12-31 23:59:59.999');
  } finally {
    if (saved === undefined) delete process.env.TZ;
    else process.env.TZ = saved;
  }
});

test('pct shows one decimal only for small non-zero shares', () => {
  assert.equal(pct(0), '0%');
  assert.equal(pct(0.075), '7.5%');
  assert.equal(pct(0.5), '50%');
  assert.equal(pct(1), '100%');
});

test('plural', () => {
  assert.equal(plural(1, 'trace'), '1 trace');
  assert.equal(plural(0, 'trace'), '0 traces');
  assert.equal(plural(21, 'error'), '21 errors');
});
