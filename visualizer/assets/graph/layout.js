// @ts-check
// Layout of the dependency graph (pure): services in columns by their
// longest call path from a caller, edges as cubic Béziers, and each edge's
// label at the point along its edge nearest its preferred spot where the
// label's box overlaps no service box and no other label.

import { fmtDur, pct } from '../format.js';

/** @typedef {import('../api.js').Dependencies} Dependencies */
/** @typedef {import('../api.js').Edge} Edge */

/** Node box size (the width is the least; names widen it) and column/row pitch, in SVG units. */
export const NODE = { w: 170, h: 46, colGap: 360, rowGap: 120 };
/** Space between node columns beyond the node width. */
const COLUMN_SPACE = NODE.colGap - NODE.w;
/** Edge label box: height, horizontal padding around the text, clearance kept from boxes. */
export const LABEL = { h: 16, pad: 5, clear: 3 };

/**
 * @typedef {{ x: number, y: number }} Point
 * @typedef {{ x: number, y: number, w: number, h: number }} Box
 * @typedef {{ edge: Edge, d: string, text: string, label: Box, anchor: Point, leader: boolean }} EdgePath
 *   `label`: the label's box; `anchor`: the point of the edge it belongs to; `leader`: the box is off
 *   the edge, so draw a line from it to `anchor`
 * @typedef {{ width: number, height: number, nodeW: number, pos: Map<string, Point>,
 *   edges: EdgePath[] }} Layout
 * @typedef {{ textWidth?: (text: string) => number, nodeW?: number }} LayoutOptions
 *   `textWidth`: an edge label's text width (the page measures it; by default an
 *   overestimate from its length); `nodeW`: the node box width (at least NODE.w)
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
 * @param {number} [nodeW] the box width
 */
export function positions(depth, nodeW = NODE.w) {
  const colGap = nodeW + COLUMN_SPACE;
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
    list.forEach((n, i) => pos.set(n, { x: 30 + d * colGap, y: 40 + i * NODE.rowGap }));
  }
  const width = 60 + (Math.max(0, ...cols.keys()) + 1) * colGap;
  return { pos, width, height: 60 + maxRows * NODE.rowGap };
}

/** An edge's label: calls, error rate and p95 (when known). @param {Edge} e */
export function edgeLabel(e) {
  const calls = `${e.callCount} call${e.callCount === 1 ? '' : 's'}`;
  return `${calls} · ${pct(e.errorRate)} err` + (e.latency && e.latency.p95Us ? ` · p95 ${fmtDur(e.latency.p95Us)}` : '');
}

/**
 * An overestimate of a label's width at the page's 11px font, for when
 * nothing can measure it.
 * @param {string} text
 */
export const estimateWidth = (text) => text.length * 7.2;

/** @param {Box} a @param {Box} b */
export const overlaps = (a, b) => a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h;

/** @param {Box} b @param {number} m */
const grow = (b, m) => ({ x: b.x - m, y: b.y - m, w: b.w + 2 * m, h: b.h + 2 * m });

/**
 * A cubic Bézier: its path, a point at `t` and the unit normal there.
 * @param {Point[]} c the four control points
 */
function bezier(c) {
  /** @param {number} t @param {'x' | 'y'} k */
  const at = (t, k) => (1 - t) ** 3 * c[0][k] + 3 * (1 - t) ** 2 * t * c[1][k] + 3 * (1 - t) * t * t * c[2][k] + t ** 3 * c[3][k];
  /** @param {number} t @param {'x' | 'y'} k */
  const slope = (t, k) => 3 * (1 - t) ** 2 * (c[1][k] - c[0][k]) + 6 * (1 - t) * t * (c[2][k] - c[1][k]) + 3 * t * t * (c[3][k] - c[2][k]);
  return {
    d: `M${c[0].x},${c[0].y} C${c[1].x},${c[1].y} ${c[2].x},${c[2].y} ${c[3].x},${c[3].y}`,
    /** @param {number} t */
    point: (t) => {
      const dx = slope(t, 'x');
      const dy = slope(t, 'y');
      const n = Math.hypot(dx, dy) || 1;
      return { x: at(t, 'x'), y: at(t, 'y'), nx: -dy / n, ny: dx / n };
    },
  };
}

/**
 * A call to a later column runs from the caller's right side to the
 * callee's left side; a call back to an earlier column (or to itself)
 * loops below the boxes.
 * @param {Point} a @param {Point} b @param {number} w the box width
 */
function curve(a, b, w) {
  if (b.x > a.x) {
    const y1 = a.y + NODE.h / 2;
    const y2 = b.y + NODE.h / 2;
    return bezier([{ x: a.x + w, y: y1 }, { x: a.x + w + 60, y: y1 }, { x: b.x - 60, y: y2 }, { x: b.x, y: y2 }]);
  }
  const x1 = a.x + w / 2;
  const x2 = b.x + w / 2 + (a === b ? 30 : 0);
  const y1 = a.y + NODE.h;
  const y2 = b.y + NODE.h;
  const low = Math.max(y1, y2) + 50;
  return bezier([{ x: x1, y: y1 }, { x: x1, y: low }, { x: x2, y: low }, { x: x2, y: y2 }]);
}

