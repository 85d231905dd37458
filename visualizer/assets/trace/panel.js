// @ts-check
// The span panel: what one span is, its clocks and causal rank, its skew
// evidence, raw timestamps, attributes, events and process.

import { el, kv } from '../dom.js';
import { fmtDur, fmtTime } from '../format.js';
import { selfTime } from './model.js';

/** @typedef {import('./state.js').ViewState} ViewState */
/** @typedef {import('./model.js').ViewSpan} ViewSpan */
/** @typedef {import('../api.js').Tag} Tag */

/** Tags shown in their own rows, not among the attributes. */
const SHOWN_ELSEWHERE = new Set([
  'span.kind', 'otel.status_code', 'otel.status_description', 'error', 'clew.clock.start', 'clew.clock.end',
]);

/**
 * Fills `panel` with span `s` and shows it.
 * @param {HTMLElement} panel @param {ViewState} st @param {ViewSpan} s
 * @param {(id: string) => void} select opens another span
 */
export function renderPanel(panel, st, s, select) {
  panel.hidden = false;
  panel.dataset.spanId = s.id;
  panel.replaceChildren(
    el('div', { class: 'trace-head' },
      el('h3', { id: 'panel-op', text: s.op }),
      el('button', { text: '×', title: 'Close', onclick: () => { panel.hidden = true; } })),
    summary(st, s, select),
    clocks(st, s),
    el('section', {}, el('h4', { text: 'Raw timestamps' }),
      kv([['startTime (µs since epoch)', el('code', { text: String(s.raw.startTime) })],
        ['duration (µs)', el('code', { text: String(s.raw.duration) })]])),
    attributes(s),
    events(s),
    el('section', {}, el('h4', { text: 'Process' }),
      s.proc.tags.length ? tagList(s.proc.tags) : el('div', { class: 'note', text: 'no resource attributes' })));
}

/** @param {ViewSpan} s @param {string} key */
function tagValue(s, key) {
  const t = s.raw.tags.find((x) => x.key === key);
  return t ? String(t.value) : '';
}

/** @param {Tag[]} tags */
const tagList = (tags) => kv(tags.map((t) => [t.key, el('span', { class: 'mono', text: String(t.value) })]));

/** @param {ViewState} st @param {ViewSpan} s @param {(id: string) => void} select */
function summary(st, s, select) {
  const crit = st.critical.get(s.id);
  const critUs = crit ? crit.reduce((a, [x, y]) => a + (y - x), 0) : 0;
  const status = tagValue(s, 'otel.status_code') || 'UNSET';
  const desc = tagValue(s, 'otel.status_description');
  const deep = `/trace/${st.trace.traceID}?span=${s.id}`;
  return kv([
    ['Service', el('span', { class: 'chip', vars: { '--c': s.color }, text: s.service })],
    ['Span ID', el('code', { text: s.id })],
    ['Parent', parentCell(st, s, select)],
    ['Kind', s.kind || 'unspecified'],
    ['Status', el('span', { id: 'panel-status', class: s.error ? 'badge error' : 'badge', text: desc ? `${status}: ${desc}` : status })],
    ['Start', `${fmtTime(s.rawStart)} (+${fmtDur(s.rawStart - st.bounds.rawT0)})`],
    ['Duration', fmtDur(s.dur)],
    ['Self time', fmtDur(selfTime(s))],
    ['Critical path', crit ? `${fmtDur(critUs)} on the critical path` : 'not on the critical path'],
    ['Deep link', el('a', { href: deep, 'data-nav': true, text: 'link to this span' })],
  ]);
}

/** @param {ViewState} st @param {ViewSpan} s @param {(id: string) => void} select */
function parentCell(st, s, select) {
  const p = s.parentId;
  if (!p) return 'none (root)';
  if (!st.model.byId.has(p)) return `${p} (not in trace)`;
  return el('a', { href: '#', text: p, onclick: (/** @type {Event} */ e) => { e.preventDefault(); select(p); } });
}

/** Vector clocks, causal rank and the span's own skew evidence. @param {ViewState} st @param {ViewSpan} s */
function clocks(st, s) {
  const causal = st.analysis && st.analysis.causal;
  const order = causal ? causal.order.filter((e) => e.spanID === s.id) : [];
  const skew = causal ? causal.violations.filter((v) => v.before.spanID === s.id || v.after.spanID === s.id) : [];
  const node = (s.proc.tags.find((t) => t.key === 'clew.node') || {}).value;
  /** @param {string} key */
  const clock = (key) => {
    const t = s.raw.tags.find((x) => x.key === key);
    return t ? el('code', { text: String(t.value) }) : 'none';
  };
  return el('section', { id: 'panel-clocks' }, el('h4', { text: 'Vector clocks' }),
    kv([
      ['Node', node ? el('code', { text: String(node) }) : 'none'],
      ['At start', clock('clew.clock.start')],
      ['At end', clock('clew.clock.end')],
      ...order.map((e) => /** @type {[string, string]} */ (
        [`Causal rank (${e.event})`, `${e.rank} of ${causal ? causal.order.length : 0}`])),
    ]),
    skew.length ? el('div', { class: 'warning', id: 'panel-skew' }, `Clock skew evidence for this span (${skew.length}):`,
      skew.slice(0, 5).map((v) => el('div', {
        class: 'mono',
        text: `${v.after.service} ${v.after.event} @ ${v.after.wallNs} ns happened after ` +
          `${v.before.service} ${v.before.event} @ ${v.before.wallNs} ns (stamped ${fmtDur(v.byUs)} earlier)`,
      }))) : null);
}

/** @param {ViewSpan} s */
function attributes(s) {
  const attrs = s.raw.tags.filter((t) => !SHOWN_ELSEWHERE.has(t.key));
  return el('section', { id: 'panel-attributes' }, el('h4', { text: `Attributes (${attrs.length})` }),
    attrs.length ? tagList(attrs) : el('div', { class: 'note', text: 'none' }));
}

/** @param {ViewSpan} s */
function events(s) {
  const logs = s.raw.logs;
  return el('section', { id: 'panel-events' }, el('h4', { text: `Events (${logs.length})` }),
    logs.length ? logs.map((l) => el('div', { class: 'anomaly' },
      el('div', { class: 'note', text: `+${fmtDur(l.timestamp - s.rawStart)} · ${fmtTime(l.timestamp)}` }),
      tagList(l.fields))) : el('div', { class: 'note', text: 'none' }));
}
