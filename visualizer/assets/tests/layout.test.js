// @ts-check
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { NODE, columns, layout, positions } from '../graph/layout.js';

/** @param {string} spec `a>b b>c` */
const edges = (spec) => spec.split(' ').map((e) => {
  const [parent, child] = e.split('>');
  return { parent, child };
});

test('columns are the longest call path from a caller', () => {
  const d = columns(['a', 'b', 'c', 'd'], edges('a>b b>c a>c c>d'));
  assert.deepEqual([...d], [['a', 0], ['b', 1], ['c', 2], ['d', 3]]);
});

test('columns ignore self-calls and stay bounded on a cycle', () => {
  assert.deepEqual([...columns(['a', 'b'], edges('a>a a>b'))], [['a', 0], ['b', 1]]);
  const cyc = columns(['a', 'b', 'c'], edges('a>b b>c c>b'));
  for (const [, col] of cyc) assert.ok(col < 3, `column ${col}`);
  assert.equal(cyc.get('a'), 0);
});

test('columns ignore edges to services not in the graph', () => {
  assert.deepEqual([...columns(['a'], edges('a>ghost ghost>a'))], [['a', 0]]);
});

test('positions stack a column by name and size the drawing', () => {
  const { pos, width, height } = positions(new Map([['z', 0], ['y', 1], ['x', 1]]));
  assert.deepEqual(pos.get('z'), { x: 30, y: 40 });
  assert.deepEqual(pos.get('x'), { x: 30 + NODE.colGap, y: 40 });
  assert.deepEqual(pos.get('y'), { x: 30 + NODE.colGap, y: 40 + NODE.rowGap });
  assert.equal(width, 60 + 2 * NODE.colGap);
  assert.equal(height, 60 + 2 * NODE.rowGap);
});

/**
 * @param {string[]} services @param {string} spec
 * @returns {any}
 */
const graph = (services, spec) => ({
  services: services.map((service) => ({ service, spans: 1, errors: 0 })),
  edges: edges(spec).map((e) => ({ ...e, callCount: 1, errorCount: 0, errorRate: 0, latencySamples: 0, latency: {} })),
});

test('a forward edge runs from the right side of the caller to the left side of the callee', () => {
  const lay = layout(graph(['a', 'b'], 'a>b'));
  assert.equal(lay.edges.length, 1);
  const y = 40 + NODE.h / 2;
  const x1 = 30 + NODE.w;
  const x2 = 30 + NODE.colGap;
  assert.equal(lay.edges[0].d, `M${x1},${y} C${x1 + 60},${y} ${x2 - 60},${y} ${x2},${y}`);
  // b has one caller: the label sits near it (t = 0.7), above the line.
  assert.ok(lay.edges[0].label.x > (x1 + x2) / 2, String(lay.edges[0].label.x));
  assert.ok(Math.abs(lay.edges[0].label.y - (y - 6)) < 1e-9, String(lay.edges[0].label.y));
});

test('labels sit near the caller when the callee has several callers and the caller one callee', () => {
  const lay = layout(graph(['a', 'b', 'c'], 'a>c b>c'));
  for (const e of lay.edges) {
    const mid = (30 + NODE.w + 30 + NODE.colGap) / 2;
    assert.ok(e.label.x < mid, `${e.edge.parent}: ${e.label.x}`);
  }
});

test('a call back to an earlier column or to itself loops below the boxes', () => {
  const lay = layout(graph(['a', 'b'], 'a>b b>a a>a'));
  const back = lay.edges.find((e) => e.edge.parent === 'b');
  const self = lay.edges.find((e) => e.edge.child === e.edge.parent);
  assert.ok(back && self);
  const low = 40 + NODE.h + 50;
  assert.match(back.d, new RegExp(`^M${30 + NODE.colGap + NODE.w / 2},${40 + NODE.h} C[^ ]+,${low} `));
  assert.equal(back.label.y, low - 8);
  // A self-call ends 30 units to the right of where it starts.
  assert.equal(self.d, `M${30 + NODE.w / 2},${40 + NODE.h} C${30 + NODE.w / 2},${low} ${30 + NODE.w / 2 + 30},${low} ${30 + NODE.w / 2 + 30},${40 + NODE.h}`);
});

test('edges naming an unknown service are left out', () => {
  assert.equal(layout(graph(['a'], 'a>ghost')).edges.length, 0);
});
