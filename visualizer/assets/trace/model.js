// @ts-check
// A trace as the waterfall shows it: spans linked into a tree, positioned in
// time, flattened into rows (pure; no DOM).

import { servicePalette } from '../colors.js';

/** @typedef {import('../api.js').Trace} Trace */
/** @typedef {import('../api.js').Span} RawSpan */
/** @typedef {import('../api.js').Process} Process */
/** @typedef {import('../api.js').Bottlenecks} Bottlenecks */

/**
 * @typedef {{
 *   id: string, parentId: string | null, op: string, service: string, kind: string,
 *   rawStart: number, start: number, dur: number, raw: RawSpan, proc: Process,
 *   error: boolean, children: ViewSpan[], depth: number, color: string,
 * }} ViewSpan `start` is `rawStart` plus the service's clock correction.
 * @typedef {{ spans: ViewSpan[], byId: Map<string, ViewSpan>, roots: ViewSpan[],
 *   services: string[] }} Model
 * @typedef {{ t0: number, t1: number, rawT0: number, total: number }} Bounds
 */

/** @param {RawSpan} span */
export function isError(span) {
  return span.tags.some((t) => t.key === 'error' && (t.value === true || t.value === 'true'));
}

/** The CHILD_OF parent's span ID. @param {RawSpan} span */
export function parentOf(span) {
  const r = (span.references || []).find((x) => x.refType === 'CHILD_OF');
  return r ? r.spanID : null;
}

/**
 * @typedef {{ id: string, start: number, duration: number, spans: number, errors: number,
 *   services: Map<string, number>, rootService: string, rootOp: string }} Summary
 */

/**
 * A trace's one-line summary: its root (the earliest span without a parent
 * in the trace), extent, errors and spans per service.
 * @param {Trace} t
 * @returns {Summary}
 */
export function summarize(t) {
  const ids = new Set(t.spans.map((s) => s.spanID));
  let start = Infinity;
  let end = -Infinity;
  /** @type {RawSpan | null} */
  let root = null;
  let errors = 0;
  const services = new Map();
  for (const s of t.spans) {
    start = Math.min(start, s.startTime);
    end = Math.max(end, s.startTime + s.duration);
    const p = parentOf(s);
    if ((!p || !ids.has(p)) && (!root || s.startTime < root.startTime)) root = s;
    if (isError(s)) errors++;
    const svc = (t.processes[s.processID] || {}).serviceName || '?';
    services.set(svc, (services.get(svc) || 0) + 1);
  }
  return {
    id: t.traceID, start, duration: end - start, spans: t.spans.length, errors, services,
    rootService: root ? (t.processes[root.processID] || {}).serviceName : '?',
    rootOp: root ? root.operationName : '?',
  };
}

/**
 * @param {Trace} t @param {RawSpan} s @param {import('../colors.js').ColorOf} color
 * @returns {ViewSpan}
 */
function viewSpan(t, s, color) {
  const proc = t.processes[s.processID] || { serviceName: '?', tags: [] };
  const kind = (s.tags.find((x) => x.key === 'span.kind') || {}).value || '';
  return {
    id: s.spanID, parentId: parentOf(s), op: s.operationName, service: proc.serviceName,
    rawStart: s.startTime, start: s.startTime, dur: s.duration, raw: s, proc, kind: String(kind),
    error: isError(s), children: [], depth: 0, color: color(proc.serviceName),
  };
}

/**
 * Links the spans into a tree; spans whose parent is missing (or
 * themselves) are roots. Roots and children are sorted by start. Service
 * colours come from `color` (the session's; by default, the trace's own
 * services).
 * @param {Trace} t
 * @param {import('../colors.js').ColorOf} [color]
 * @returns {Model}
 */
export function buildModel(t, color) {
  const byId = new Map();
  const pick = color || servicePalette(Object.values(t.processes).map((p) => p.serviceName));
  const spans = t.spans.map((s) => viewSpan(t, s, pick));
  for (const s of spans) byId.set(s.id, s);
  const roots = [];
  for (const s of spans) {
    const p = s.parentId && byId.get(s.parentId);
    if (p && p !== s) p.children.push(s);
    else roots.push(s);
  }
  /** @param {ViewSpan} a @param {ViewSpan} b */
  const byStart = (a, b) => a.start - b.start;
  roots.sort(byStart);
  for (const s of spans) s.children.sort(byStart);
  return { spans, byId, roots, services: [...new Set(spans.map((s) => s.service))] };
}

