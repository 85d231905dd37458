// @ts-check
// The service dashboard: rate, errors and duration (RED) per service and
// per operation over a window.

import * as api from '../api.js';
import { lineChart } from '../charts.js';
import { el, link } from '../dom.js';
import { fmtDur, pct } from '../format.js';
import { windowNamed, windowSelect, WINDOWS } from '../windows.js';

/** @typedef {import('../router.js').Context} Context */
/** @typedef {import('../api.js').Red} Red */
/** @typedef {import('../api.js').RedSeries} RedSeries */

/** @param {Context} ctx */
export async function servicesPage(ctx) {
  const service = ctx.match[1] ? decodeURIComponent(ctx.match[1]) : null;
  const win = windowNamed(ctx.query.get('lookback'), WINDOWS[0]);
  const [services, color] = await Promise.all([api.services(), ctx.session.colors()]);
  if (ctx.stale()) return;
  const pick = /** @type {HTMLSelectElement} */ (el('select', { id: 'svc-select' },
    el('option', { value: '', text: '(choose a service)' }), services.map((s) => el('option', { value: s, text: s }))));
  pick.value = service || '';
  pick.addEventListener('change', () => pick.value && ctx.navigate(`/services/${encodeURIComponent(pick.value)}?lookback=${win[0]}`));
  ctx.main.append(el('div', { class: 'toolbar' }, el('h2', { text: 'Service dashboard' }), pick,
    service ? el('span', { class: 'chip', id: 'svc-chip', vars: { '--c': color(service) }, data: { service }, text: service }) : null,
    windowSelect(win[0], (v) => ctx.navigate(`${location.pathname}?lookback=${v}`), 'svc-window')));
  if (!service) {
    ctx.main.append(serviceList(services, color));
    return;
  }
  const stepSec = Math.max(1, Math.round(win[1] / 1000 / 60));
  const red = await api.red(service, win[1], stepSec);
  if (ctx.stale()) return;
  if (!red.series.length) {
    ctx.main.append(el('div', { class: 'panel note', id: 'no-red', text: `${service} served no requests in the last ${win[0]}.` }));
    return;
  }
  for (const s of red.series) ctx.main.append(seriesPanel(service, s));
}

/** @param {string[]} services @param {import('../colors.js').ColorOf} color */
function serviceList(services, color) {
  const text = services.length ? 'Rate, errors and duration (RED) per service and operation:' : 'No services have sent spans yet.';
  return el('div', { class: 'panel' }, el('p', { class: 'note', text }),
    el('ul', { class: 'services', id: 'service-list' }, services.map((s) => el('li', {},
      link(`/services/${encodeURIComponent(s)}`, s, { class: 'svc', vars: { '--c': color(s) }, data: { service: s } })))));
}

/**
 * One series (the service's, `operation` null, or one operation's).
 * @param {string} service @param {RedSeries} s
 */
function seriesPanel(service, s) {
  const title = s.operation === null ? `${service} (all operations)` : s.operation;
  const l = s.latency;
  /** @param {number} v */
  const rate = (v) => v.toFixed(2);
  return el('div', { class: 'panel red-series', data: { operation: s.operation === null ? '' : s.operation } },
    el('h3', { text: title }),
    el('div', { class: 'meta' },
      el('span', { text: `${s.requests} requests` }),
      el('span', { text: `${s.errors} errors (${pct(s.requests ? s.errors / s.requests : 0)})` }),
      el('span', { text: `p50 ${fmtDur(l.p50Us)} · p95 ${fmtDur(l.p95Us)} · p99 ${fmtDur(l.p99Us)}` })),
    el('div', { class: 'charts' },
      lineChart('Rate (requests/s)', s.buckets, [['rate', 'req/s', '#1f6feb', rate]]),
      lineChart('Errors (share of requests)', s.buckets, [['errorRate', 'errors', '#c62828', pct]]),
      lineChart('Duration', s.buckets, [
        ['p50Us', 'p50', '#2e7d32', fmtDur], ['p95Us', 'p95', '#f9a825', fmtDur], ['p99Us', 'p99', '#d84315', fmtDur],
      ])));
}