/**
 * Where along an edge its label would best sit: near the callee when it
 * has one caller, near the caller when that makes one call, else midway.
 * @param {Edge[]} edges
 * @returns {(e: Edge) => number}
 */
function preferredAt(edges) {
  const indeg = new Map();
  const outdeg = new Map();
  for (const e of edges) {
    indeg.set(e.child, (indeg.get(e.child) || 0) + 1);
    outdeg.set(e.parent, (outdeg.get(e.parent) || 0) + 1);
  }
  return (e) => (e.parent === e.child ? 0.5 : indeg.get(e.child) === 1 ? 0.7 : outdeg.get(e.parent) === 1 ? 0.3 : 0.5);
}

/** Positions along an edge, the preferred one first, then outwards. @param {number} t0 */
function stations(t0) {
  const out = [];
  for (let k = 0; k <= 14; k++) {
    for (const t of k ? [t0 - k * 0.05, t0 + k * 0.05] : [t0]) if (t >= 0.12 && t <= 0.88) out.push(t);
  }
  return out;
}

/** How far off its edge a label may move, in steps of OFF_STEP. */
const OFF_STEP = 6;
const OFF_MAX = 2 * NODE.rowGap;

/**
 * A free box of `w` × `h` for a label of the curve: on the curve if it can
 * be, else as near to it as it can be, off to either side along the normal.
 * @param {ReturnType<typeof bezier>} c @param {number} t0 @param {number} w @param {number} h
 * @param {(b: Box) => boolean} free
 * @returns {{ label: Box, anchor: Point } | null}
 */
function placeOnCurve(c, t0, w, h, free) {
  const points = stations(t0).map(c.point);
  for (let off = 0; off <= OFF_MAX; off += OFF_STEP) {
    for (const p of points) {
      for (const side of off ? [-1, 1] : [0]) {
        const label = { x: p.x + side * off * p.nx - w / 2, y: p.y + side * off * p.ny - h / 2, w, h };
        if (free(label)) return { label, anchor: { x: p.x, y: p.y } };
      }
    }
  }
  return null;
}

/**
 * The whole graph's geometry; edges between unknown services are left out.
 * Labels never overlap a service box or each other; one with no room near
 * its edge goes below the drawing, which grows to hold it.
 * @param {Dependencies} g
 * @param {LayoutOptions} [opts]
 * @returns {Layout}
 */
export function layout(g, opts = {}) {
  const nodeW = Math.max(NODE.w, opts.nodeW || 0);
  const textWidth = opts.textWidth || estimateWidth;
  const { pos, width, height } = positions(columns(g.services.map((s) => s.service), g.edges), nodeW);
  /** @type {Box[]} */
  const taken = [...pos.values()].map((p) => grow({ x: p.x, y: p.y, w: nodeW, h: NODE.h }, LABEL.clear));
  const at = preferredAt(g.edges);
  let bottom = height;
  let right = width;
  /** @type {EdgePath[]} */
  const edges = [];
  for (const e of g.edges) {
    const a = pos.get(e.parent);
    const b = pos.get(e.child);
    if (!a || !b) continue;
    const c = curve(a, b, nodeW);
    const text = edgeLabel(e);
    const w = Math.ceil(textWidth(text)) + 2 * LABEL.pad;
    /** @param {Box} box */
    const free = (box) => box.x >= 2 && box.y >= 2 && box.x + box.w <= width - 2 && box.y + box.h <= height - 2 &&
      !taken.some((o) => overlaps(o, box));
    const spot = placeOnCurve(c, at(e), w, LABEL.h, free) || below(c.point(0.5), w, taken, width, height);
    taken.push(grow(spot.label, LABEL.clear));
    bottom = Math.max(bottom, spot.label.y + spot.label.h + 8);
    right = Math.max(right, spot.label.x + w + 2);
    const leader = !(spot.anchor.x >= spot.label.x && spot.anchor.x <= spot.label.x + w &&
      spot.anchor.y >= spot.label.y && spot.anchor.y <= spot.label.y + LABEL.h);
    edges.push({ edge: e, d: c.d, text, ...spot, leader });
  }
  return { width: right, height: bottom, nodeW, pos, edges };
}

/**
 * The last resort: a row below the drawing, under the edge's middle, clear
 * of the labels already there.
 * @param {Point} anchor @param {number} w @param {Box[]} taken
 * @param {number} width @param {number} height
 * @returns {{ label: Box, anchor: Point }}
 */
function below(anchor, w, taken, width, height) {
  const x = Math.max(2, Math.min(anchor.x - w / 2, width - w - 2));
  for (let y = height; ; y += LABEL.h + 2 * LABEL.clear) {
    const label = { x, y, w, h: LABEL.h };
    if (!taken.some((o) => overlaps(o, label))) return { label, anchor: { x: anchor.x, y: anchor.y } };
  }
}
