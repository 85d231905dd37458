// @ts-check
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { PALETTE, extraColor, hashName, servicePalette, sessionColors } from '../colors.js';

const SERVICES = ['frontend', 'backend', 'inventory', 'payments', 'db', 'gateway', 'store',
  'worker-0', 'worker-1', 'worker-2', 'worker-3', 'worker-4', 'auth', 'cart', 'search', 'email',
  'ledger', 'shipping', 'recommendations', 'ads'];

/** @param {string} hex @returns {[number, number, number]} CIELAB */
function lab(hex) {
  const lin = (/** @type {number} */ c) => (c <= 0.04045 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4);
  const [r, g, b] = [1, 3, 5].map((i) => lin(parseInt(hex.slice(i, i + 2), 16) / 255));
  const x = (0.4124 * r + 0.3576 * g + 0.1805 * b) / 0.95047;
  const y = 0.2126 * r + 0.7152 * g + 0.0722 * b;
  const z = (0.0193 * r + 0.1192 * g + 0.9505 * b) / 1.08883;
  const f = (/** @type {number} */ t) => (t > 0.008856 ? Math.cbrt(t) : 7.787 * t + 16 / 116);
  return [116 * f(y) - 16, 500 * (f(x) - f(y)), 200 * (f(y) - f(z))];
}

test('the palette has twenty clearly different colours that read on white', () => {
  assert.equal(PALETTE.length, 20);
  const labs = PALETTE.map(lab);
  for (let i = 0; i < labs.length; i++) {
    assert.ok(labs[i][0] >= 35 && labs[i][0] <= 70, `${PALETTE[i]} lightness ${labs[i][0]}`);
    for (let j = i + 1; j < labs.length; j++) {
      const de = Math.hypot(...labs[i].map((v, k) => v - labs[j][k]));
      assert.ok(de >= 20, `${PALETTE[i]} and ${PALETTE[j]} differ by ΔE ${de.toFixed(1)}`);
    }
  }
});

test('a service has the same colour on every page, whatever order the list comes in', () => {
  const pageA = servicePalette(SERVICES);
  const pageB = servicePalette([...SERVICES].reverse().concat(['db', 'db']));
  for (const s of SERVICES) {
    assert.equal(pageA(s), pageB(s), s);
    assert.equal(pageA(s), pageA(s), s);
  }
  // Asking in another order, or for services in another order, changes nothing.
  const pageC = servicePalette(SERVICES);
  for (const s of [...SERVICES].sort().reverse()) assert.equal(pageC(s), pageA(s), s);
});

test('the first twenty services get twenty different palette colours, and more stay distinct', () => {
  for (let n = 1; n <= SERVICES.length; n++) {
    const color = servicePalette(SERVICES.slice(0, n));
    const used = SERVICES.slice(0, n).map(color);
    assert.equal(new Set(used).size, n, `${n} services: ${used}`);
    assert.ok(used.every((c) => PALETTE.includes(c)), `${n}: ${used}`);
  }
  const many = Array.from({ length: 200 }, (_, i) => `svc-${i}`);
  const color = servicePalette(many);
  assert.equal(new Set(many.map(color)).size, 200);
  assert.equal(many.map(color).filter((c) => PALETTE.includes(c)).length, 20);
});

test('two names hashing to one slot get different colours; the first by name keeps its own', () => {
  const slot = (/** @type {string} */ s) => hashName(s) % PALETTE.length;
  const a = 'svc-0';
  const b = Array.from({ length: 500 }, (_, i) => `svc-${i + 1}`).find((s) => s > a && slot(s) === slot(a));
  assert.ok(b, 'no collision among 500 names');
  const color = servicePalette([b, a]);
  assert.equal(color(a), PALETTE[slot(a)]);
  assert.equal(color(b), PALETTE[(slot(a) + 1) % PALETTE.length]);
});

test('a new service leaves the colours of services named before it alone', () => {
  const before = servicePalette(SERVICES.slice(0, 12));
  const after = servicePalette(SERVICES.slice(0, 12).concat(['zz-new', 'm-new']));
  for (const s of SERVICES.slice(0, 12)) {
    if (s < 'm-new') assert.equal(after(s), before(s), s);
  }
});

test('a service the collector did not list gets a free colour on first use and keeps it', () => {
  const color = servicePalette(SERVICES.slice(0, 5));
  const known = SERVICES.slice(0, 5).map(color);
  const c = color('uploaded-only');
  assert.ok(!known.includes(c), c);
  assert.equal(color('uploaded-only'), c);
  // Past the palette: generated colours, all different.
  const full = servicePalette(SERVICES);
  assert.equal(full('one more'), extraColor(0));
  assert.equal(full('and another'), extraColor(1));
  assert.notEqual(extraColor(0), extraColor(1));
});

test('hashName is FNV-1a', () => {
  assert.equal(hashName(''), 0x811c9dc5);
  assert.equal(hashName('a'), 0xe40c292c);
});

test('the session asks for the services once, and again after a failure', async () => {
  let calls = 0;
  const ok = sessionColors(async () => {
    calls++;
    return ['db', 'frontend'];
  });
  const [x, y] = await Promise.all([ok(), ok()]);
  assert.equal(x, y);
  assert.equal(await ok(), x);
  assert.equal(calls, 1);
  assert.equal(x('db'), servicePalette(['frontend', 'db'])('db'));

  let tries = 0;
  const flaky = sessionColors(async () => {
    if (++tries === 1) throw new Error('down');
    return ['db'];
  });
  const fallback = await flaky();
  assert.equal(fallback('db'), servicePalette([])('db'));
  await flaky();
  assert.equal(tries, 2);
});
