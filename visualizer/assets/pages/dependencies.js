// @ts-check
// The service dependency graph and its table of per-edge figures.

import * as api from '../api.js';
import { el, link, sv } from '../dom.js';
import { fmtDur, pct } from '../format.js';
import { NODE, edgeLabel, estimateWidth, layout } from '../graph/layout.js';
import { windowNamed, windowSelect, WINDOWS } from '../windows.js';

/** @typedef {import('../router.js').Context} Context */
/** @typedef {import('../api.js').Dependencies} Dependencies */
/** @typedef {import('../api.js').Edge} Edge */
/** @typedef {import('../api.js').GraphService} GraphService */
/** @typedef {import('../graph/layout.js').EdgePath} EdgePath */
/** @typedef {import('../colors.js').ColorOf} ColorOf */

/** @param {Context} ctx */
export async function depsPage(ctx) {
  const win = windowNamed(ctx.query.get('lookback'), WINDOWS[2]);
  ctx.main.append(el('div', { class: 'toolbar' }, el('h2', { text: 'Service dependencies' }),
    windowSelect(win[0], (v) => ctx.navigate(`/dependencies?lookback=${v}`), 'deps-window')));
  const loading = el('div', { class: 'loading', text: 'Loading…' });
  ctx.main.append(loading);
  const [g, color] = await Promise.all([api.dependencies(win[1]), ctx.session.colors()]);
  if (ctx.stale()) return;
  loading.remove();
  if (!g.edges.length) {
    ctx.main.append(el('div', { class: 'panel note', id: 'no-deps', text: `No calls between services in the last ${win[0]}.` }));
    return;
  }
  ctx.main.append(depGraph(g, (s) => ctx.navigate(`/services/${encodeURIComponent(s)}`), color));
  ctx.main.append(el('div', { class: 'panel' }, depsTable(g)));
}

/** @param {Dependencies} g */
function depsTable(g) {
  const cols = ['Caller', 'Callee', 'Calls', 'Errors', 'Error rate', 'p50', 'p95', 'p99'];
  /** @param {string} s */
  const svc = (s) => el('td', {}, link(`/services/${encodeURIComponent(s)}`, s));
  /** @param {string | number} text */
  const num = (text) => el('td', { class: 'num', text });
  /** @param {Edge} e @param {number} us */
  const lat = (e, us) => num(e.callCount ? fmtDur(us) : '–');
  return el('table', { class: 'grid', id: 'deps-table' },
    el('tr', {}, cols.map((x, i) => el('th', { class: i > 1 ? 'num' : null, text: x }))),
    g.edges.map((e) => el('tr', { data: { edge: `${e.parent}>${e.child}` } },
      svc(e.parent), svc(e.child), num(e.callCount), num(e.errorCount), num(pct(e.errorRate)),
      lat(e, e.latency.p50Us), lat(e, e.latency.p95Us), lat(e, e.latency.p99Us))));
}

/**
 * The graph as SVG; clicking a service opens its dashboard. Label and
 * name widths are measured first, so the layout keeps every label off
 * every box.
 * @param {Dependencies} g @param {(service: string) => void} open @param {ColorOf} color
 */
