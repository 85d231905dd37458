// @ts-check
// Layout of the dependency graph (pure): services in columns by their
// longest call path from a caller, edges as cubic Béziers with a label
// placed where it cannot collide.

/** @typedef {import('../api.js').Dependencies} Dependencies */
/** @typedef {import('../api.js').Edge} Edge */

/** Node box size and column/row pitch, in SVG units. */
export const NODE = { w: 170, h: 46, colGap: 360, rowGap: 120 };

/**
 * @typedef {{ x: number, y: number }} Point
 * @typedef {{ edge: Edge, d: string, label: Point }} EdgePath
 * @typedef {{ width: number, height: number, pos: Map<string, Point>,
 *   edges: EdgePath[] }} Layout
 */

/**
 * Each service's column: the longest call path reaching it, bounded by
 * the number of services so a cycle cannot loop; self-calls are ignored.
 * @param {string[]} names
 * @param {{ parent: string, child: string }[]} edges
 * @returns {Map<string, number>}
 */
export function columns(names, edges) {
  const depth = new Map(names.map((n) => [n, 0]));
  for (let k = 0; k < names.length; k++) {
    let moved = false;
    for (const e of edges) {
      if (e.parent === e.child || !depth.has(e.parent) || !depth.has(e.child)) continue;
      const d = (depth.get(e.parent) || 0) + 1;
      if (d > (depth.get(e.child) || 0) && d < names.length) {
        depth.set(e.child, d);
        moved = true;
      }
    }
    if (!moved) break;
  }
  return depth;
}

/**
 * Top-left corner of every service's box: columns left to right, names
 * sorted top to bottom within a column.
 * @param {Map<string, number>} depth
 */
export function positions(depth) {
  /** @type {Map<number, string[]>} */
  const cols = new Map();
  for (const [n, d] of depth) {
    const list = cols.get(d) || [];
    list.push(n);
    cols.set(d, list);
  }
  /** @type {Map<string, Point>} */
  const pos = new Map();
  let maxRows = 1;
  for (const [d, list] of cols) {
    list.sort();
    maxRows = Math.max(maxRows, list.length);
    list.forEach((n, i) => pos.set(n, { x: 30 + d * NODE.colGap, y: 40 + i * NODE.rowGap }));
  }
  const width = 60 + (Math.max(0, ...cols.keys()) + 1) * NODE.colGap;
  return { pos, width, height: 60 + maxRows * NODE.rowGap };
}

/** @param {number} t @param {number} p0 @param {number} p1 @param {number} p2 @param {number} p3 */
const bez = (t, p0, p1, p2, p3) =>
  (1 - t) ** 3 * p0 + 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t * t * p2 + t ** 3 * p3;

/**
 * A call to a later column: right side to left side. The label goes near
 * the callee when it has one caller, near the caller when that makes one
 * call, else midway.
 * @param {Point} a @param {Point} b @param {number} t label position along the curve
 * @returns {{ d: string, label: Point }}
 */
function forward(a, b, t) {
  const x1 = a.x + NODE.w;
  const y1 = a.y + NODE.h / 2;
  const x2 = b.x;
  const y2 = b.y + NODE.h / 2;
  const d = `M${x1},${y1} C${x1 + 60},${y1} ${x2 - 60},${y2} ${x2},${y2}`;
  return { d, label: { x: bez(t, x1, x1 + 60, x2 - 60, x2), y: bez(t, y1, y1, y2, y2) - 6 } };
}

/**
 * A call back to an earlier column (or to itself): a loop below the boxes.
 * @param {Point} a @param {Point} b
 * @returns {{ d: string, label: Point }}
 */
function backward(a, b) {
  const x1 = a.x + NODE.w / 2;
  const y1 = a.y + NODE.h;
  const x2 = b.x + NODE.w / 2 + (a === b ? 30 : 0);
  const y2 = b.y + NODE.h;
  const low = Math.max(y1, y2) + 50;
  return { d: `M${x1},${y1} C${x1},${low} ${x2},${low} ${x2},${y2}`, label: { x: (x1 + x2) / 2, y: low - 8 } };
}

/**
 * @param {Edge[]} edges
 * @returns {(e: Edge) => number}
 */
function labelAt(edges) {
  const indeg = new Map();
  const outdeg = new Map();
  for (const e of edges) {
    indeg.set(e.child, (indeg.get(e.child) || 0) + 1);
    outdeg.set(e.parent, (outdeg.get(e.parent) || 0) + 1);
  }
  return (e) => (indeg.get(e.child) === 1 ? 0.7 : outdeg.get(e.parent) === 1 ? 0.3 : 0.5);
}

/**
 * The whole graph's geometry; edges between unknown services are left out.
 * @param {Dependencies} g
 * @returns {Layout}
 */
export function layout(g) {
  const { pos, width, height } = positions(columns(g.services.map((s) => s.service), g.edges));
  const at = labelAt(g.edges);
  /** @type {EdgePath[]} */
  const edges = [];
  for (const e of g.edges) {
    const a = pos.get(e.parent);
    const b = pos.get(e.child);
    if (!a || !b) continue;
    const path = b.x > a.x ? forward(a, b, at(e)) : backward(a, b);
    edges.push({ edge: e, ...path });
  }
  return { width, height, pos, edges };
}
