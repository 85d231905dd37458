// @ts-check
// Search: the form (reflecting the URL), a duration scatter and the results.

import * as api from '../api.js';
import { scatter } from '../charts.js';
import { el, link, showError } from '../dom.js';
import { fmtDur, fmtTime, plural } from '../format.js';
import { parseTags, toMicros } from '../tags.js';
import { summarize } from '../trace/model.js';

/** @typedef {import('../router.js').Context} Context */
/** @typedef {import('../trace/model.js').Summary} Summary */

const LOOKBACKS = ['5m', '15m', '1h', '6h', '12h', '24h', '48h', '168h'];

/**
 * The collector query for the page's URL (`q`); `lookback` is the form's
 * time range, `start`/`end` its custom range (`datetime-local` values).
 * @param {URLSearchParams} q @param {string} lookback @param {string} start @param {string} end
 */
export function searchQuery(q, lookback, start, end) {
  const p = new URLSearchParams();
  for (const k of ['service', 'operation', 'minDuration', 'maxDuration', 'limit']) {
    const v = q.get(k);
    if (v) p.set(k, v);
  }
  if (!p.has('limit')) p.set('limit', '20');
  const tags = q.get('tags');
  if (tags) p.set('tags', JSON.stringify(parseTags(tags)));
  if (lookback === 'custom') {
    const s = toMicros(start);
    const e = toMicros(end);
    if (s !== null) p.set('start', String(s));
    if (e !== null) p.set('end', String(e));
  } else {
    p.set('lookback', lookback);
  }
  return p;
}

/** @param {Context} ctx */
export async function searchPage(ctx) {
  const f = searchForm(ctx);
  const results = el('div', { id: 'results' });
  ctx.main.append(f.form, results);
  try {
    await fillServices(f, ctx.query);
  } catch (e) {
    showError(e);
  }
  if (ctx.stale()) return;
  // Search at once: the landing page shows the last hour.
  results.append(el('div', { class: 'loading', text: 'Searching…' }));
  const [traces, color] = await Promise.all([
    api.searchTraces(searchQuery(ctx.query, f.lookback.value, f.start.value, f.end.value)), ctx.session.colors()]);
  if (ctx.stale()) return;
  results.replaceChildren(...resultViews(traces.map(summarize).sort((a, b) => b.start - a.start), ctx, color));
}

/** @param {HTMLElement} n */
const asSelect = (n) => /** @type {HTMLSelectElement} */ (n);
/** @param {HTMLElement} n */
const asInput = (n) => /** @type {HTMLInputElement} */ (n);

/**
 * The form, filled from the URL; submitting navigates.
 * @param {Context} ctx
 */
function searchForm(ctx) {
  const c = controls(ctx.query);
  const form = layoutForm(c);
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    ctx.navigate('/search?' + formQuery(form).toString());
  });
  c.service.addEventListener('change', () => loadOperations(c.service, c.operation).catch(showError));
  return { ...c, form };
}

/** @typedef {ReturnType<typeof controls>} Controls */

/** The form's inputs, with the URL's values. @param {URLSearchParams} q */
function controls(q) {
  /** @param {string} name @param {string} id @param {string} placeholder */
  const text = (name, id, placeholder) => asInput(el('input', { name, id, placeholder, value: q.get(name) || '' }));
  /** @param {string} name */
  const when = (name) => asInput(el('input', { type: 'datetime-local', step: 1, name, value: q.get(name) || '' }));
  const c = {
    service: asSelect(el('select', { name: 'service', id: 'f-service' }, el('option', { value: '', text: '(any service)' }))),
    operation: asSelect(el('select', { name: 'operation', id: 'f-operation' })),
    tags: text('tags', 'f-tags', 'http.status_code=500 error=true'),
    minD: text('minDuration', 'f-min', 'e.g. 10ms'),
    maxD: text('maxDuration', 'f-max', 'e.g. 2s'),
    lookback: asSelect(el('select', { name: 'lookback', id: 'f-lookback' },
      LOOKBACKS.map((l) => el('option', { value: l, text: `last ${l}` })),
      el('option', { value: 'custom', text: 'custom range' }))),
    start: when('start'),
    end: when('end'),
    limit: asInput(el('input', { type: 'number', min: 1, max: 1000, name: 'limit', id: 'f-limit', value: q.get('limit') || '20' })),
  };
  resetOperations(c.operation);
  c.lookback.value = q.get('lookback') || '1h';
  return c;
}

