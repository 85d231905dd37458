// @ts-check
// Anomalies of a window, and where the slowest recent traces spent their
// time (critical path and self time).

import * as api from '../api.js';
import { el, link, showError } from '../dom.js';
import { fmtDur, pct } from '../format.js';
import { summarize } from '../trace/model.js';
import { windowNamed, windowSelect, WINDOWS } from '../windows.js';
import { anomalyViews } from './anomalies.js';

/** @typedef {import('../router.js').Context} Context */
/** @typedef {import('../api.js').Analysis} Analysis */
/** @typedef {import('../trace/model.js').Summary} Summary */
/** @typedef {import('../colors.js').ColorOf} ColorOf */

/** @param {Context} ctx */
export async function insightsPage(ctx) {
  const win = windowNamed(ctx.query.get('lookback'), WINDOWS[0]);
  const service = ctx.query.get('service') || '';
  /** @param {string} lookback @param {string} svc */
  const go = (lookback, svc) => ctx.navigate(`/insights?lookback=${lookback}${svc ? `&service=${encodeURIComponent(svc)}` : ''}`);
  const pick = /** @type {HTMLSelectElement} */ (el('select', { id: 'insights-service' }, el('option', { value: '', text: '(every service)' })));
  pick.addEventListener('change', () => go(win[0], pick.value));
  ctx.main.append(el('div', { class: 'toolbar' }, el('h2', { text: 'Anomalies and bottlenecks' }), pick,
    windowSelect(win[0], (v) => go(v, service), 'insights-window')));
  api.services().then((list) => {
    for (const s of list) pick.append(el('option', { value: s, text: s }));
    pick.value = service;
  }).catch(showError);
  const anomBox = box('anomalies', 'Anomalies');
  const botBox = box('bottlenecks', 'Bottlenecks of the slowest recent traces');
  ctx.main.append(anomBox, botBox);
  const [anom, traces, color] = await Promise.all([
    api.settle(api.anomalies(win[1], service)),
    api.settle(api.recentTraces(win[1], service)),
    ctx.session.colors(),
  ]);
  if (ctx.stale()) return;
  done(anomBox, 'error' in anom ? [warn(anom.error)] : anomalyViews(anom, win[0], color));
  if ('error' in traces) return done(botBox, [warn(traces.error)]);
  await bottlenecks(botBox, traces.map(summarize), ctx, color);
}

/** @param {string} id @param {string} title */
const box = (id, title) => el('div', { class: 'panel', id }, el('h3', { text: title }), el('div', { class: 'loading', text: 'Analysing…' }));

/** @param {Error} e */
const warn = (e) => el('div', { class: 'warning', text: e.message });

/** Replaces the box's loading line with `nodes`. @param {HTMLElement} b @param {HTMLElement[]} nodes */
function done(b, nodes) {
  const l = b.querySelector('.loading');
  if (l) l.remove();
  b.append(...nodes);
}

/**
 * The five slowest traces, each with its analysis's breakdown.
 * @param {HTMLElement} botBox @param {Summary[]} summaries @param {Context} ctx @param {ColorOf} color
 */
async function bottlenecks(botBox, summaries, ctx, color) {
  const slow = summaries.sort((a, b) => b.duration - a.duration).slice(0, 5);
  done(botBox, slow.length ? [] : [el('p', { class: 'note', text: 'No traces in this window.' })]);
  if (!slow.length) return;
  const analyses = await Promise.all(slow.map((t) => api.settle(api.analysis(t.id))));
  if (ctx.stale()) return;
  botBox.append(...slow.map((t, i) => bottleneck(t, analyses[i], color)));
}

/** @param {Summary} t @param {Analysis | { error: Error }} a @param {ColorOf} color */
function bottleneck(t, a, color) {
  const out = el('div', { class: 'anomaly bottleneck' }, link(`/trace/${t.id}`, `${t.rootService}: ${t.rootOp}`),
    ` — ${fmtDur(t.duration)}, ${t.spans} spans`);
  if ('error' in a) {
    out.append(warn(a.error));
    return out;
  }
  const b = a.bottlenecks;
  out.append(el('div', { class: 'summary-bars' }, b.services.filter((s) => s.criticalShare > 0).map((s) =>
    el('div', {
      vars: { '--c': color(s.service) }, data: { service: s.service }, style: { width: `${s.criticalShare * 100}%` },
      title: `${s.service} ${pct(s.criticalShare)}`,
    }))));
  const ops = b.operations.slice().sort((x, y) => y.criticalUs - x.criticalUs).slice(0, 3);
  out.append(el('div', { class: 'note' }, 'Most critical-path time: ',
    ops.map((o, k) => [k ? '; ' : '', `${o.service} "${o.operation}" ${fmtDur(o.criticalUs)} (${pct(o.criticalShare)})`])));
  out.append(el('div', { class: 'note self-time-top' }, 'Most self time: ',
    b.operations.slice(0, 3).map((o, k) => [k ? '; ' : '', `${o.service} "${o.operation}" ${fmtDur(o.selfUs)} (${pct(o.share)})`])));
  if (a.causal && !a.causal.consistent) out.append(el('div', { class: 'warning', text: a.causal.explanation }));
  return out;
}