/**
 * Sets each span's `start` to its raw start plus its service's offset
 * (none: the recorded times) and returns the trace's extent.
 * @param {ViewSpan[]} spans
 * @param {Map<string, number>} offsets µs per service
 * @returns {Bounds}
 */
export function retime(spans, offsets) {
  // Loops, not Math.min(...spread): a huge trace would overflow the stack.
  let t0 = Infinity;
  let t1 = -Infinity;
  let rawT0 = Infinity;
  for (const s of spans) {
    s.start = s.rawStart + (offsets.get(s.service) || 0);
    t0 = Math.min(t0, s.start);
    t1 = Math.max(t1, s.start + s.dur);
    rawT0 = Math.min(rawT0, s.rawStart);
  }
  if (!spans.length) t0 = t1 = rawT0 = 0;
  return { t0, t1, rawT0, total: Math.max(t1 - t0, 1) };
}

/**
 * The rows of the waterfall: depth-first in start order, children of
 * collapsed spans left out; sets each row's `depth`. A span reached twice
 * (cyclic parent IDs) is shown once.
 * @param {ViewSpan[]} roots
 * @param {Set<string>} collapsed
 * @returns {ViewSpan[]}
 */
export function flatten(roots, collapsed) {
  const rows = [];
  /** @type {[ViewSpan, number][]} */
  const stack = roots.slice().reverse().map((s) => [s, 0]);
  const seen = new Set();
  while (stack.length) {
    const [s, d] = /** @type {[ViewSpan, number]} */ (stack.pop());
    if (seen.has(s)) continue;
    seen.add(s);
    s.depth = d;
    rows.push(s);
    if (!collapsed.has(s.id)) {
      for (let i = s.children.length - 1; i >= 0; i--) stack.push([s.children[i], d + 1]);
    }
  }
  return rows;
}

/** Levels of the span tree (1 for a lone root). @param {ViewSpan[]} roots */
export function maxDepth(roots) {
  let depth = 0;
  /** @type {[ViewSpan[], number][]} */
  const walk = [[roots, 1]];
  while (walk.length) {
    const [list, d] = /** @type {[ViewSpan[], number]} */ (walk.pop());
    for (const s of list) {
      depth = Math.max(depth, d);
      if (s.children.length) walk.push([s.children, d + 1]);
    }
  }
  return depth;
}

/**
 * A span's time not covered by any of its children (clipped to the span).
 * @param {ViewSpan} s
 */
export function selfTime(s) {
  const a = s.start;
  const b = s.start + s.dur;
  const iv = s.children
    .map((c) => [Math.max(a, c.start), Math.min(b, c.start + c.dur)])
    .filter(([x, y]) => y > x)
    .sort((p, q) => p[0] - q[0]);
  let covered = 0;
  /** @type {number[] | null} */
  let cur = null;
  for (const [x, y] of iv) {
    if (cur && x <= cur[1]) cur[1] = Math.max(cur[1], y);
    else {
      if (cur) covered += cur[1] - cur[0];
      cur = [x, y];
    }
  }
  if (cur) covered += cur[1] - cur[0];
  return Math.max(0, s.dur - covered);
}

/**
 * The critical path's sections per span ID, `[startUs, endUs]` relative to
 * the trace start the analysis used.
 * @param {Bottlenecks} b
 * @returns {Map<string, [number, number][]>}
 */
export function criticalSections(b) {
  const out = new Map();
  for (const c of b.criticalPath) {
    if (!out.has(c.spanID)) out.set(c.spanID, []);
    out.get(c.spanID).push([c.startUs, c.endUs]);
  }
  return out;
}

/**
 * Removes `s`'s ancestors from `collapsed` so it is shown; true when any
 * was collapsed. Bounded by the span count against cyclic parent IDs.
 * @param {Model} m @param {ViewSpan} s @param {Set<string>} collapsed
 */
export function expandAncestors(m, s, collapsed) {
  let changed = false;
  let n = 0;
  for (let p = m.byId.get(s.parentId || ''); p && n < m.spans.length; p = m.byId.get(p.parentId || ''), n++) {
    if (collapsed.delete(p.id)) changed = true;
  }
  return changed;
}

/**
 * "Collapse all": adds every span with children to `collapsed`, then
 * leaves the roots open.
 * @param {Model} m @param {Set<string>} collapsed
 */
export function collapseAll(m, collapsed) {
  for (const s of m.spans) if (s.children.length) collapsed.add(s.id);
  for (const r of m.roots) collapsed.delete(r.id);
}
