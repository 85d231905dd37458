// @ts-check
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { LABEL, NODE, columns, estimateWidth, layout, positions } from '../graph/layout.js';

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
  edges: edges(spec).map((e) => ({ ...e, callCount: 1, errorCount: 0, errorRate: 0, latency: {} })),
});

/** @param {import('../graph/layout.js').Box} b @param {import('../graph/layout.js').Point} p */
const contains = (b, p) => p.x >= b.x && p.x <= b.x + b.w && p.y >= b.y && p.y <= b.y + b.h;

test('a forward edge runs from the right side of the caller to the left side of the callee', () => {
  const lay = layout(graph(['a', 'b'], 'a>b'));
  assert.equal(lay.edges.length, 1);
  const y = 40 + NODE.h / 2;
  const x1 = 30 + NODE.w;
  const x2 = 30 + NODE.colGap;
  const e = lay.edges[0];
  assert.equal(e.d, `M${x1},${y} C${x1 + 60},${y} ${x2 - 60},${y} ${x2},${y}`);
  // The label sits on the line, between the boxes, with its text.
  assert.equal(e.text, '1 call · 0% err');
  assert.ok(contains(e.label, e.anchor) && !e.leader, JSON.stringify(e));
  assert.ok(Math.abs(e.anchor.y - y) < 1e-9 && e.label.x > x1 && e.label.x + e.label.w < x2, JSON.stringify(e.label));
  assert.equal(e.label.h, LABEL.h);
  assert.equal(e.label.w, Math.ceil(estimateWidth(e.text)) + 2 * LABEL.pad);
});

test('labels sit near the caller when the callee has several callers and the caller one callee', () => {
  const lay = layout(graph(['a', 'b', 'c'], 'a>c b>c'));
  for (const e of lay.edges) {
    const mid = (30 + NODE.w + 30 + NODE.colGap) / 2;
    assert.ok(e.label.x + e.label.w / 2 < mid, `${e.edge.parent}: ${JSON.stringify(e.label)}`);
  }
});

test('a call back to an earlier column or to itself loops below the boxes', () => {
  const lay = layout(graph(['a', 'b'], 'a>b b>a a>a'));
  const back = lay.edges.find((e) => e.edge.parent === 'b');
  const self = lay.edges.find((e) => e.edge.child === e.edge.parent);
  assert.ok(back && self);
  const low = 40 + NODE.h + 50;
  assert.match(back.d, new RegExp(`^M${30 + NODE.colGap + NODE.w / 2},${40 + NODE.h} C[^ ]+,${low} `));
  // Its label is on the loop, below the boxes.
  assert.ok(contains(back.label, back.anchor) && back.anchor.y > 40 + NODE.h, JSON.stringify(back));
  // A self-call ends 30 units to the right of where it starts.
  assert.equal(self.d, `M${30 + NODE.w / 2},${40 + NODE.h} C${30 + NODE.w / 2},${low} ${30 + NODE.w / 2 + 30},${low} ${30 + NODE.w / 2 + 30},${40 + NODE.h}`);
});

test('edges naming an unknown service are left out', () => {
  assert.equal(layout(graph(['a'], 'a>ghost')).edges.length, 0);
});

test('wide names widen the boxes and the columns', () => {
  const lay = layout(graph(['a', 'b'], 'a>b'), { nodeW: 300 });
  assert.equal(lay.nodeW, 300);
  assert.equal(lay.pos.get('b')?.x, 30 + 300 + NODE.colGap - NODE.w);
  assert.equal(layout(graph(['a', 'b'], 'a>b'), { nodeW: 20 }).nodeW, NODE.w);
});

/** A pseudo-random generator (LCG), so a failure can be replayed. @param {number} seed */
function lcg(seed) {
  let x = seed;
  return () => (x = (Math.imul(x, 1664525) + 1013904223) >>> 0) / 2 ** 32;
}

/** `n` services and `m` random calls between them. @param {number} n @param {number} m @param {number} seed */
function randomGraph(n, m, seed) {
  const r = lcg(seed);
  const names = Array.from({ length: n }, (_, i) => `s${i}`);
  const calls = new Set();
  while (calls.size < m) calls.add(`${names[Math.floor(r() * n)]}>${names[Math.floor(r() * n)]}`);
  return graph(names, [...calls].join(' '));
}

/** @param {number} n @param {string} from @param {(i: number) => string} to */
const fan = (n, from, to) => Array.from({ length: n }, (_, i) => `${from.replace('#', String(i))}>${to(i)}`).join(' ');

const DENSE = {
  'the demo': graph(['frontend', 'backend', 'inventory', 'payments', 'db', 'gateway', 'store', 'w0', 'w1', 'w2', 'w3', 'w4'],
    'frontend>backend frontend>inventory frontend>payments payments>db gateway>w0 gateway>w1 gateway>w2 gateway>w3 gateway>w4 ' +
    'w0>store w1>store w2>store w3>store w4>store'),
  'every caller calls every callee (6 × 6)': graph(
    [...'abcdef'].map((c) => `c${c}`).concat([...'abcdef'].map((c) => `d${c}`)),
    [...'abcdef'].flatMap((p) => [...'abcdef'].map((c) => `c${p}>d${c}`)).join(' ')),
  'fan-out and fan-in of 15': graph(['hub', 'sink', ...Array.from({ length: 15 }, (_, i) => `leaf${i}`)],
    `${fan(15, 'hub', (i) => `leaf${i}`)} ${fan(15, 'leaf#', () => 'sink')}`),
  'a chain with calls back and self-calls': graph(['a', 'b', 'c', 'd', 'e'], 'a>b b>c c>d d>e e>a d>b c>a a>a c>c e>e b>d'),
  'random, 14 services and 45 calls': randomGraph(14, 45, 7),
  'random, 25 services and 90 calls': randomGraph(25, 90, 11),
};