function depGraph(g, open, color) {
  const lay = layout(g, measure(g));
  const svgEl = sv('svg', {
    class: 'depgraph', id: 'depgraph', viewBox: `0 0 ${lay.width} ${lay.height}`,
    style: { height: `${Math.min(lay.height, 700)}px` },
  },
  sv('defs', {}, sv('marker', { id: 'arrow', viewBox: '0 0 10 10', refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse' },
    sv('path', { d: 'M0,0 L10,5 L0,10 z', fill: '#7a8699' }))));
  for (const p of lay.edges) {
    const e = p.edge;
    svgEl.append(sv('g', { class: e.errorRate > 0.05 ? 'edge bad' : 'edge', data: { edge: `${e.parent}>${e.child}` } },
      sv('path', { d: p.d, 'marker-end': 'url(#arrow)' }),
      p.leader ? leaderLine(p) : null,
      sv('title', { text: edgeTitle(e) })));
  }
  for (const s of g.services) {
    const p = lay.pos.get(s.service);
    if (p) svgEl.append(serviceNode(s, p, lay.nodeW, open, color));
  }
  // Labels go on top of everything, each on its own background.
  svgEl.append(sv('g', { class: 'labels' }, lay.edges.map(edgeTag)));
  return svgEl;
}

/** @param {EdgePath} p */
function edgeTag(p) {
  const { x, y, w, h } = p.label;
  const edge = `${p.edge.parent}>${p.edge.child}`;
  return sv('g', { class: 'edge-tag', data: { edge } },
    sv('rect', { x, y, width: w, height: h, rx: 3 }),
    sv('text', {
      class: 'edge-label', x: x + w / 2, y: y + h / 2, 'text-anchor': 'middle', 'dominant-baseline': 'central', data: { edge }, text: p.text,
    }));
}

/** From the label's box to the point of its edge. @param {EdgePath} p */
function leaderLine(p) {
  const { x, y, w, h } = p.label;
  const a = p.anchor;
  return sv('line', { class: 'leader', x1: a.x, y1: a.y, x2: Math.max(x, Math.min(a.x, x + w)), y2: Math.max(y, Math.min(a.y, y + h)) });
}

/**
 * Text widths as the graph draws them, measured in a hidden drawing with
 * the graph's classes: every edge label, and the widest node text.
 * @param {Dependencies} g
 * @returns {import('../graph/layout.js').LayoutOptions}
 */
function measure(g) {
  const labels = g.edges.map((e) => sv('text', { class: 'edge-label', text: edgeLabel(e) }));
  const nodes = g.services.map((s) => sv('g', { class: 'node' }, sv('text', { text: s.service }), sv('text', { class: 'sub', text: nodeSub(s) })));
  const probe = sv('svg', { class: 'depgraph probe', 'aria-hidden': 'true' }, labels, nodes);
  document.body.append(probe);
  /** @param {SVGElement} t */
  const width = (t) => Math.max(/** @type {SVGTextElement} */ (t).getComputedTextLength(), /** @type {SVGTextElement} */ (t).getBBox().width);
  const widths = new Map(labels.map((t, i) => [edgeLabel(g.edges[i]), width(t)]));
  const widest = Math.max(0, ...nodes.flatMap((n) => [...n.querySelectorAll('text')].map((t) => width(/** @type {SVGElement} */ (t)))));
  probe.remove();
  return { textWidth: (text) => widths.get(text) ?? estimateWidth(text), nodeW: Math.ceil(widest) + 26 };
}

/** @param {Edge} e */
function edgeTitle(e) {
  const l = e.latency;
  return `${e.parent} → ${e.child}\n${e.callCount} calls, ${e.errorCount} errors\n` +
    `p50 ${fmtDur(l.p50Us)} · p95 ${fmtDur(l.p95Us)} · p99 ${fmtDur(l.p99Us)}`;
}

/** @param {GraphService} s */
const nodeSub = (s) => `${s.spans} spans${s.errors ? ` · ${s.errors} errors` : ''}`;

/**
 * @param {GraphService} s @param {{ x: number, y: number }} p @param {number} w the box width
 * @param {(service: string) => void} open @param {ColorOf} color
 */
function serviceNode(s, p, w, open, color) {
  return sv('g', { class: 'node', data: { service: s.service }, transform: `translate(${p.x},${p.y})`, onclick: () => open(s.service) },
    sv('rect', { width: w, height: NODE.h, rx: 6 }),
    sv('rect', { class: 'stripe', width: 6, height: NODE.h, vars: { '--c': color(s.service) } }),
    sv('text', { x: 14, y: 19, text: s.service }),
    sv('text', { x: 14, y: 36, class: 'sub', text: nodeSub(s) }));
}
