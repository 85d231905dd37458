// @ts-check
// The service dependency graph and its table of per-edge figures.

import * as api from '../api.js';
import { el, link, sv } from '../dom.js';
import { colorOf, fmtDur, pct } from '../format.js';
import { NODE, layout } from '../graph/layout.js';
import { windowNamed, windowSelect, WINDOWS } from '../windows.js';

/** @typedef {import('../router.js').Context} Context */
/** @typedef {import('../api.js').Dependencies} Dependencies */
/** @typedef {import('../api.js').Edge} Edge */

/** @param {Context} ctx */
export async function depsPage(ctx) {
  const win = windowNamed(ctx.query.get('lookback'), WINDOWS[2]);
  ctx.main.append(el('div', { class: 'toolbar' }, el('h2', { text: 'Service dependencies' }),
    windowSelect(win[0], (v) => ctx.navigate(`/dependencies?lookback=${v}`), 'deps-window')));
  const loading = el('div', { class: 'loading', text: 'Loading…' });
  ctx.main.append(loading);
  const g = await api.dependencies(win[1]);
  if (ctx.stale()) return;
  loading.remove();
  if (!g.edges.length) {
    ctx.main.append(el('div', { class: 'panel note', id: 'no-deps', text: `No calls between services in the last ${win[0]}.` }));
    return;
  }
  ctx.main.append(depGraph(g, (s) => ctx.navigate(`/services/${encodeURIComponent(s)}`)));
  if (g.truncated) {
    const text = `Percentiles from the ${g.traces} most recent traces of the window; call and error counts are exact.`;
    ctx.main.append(el('p', { class: 'note', text }));
  }
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
  const lat = (e, us) => num(e.latencySamples ? fmtDur(us) : '–');
  return el('table', { class: 'grid', id: 'deps-table' },
    el('tr', {}, cols.map((x, i) => el('th', { class: i > 1 ? 'num' : null, text: x }))),
    g.edges.map((e) => el('tr', { data: { edge: `${e.parent}>${e.child}` } },
      svc(e.parent), svc(e.child), num(e.callCount), num(e.errorCount), num(pct(e.errorRate)),
      lat(e, e.latency.p50Us), lat(e, e.latency.p95Us), lat(e, e.latency.p99Us))));
}

/**
 * The graph as SVG; clicking a service opens its dashboard.
 * @param {Dependencies} g @param {(service: string) => void} open
 */
function depGraph(g, open) {
  const lay = layout(g);
  const svgEl = sv('svg', {
    class: 'depgraph', id: 'depgraph', viewBox: `0 0 ${lay.width} ${lay.height}`,
    style: { height: `${Math.min(lay.height, 700)}px` },
  },
  sv('defs', {}, sv('marker', { id: 'arrow', viewBox: '0 0 10 10', refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse' },
    sv('path', { d: 'M0,0 L10,5 L0,10 z', fill: '#7a8699' }))));
  const labels = [];
  for (const { edge: e, d, label } of lay.edges) {
    const key = `${e.parent}>${e.child}`;
    // Labels go on top of the boxes, so none is hidden behind one.
    labels.push(sv('text', { class: 'edge-label', x: label.x, y: label.y, 'text-anchor': 'middle', data: { edge: key }, text: edgeLabel(e) }));
    svgEl.append(sv('g', { class: e.errorRate > 0.05 ? 'edge bad' : 'edge', data: { edge: key } },
      sv('path', { d, 'marker-end': 'url(#arrow)' }),
      sv('title', { text: edgeTitle(e) })));
  }
  for (const s of g.services) {
    const p = lay.pos.get(s.service);
    if (p) svgEl.append(serviceNode(s, p, open));
  }
  svgEl.append(sv('g', { class: 'labels' }, labels));
  return svgEl;
}

/** @param {Edge} e */
function edgeLabel(e) {
  const calls = `${e.callCount} call${e.callCount === 1 ? '' : 's'}`;
  return `${calls} · ${pct(e.errorRate)} err` + (e.latencySamples ? ` · p95 ${fmtDur(e.latency.p95Us)}` : '');
}

/** @param {Edge} e */
function edgeTitle(e) {
  const l = e.latency;
  return `${e.parent} → ${e.child}\n${e.callCount} calls, ${e.errorCount} errors\n` +
    `p50 ${fmtDur(l.p50Us)} · p95 ${fmtDur(l.p95Us)} · p99 ${fmtDur(l.p99Us)}`;
}

/**
 * @param {import('../api.js').GraphService} s @param {{ x: number, y: number }} p
 * @param {(service: string) => void} open
 */
function serviceNode(s, p, open) {
  return sv('g', { class: 'node', data: { service: s.service }, transform: `translate(${p.x},${p.y})`, onclick: () => open(s.service) },
    sv('rect', { width: NODE.w, height: NODE.h, rx: 6 }),
    sv('rect', { width: 5, height: NODE.h, fill: colorOf(s.service), stroke: 'none' }),
    sv('text', { x: 14, y: 19, text: s.service }),
    sv('text', { x: 14, y: 36, class: 'sub', text: `${s.spans} spans${s.errors ? ` · ${s.errors} errors` : ''}` }));
}