/**
 * Whether two rectangles share any area (written here, not taken from the
 * module under test).
 * @param {import('../graph/layout.js').Box} a @param {import('../graph/layout.js').Box} b
 */
const intersects = (a, b) => Math.min(a.x + a.w, b.x + b.w) > Math.max(a.x, b.x) &&
  Math.min(a.y + a.h, b.y + b.h) > Math.max(a.y, b.y);

/**
 * No label of `lay` intersects a service box or another label, and every
 * label lies in the drawing. @param {import('../graph/layout.js').Layout} lay @param {string} name
 */
function assertLabelsClear(lay, name) {
  const nodes = [...lay.pos.values()].map((p) => ({ x: p.x, y: p.y, w: lay.nodeW, h: NODE.h }));
  lay.edges.forEach((e, i) => {
    const what = `${name}: ${e.edge.parent}>${e.edge.child} ${JSON.stringify(e.label)}`;
    assert.ok(e.label.w > 0 && e.label.h > 0, `${what} is empty`);
    for (const n of nodes) assert.ok(!intersects(e.label, n), `${what} overlaps the box at ${JSON.stringify(n)}`);
    for (const o of lay.edges.slice(i + 1)) assert.ok(!intersects(e.label, o.label), `${what} overlaps ${o.edge.parent}>${o.edge.child}`);
    assert.ok(e.label.x >= 0 && e.label.y >= 0 && e.label.x + e.label.w <= lay.width && e.label.y + e.label.h <= lay.height, `${what} is off the drawing`);
    assert.equal(e.leader, !contains(e.label, e.anchor), what);
  });
}

test('no label overlaps a service box or another label, in dense graphs', () => {
  for (const [name, g] of Object.entries(DENSE)) {
    for (const busy of [false, true]) {
      // Busy: large counts and a p95 make every label wider.
      const gg = busy ? { ...g, edges: g.edges.map((e) => ({ ...e, callCount: 123456, latency: { p95Us: 1234567 } })) } : g;
      const lay = layout(gg);
      assert.equal(lay.edges.length, g.edges.length, name);
      assertLabelsClear(lay, `${name}${busy ? ' (busy)' : ''}`);
    }
  }
});

test('no label overlaps a service box or another label, over 500 random layouts', () => {
  let placed = 0;
  for (let seed = 1; seed <= 500; seed++) {
    const r = lcg(seed * 7919);
    const n = 2 + Math.floor(r() * 23);
    const m = 1 + Math.floor(r() * Math.min(n * n - 1, 3 * n));
    const g = randomGraph(n, m, seed);
    for (const e of g.edges) {
      e.callCount = Math.floor(10 ** (r() * 7));
      e.errorRate = r() < 0.3 ? r() : 0;
      e.latency = { p95Us: Math.floor(10 ** (r() * 8)) };
    }
    // Widths as a browser might measure them: anywhere from narrower to
    // wider than the estimate; names from the narrowest box to 2.5 times it.
    const scale = 0.6 + r() * 0.9;
    const nodeW = NODE.w * (1 + r() * 1.5);
    const lay = layout(g, { textWidth: (t) => estimateWidth(t) * scale, nodeW });
    assert.equal(lay.edges.length, g.edges.length, `seed ${seed}`);
    assertLabelsClear(lay, `seed ${seed} (${n} services, ${m} calls)`);
    placed += lay.edges.length;
  }
  assert.ok(placed > 5000, `only ${placed} labels placed`);
});

test('most labels stay on their edge, and the rest close to it', () => {
  const lay = layout(DENSE['the demo']);
  assert.ok(lay.edges.every((e) => !e.leader), JSON.stringify(lay.edges.filter((e) => e.leader).map((e) => e.edge)));
  const dense = layout(DENSE['every caller calls every callee (6 × 6)']);
  const off = dense.edges.filter((e) => e.leader);
  for (const e of off) {
    const dx = Math.max(e.label.x - e.anchor.x, 0, e.anchor.x - (e.label.x + e.label.w));
    const dy = Math.max(e.label.y - e.anchor.y, 0, e.anchor.y - (e.label.y + e.label.h));
    assert.ok(Math.hypot(dx, dy) <= 2 * NODE.rowGap, JSON.stringify(e));
  }
});

test('a label with no room near its edge goes below the drawing, which grows', () => {
  const g = graph(['a', 'b', 'c'], 'a>b a>c');
  const plain = layout(g);
  const lay = layout(g, { textWidth: (t) => (t ? 2000 : 0) });
  assert.ok(lay.height > plain.height && lay.width >= 2000, `${lay.width} × ${lay.height}`);
  const [x, y] = lay.edges.map((e) => e.label);
  assert.ok(!intersects(x, y) && x.y >= plain.height && y.y >= plain.height, JSON.stringify([x, y]));
});
