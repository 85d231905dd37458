// @ts-check
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { searchQuery } from '../pages/search.js';
import { parseTags, toMicros } from '../tags.js';

test('parseTags reads key=value pairs separated by spaces', () => {
  assert.deepEqual(parseTags('http.status_code=500 error=true'), { 'http.status_code': '500', error: 'true' });
});

test('parseTags keeps spaces inside double quotes and allows empty values', () => {
  assert.deepEqual(parseTags('msg="not found" user= db.system=redis'), { msg: 'not found', user: '', 'db.system': 'redis' });
});

test('parseTags ignores words without = and lets a later key win', () => {
  assert.deepEqual(parseTags('just words k=1 k=2'), { k: '2' });
  assert.deepEqual(parseTags(''), {});
});

test('parseTags keeps = inside an unquoted value', () => {
  assert.deepEqual(parseTags('q=a=b'), { q: 'a=b' });
});

test('toMicros converts datetime-local values and refuses junk', () => {
  assert.equal(toMicros('2024-01-02T03:04:05Z'), Date.UTC(2024, 0, 2, 3, 4, 5) * 1000);
  assert.equal(toMicros(''), null);
  assert.equal(toMicros('yesterday-ish'), null);
});

test('searchQuery sends tags as JSON, a default limit and the lookback', () => {
  const q = new URLSearchParams('service=frontend&tags=error%3Dtrue%20msg%3D%22a%20b%22&minDuration=300ms');
  const p = searchQuery(q, '1h', '', '');
  assert.equal(p.get('service'), 'frontend');
  assert.equal(p.get('minDuration'), '300ms');
  assert.equal(p.get('limit'), '20');
  assert.equal(p.get('lookback'), '1h');
  assert.deepEqual(JSON.parse(p.get('tags') || ''), { error: 'true', msg: 'a b' });
  assert.equal(p.has('start'), false);
});

test('searchQuery sends a custom range in microseconds instead of a lookback', () => {
  const p = searchQuery(new URLSearchParams('limit=5'), 'custom', '2024-01-02T03:04:05Z', 'nonsense');
  assert.equal(p.get('limit'), '5');
  assert.equal(p.has('lookback'), false);
  assert.equal(p.get('start'), String(Date.UTC(2024, 0, 2, 3, 4, 5) * 1000));
  assert.equal(p.has('end'), false);
});
