// @ts-check
import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  buildModel, collapseAll, criticalSections, expandAncestors, flatten, maxDepth, retime, selfTime, summarize,
} from '../trace/model.js';

/**
 * A Jaeger span: `id` with parent `parent`, service `svc`, from..to µs.
 * @param {string} id @param {string | null} parent @param {string} svc @param {number} from @param {number} to
 * @param {{ key: string, value: unknown }[]} [tags]
 */
function span(id, parent, svc, from, to, tags = []) {
  return {
    traceID: 't', spanID: id, operationName: `op ${id}`, startTime: from, duration: to - from, tags, logs: [],
    processID: svc, references: parent ? [{ refType: 'CHILD_OF', traceID: 't', spanID: parent }] : [],
  };
}

/** @param {ReturnType<typeof span>[]} spans */
function trace(spans) {
  const processes = Object.fromEntries(spans.map((s) => [s.processID, { serviceName: s.processID, tags: [] }]));
  return { traceID: 't', spans, processes };
}

// root a (0..100) → b (10..40) → d (15..20); a → c (30..90); e's parent is missing.
const T = trace([
  span('c', 'a', 'svc2', 30, 90),
  span('a', null, 'svc1', 0, 100),
  span('d', 'b', 'svc2', 15, 20, [{ key: 'error', value: true }]),
  span('b', 'a', 'svc1', 10, 40),
  span('e', 'zz', 'svc3', 50, 60),
]);

/** @param {import('../trace/model.js').ViewSpan[]} rows */
const ids = (rows) => rows.map((s) => `${s.id}${s.depth}`).join(' ');

test('buildModel links children to parents and makes orphans roots, by start', () => {
  const m = buildModel(/** @type {any} */ (T));
  assert.deepEqual(m.roots.map((s) => s.id), ['a', 'e']);
  assert.deepEqual(m.byId.get('a')?.children.map((s) => s.id), ['b', 'c']);
  assert.deepEqual(m.services, ['svc2', 'svc1', 'svc3']);
  assert.equal(m.byId.get('d')?.error, true);
  assert.equal(m.byId.get('b')?.error, false);
  assert.equal(maxDepth(m.roots), 3);
});

test('flatten lists rows depth first and leaves out collapsed subtrees', () => {
  const m = buildModel(/** @type {any} */ (T));
  assert.equal(ids(flatten(m.roots, new Set())), 'a0 b1 d2 c1 e0');
  assert.equal(ids(flatten(m.roots, new Set(['b']))), 'a0 b1 c1 e0');
  assert.equal(ids(flatten(m.roots, new Set(['a']))), 'a0 e0');
});

test('flatten shows each span once when parent IDs form a cycle', () => {
  const m = buildModel(/** @type {any} */ (trace([span('r', null, 's', 0, 9), span('x', 'y', 's', 1, 2), span('y', 'x', 's', 3, 4)])));
  // x and y are each other's parent: neither is a root, neither is reachable.
  assert.equal(ids(flatten(m.roots, new Set())), 'r0');
  const self = buildModel(/** @type {any} */ (trace([span('s', 's', 'svc', 0, 1)])));
  assert.equal(ids(flatten(self.roots, new Set())), 's0');
});

test('retime applies per-service offsets and reports the extent', () => {
  const m = buildModel(/** @type {any} */ (T));
  assert.deepEqual(retime(m.spans, new Map()), { t0: 0, t1: 100, rawT0: 0, total: 100 });
  const b = retime(m.spans, new Map([['svc1', 20]]));
  assert.deepEqual(b, { t0: 15, t1: 120, rawT0: 0, total: 105 });
  assert.equal(m.byId.get('a')?.start, 20);
  assert.equal(m.byId.get('a')?.rawStart, 0);
  assert.deepEqual(retime([], new Map()), { t0: 0, t1: 0, rawT0: 0, total: 1 });
});

test('selfTime subtracts the union of the children, clipped to the span', () => {
  const m = buildModel(/** @type {any} */ (trace([
    span('p', null, 's', 0, 100), span('k1', 'p', 's', 10, 40), span('k2', 'p', 's', 30, 50), span('k3', 'p', 's', 90, 130),
  ])));
  // Covered: 10..50 and 90..100 = 50 µs.
  assert.equal(selfTime(/** @type {any} */ (m.byId.get('p'))), 50);
  assert.equal(selfTime(/** @type {any} */ (m.byId.get('k1'))), 30);
});

test('expandAncestors opens the collapsed ancestors only', () => {
  const m = buildModel(/** @type {any} */ (T));
  const collapsed = new Set(['a', 'b', 'c']);
  assert.equal(expandAncestors(m, /** @type {any} */ (m.byId.get('d')), collapsed), true);
  assert.deepEqual([...collapsed], ['c']);
  assert.equal(expandAncestors(m, /** @type {any} */ (m.byId.get('d')), collapsed), false);
});

test('collapseAll collapses every parent but the roots', () => {
  const m = buildModel(/** @type {any} */ (T));
  const collapsed = new Set();
  collapseAll(m, collapsed);
  assert.deepEqual([...collapsed].sort(), ['b']);
  assert.equal(ids(flatten(m.roots, collapsed)), 'a0 b1 c1 e0');
});

test('criticalSections groups the critical path by span', () => {
  const c = criticalSections(/** @type {any} */ ({
    criticalPath: [{ spanID: 'a', startUs: 0, endUs: 5 }, { spanID: 'b', startUs: 5, endUs: 9 }, { spanID: 'a', startUs: 9, endUs: 12 }],
  }));
  assert.deepEqual([...c], [['a', [[0, 5], [9, 12]]], ['b', [[5, 9]]]]);
});

test('summarize finds the earliest parentless span, the extent, errors and services', () => {
  const s = summarize(/** @type {any} */ (T));
  assert.equal(s.rootService, 'svc1');
  assert.equal(s.rootOp, 'op a');
  assert.equal(s.start, 0);
  assert.equal(s.duration, 100);
  assert.equal(s.spans, 5);
  assert.equal(s.errors, 1);
  assert.deepEqual([...s.services], [['svc2', 2], ['svc1', 2], ['svc3', 1]]);
});