/** @param {Controls} c */
function layoutForm(c) {
  /** @param {string} name @param {HTMLElement} input */
  const field = (name, input) => el('label', {}, name, input);
  const custom = [field('From', c.start), field('To', c.end)];
  const showCustom = () => custom.forEach((x) => { x.hidden = c.lookback.value !== 'custom'; });
  c.lookback.addEventListener('change', showCustom);
  showCustom();
  return /** @type {HTMLFormElement} */ (el('form', { class: 'search panel', id: 'search-form' },
    field('Service', c.service), field('Operation', c.operation), field('Tags (key=value …)', c.tags),
    field('Min duration', c.minD), field('Max duration', c.maxD), field('Time range', c.lookback), custom,
    field('Limit', c.limit), el('button', { class: 'primary', type: 'submit', id: 'f-submit', text: 'Find traces' })));
}

/**
 * The page URL's query for the form's values: empty fields left out, and
 * the custom range only with "custom range".
 * @param {HTMLFormElement} form
 */
function formQuery(form) {
  const p = new URLSearchParams();
  for (const [k, v] of new FormData(form)) if (v !== '') p.set(k, String(v));
  if (p.get('lookback') !== 'custom') {
    p.delete('start');
    p.delete('end');
  }
  return p;
}

/** @param {HTMLSelectElement} operation */
function resetOperations(operation) {
  operation.replaceChildren(el('option', { value: '', text: '(any operation)' }));
}

/** @param {HTMLSelectElement} service @param {HTMLSelectElement} operation */
async function loadOperations(service, operation) {
  resetOperations(operation);
  if (!service.value) return;
  for (const o of await api.operations(service.value)) operation.append(el('option', { value: o, text: o }));
}

/**
 * @param {{ service: HTMLSelectElement, operation: HTMLSelectElement }} f
 * @param {URLSearchParams} q
 */
async function fillServices(f, q) {
  const services = await api.services();
  for (const s of services) f.service.append(el('option', { value: s, text: s }));
  f.service.value = q.get('service') || '';
  await loadOperations(f.service, f.operation);
  f.operation.value = q.get('operation') || '';
}

/**
 * The scatter and the list, or a note that nothing matched.
 * @param {Summary[]} rows newest first
 * @param {Context} ctx
 * @param {import('../colors.js').ColorOf} color
 * @returns {HTMLElement[]}
 */
function resultViews(rows, ctx, color) {
  if (!rows.length) {
    return [el('div', { class: 'panel note', id: 'no-results', text: 'No traces match. Widen the time range or remove a filter.' })];
  }
  const plot = scatter(rows, (id) => ctx.navigate(`/trace/${id}`));
  return [
    el('div', { class: 'panel' }, el('h3', { text: plural(rows.length, 'trace') }), plot),
    el('div', { class: 'panel', id: 'result-list' }, rows.map((r) => resultRow(r, color))),
  ];
}

/** @param {Summary} r @param {import('../colors.js').ColorOf} color */
function resultRow(r, color) {
  return el('div', { class: 'result', data: { traceId: r.id } },
    link(`/trace/${r.id}`, `${r.rootService}: ${r.rootOp}`, { class: 'title' }),
    el('div', { class: 'dur', text: fmtDur(r.duration) }),
    el('div', { class: 'chips' },
      el('span', { class: 'badge', text: `${r.spans} spans` }),
      r.errors ? el('span', { class: 'badge error', text: plural(r.errors, 'error') }) : null,
      [...r.services.entries()].map(([s, n]) => el('span', { class: 'chip', vars: { '--c': color(s) }, data: { service: s }, text: `${s} (${n})` }))),
    el('div', { class: 'note', text: fmtTime(r.start) }));
}
