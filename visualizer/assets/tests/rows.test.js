// @ts-check
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { OVERSCAN, ROW, labelPlace, scale, scrollTopFor, visibleRange } from '../trace/rows.js';

test('the row height matches --row in app.css', async () => {
  const { readFile } = await import('node:fs/promises');
  const css = await readFile(new URL('../app.css', import.meta.url), 'utf8');
  assert.match(css, new RegExp(`--row: ${ROW}px`));
});

test('visibleRange at the top renders the viewport plus the overscan below', () => {
  // 600 px / 24 px = 25 rows in view.
  assert.deepEqual(visibleRange(0, 600, 10_000), { first: 0, last: 25 + OVERSCAN });
});

test('visibleRange in the middle of 10,000 rows stays small', () => {
  const top = 5000 * ROW;
  const r = visibleRange(top, 600, 10_000);
  assert.deepEqual(r, { first: 5000 - OVERSCAN, last: 5025 + OVERSCAN });
  assert.ok(r.last - r.first < 100, 'a few dozen rows in the DOM');
});

test('visibleRange covers a viewport between rows', () => {
  const r = visibleRange(ROW * 3 + 5, 50, 100, ROW, 0);
  // Rows 3 (partly), 4 and 5 (partly) are in view.
  assert.deepEqual(r, { first: 3, last: 6 });
});

test('visibleRange clamps at the end and on short or empty lists', () => {
  assert.deepEqual(visibleRange(1e9, 600, 50), { first: 50, last: 50 });
  assert.deepEqual(visibleRange(45 * ROW, 600, 50), { first: 35, last: 50 });
  assert.deepEqual(visibleRange(0, 600, 8), { first: 0, last: 8 });
  assert.deepEqual(visibleRange(0, 600, 0), { first: 0, last: 0 });
});

test('scrollTopFor puts the row a third of the way down, never above 0', () => {
  assert.equal(scrollTopFor(100, 600), 100 * ROW - 200);
  assert.equal(scrollTopFor(2, 600), 0);
});

test('scale maps times to percentages of the trace', () => {
  const { x, w } = scale(1000, 200);
  assert.equal(x(1000), '0%');
  assert.equal(x(1100), '50%');
  assert.equal(w(50), '25%');
});

test('labelPlace puts the duration after the bar, or inside it near the right edge', () => {
  assert.deepEqual(labelPlace(0, 50, 0, 100), { left: 'calc(50% + 4px)' });
  assert.deepEqual(labelPlace(10, 75, 10, 100), { left: 'calc(75% + 4px)' });
  // Ends at 15/16 of the trace: inside, 1/16 from the right edge.
  assert.deepEqual(labelPlace(0, 7.5, 0, 8), { right: 'calc(6.25% + 4px)' });
  assert.deepEqual(labelPlace(4, 4, 4, 4), { right: 'calc(0% + 4px)' });
});
