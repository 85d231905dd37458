// @ts-check
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { TOKEN_KEY, authHeaders, clearToken, normalizeToken, readToken, safeNext, saveToken, signInUrl } from '../auth.js';

/** A sessionStorage stand-in. */
function fakeStore() {
  const m = new Map();
  return {
    /** @param {string} k */ getItem: (k) => (m.has(k) ? m.get(k) : null),
    /** @param {string} k @param {string} v */ setItem: (k, v) => void m.set(k, String(v)),
    /** @param {string} k */ removeItem: (k) => void m.delete(k),
    m,
  };
}

test('normalizeToken trims, drops a pasted Bearer prefix and refuses what is not one word', () => {
  assert.equal(normalizeToken('  abc.def.ghi \n'), 'abc.def.ghi');
  assert.equal(normalizeToken('Bearer abc'), 'abc');
  assert.equal(normalizeToken('bearer   abc'), 'abc');
  assert.equal(normalizeToken(''), null);
  assert.equal(normalizeToken('   '), null);
  assert.equal(normalizeToken('two words'), null);
  assert.equal(normalizeToken('tab\there'), null);
  assert.equal(normalizeToken('Bearer '), null);
});

test('the token is kept under one key, sent as a Bearer header and forgotten on sign-out', () => {
  const s = fakeStore();
  assert.deepEqual(authHeaders(s), { accept: 'application/json' });
  saveToken(s, 'tok');
  assert.equal(s.m.get(TOKEN_KEY), 'tok');
  assert.equal(readToken(s), 'tok');
  assert.deepEqual(authHeaders(s), { accept: 'application/json', authorization: 'Bearer tok' });
  clearToken(s);
  assert.equal(readToken(s), null);
  assert.deepEqual(authHeaders(s), { accept: 'application/json' });
});

test('signInUrl returns to the page the user was on', () => {
  assert.equal(signInUrl('/trace/abc?span=1'), '/signin?next=%2Ftrace%2Fabc%3Fspan%3D1');
  assert.equal(signInUrl('/signin?next=%2Fx'), '/signin');
});

test('safeNext only goes to paths of this site', () => {
  assert.equal(safeNext('/trace/abc?span=1'), '/trace/abc?span=1');
  assert.equal(safeNext(null), '/search');
  assert.equal(safeNext('https://evil.example/'), '/search');
  assert.equal(safeNext('//evil.example/'), '/search');
  assert.equal(safeNext('/\\evil.example'), '/search');
  assert.equal(safeNext('javascript:alert(1)'), '/search');
  assert.equal(safeNext('/signin'), '/search');
});
