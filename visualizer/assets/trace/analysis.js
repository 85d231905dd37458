// @ts-check
// The analysis box above the waterfall: critical path by service, self
// time ranked, and the clock-skew warning with its evidence.

import { el } from '../dom.js';
import { fmtDur, pct } from '../format.js';

/** @typedef {import('../api.js').Analysis} Analysis */
/** @typedef {import('../api.js').Bottlenecks} Bottlenecks */
/** @typedef {import('../api.js').Causal} Causal */
/** @typedef {import('../api.js').ClockEvent} ClockEvent */

/**
 * @typedef {{ traceId: string, select: (id: string) => void,
 *   toggleCorrected: (button: HTMLElement) => void }} Actions
 */

/**
 * @param {Analysis} a @param {number} criticalSpans spans on the critical path
 * @param {Actions} on @param {import('../colors.js').ColorOf} color service colours
 * @returns {HTMLElement[]}
 */
export function analysisNodes(a, criticalSpans, on, color) {
  const b = a.bottlenecks;
  const onPath = b.services.filter((s) => s.criticalShare > 0);
  const box = [
    el('div', { class: 'note', id: 'critical-summary' },
      `Critical path: ${b.criticalPath.length} sections over ${criticalSpans} spans (◆, orange). Time on it by service:`),
    el('div', { class: 'summary-bars' }, onPath.map((s) => el('div', {
      vars: { '--c': color(s.service) }, style: { width: `${s.criticalShare * 100}%` },
      title: `${s.service}: ${fmtDur(s.criticalUs)} (${pct(s.criticalShare)})`,
    }))),
    el('div', { class: 'chips' }, onPath.map((s) =>
      el('span', { class: 'chip', vars: { '--c': color(s.service) }, text: `${s.service} ${pct(s.criticalShare)}` }))),
    selfTimeTables(b, on),
  ];
  const c = a.causal;
  if (c && !c.consistent) box.push(skewWarning(c, on));
  else if (c && c.spansWithClocks > 0) box.push(el('div', { class: 'note', id: 'skew-ok', text: c.explanation }));
  return box;
}

/** @param {string[]} cols */
const head = (cols) => el('tr', {}, cols.map((x) => el('th', { text: x })));
/** @param {string} text */
const num = (text) => el('td', { class: 'num', text });

/**
 * Self time (a span's time not covered by its children), ranked: by span,
 * service and operation, each with its share of the trace.
 * @param {Bottlenecks} b @param {Actions} on
 */
function selfTimeTables(b, on) {
  const lead = b.spans.length
    ? `${b.spans[0].service} "${b.spans[0].operation}" leads with ${pct(b.spans[0].share)} of the trace`
    : 'no spans';
  return el('details', { id: 'self-time' },
    el('summary', { text: `Self time: ${lead}` }),
    el('table', { class: 'grid', id: 'self-time-spans' },
      head(['Span', 'Self time', 'Share of trace', 'On the critical path']),
      b.spans.map((t) => el('tr', {},
        el('td', {}, spanLink(on, t.spanID, `${t.service}: ${t.operation}`)),
        num(fmtDur(t.selfUs)), num(pct(t.share)), num(fmtDur(t.criticalUs))))),
    el('table', { class: 'grid', id: 'self-time-services' },
      head(['Service', 'Spans', 'Self time', 'Share of trace', 'Critical-path share']),
      b.services.map((g) => el('tr', {}, el('td', { text: g.service }),
        num(String(g.spans)), num(fmtDur(g.selfUs)), num(pct(g.share)), num(pct(g.criticalShare))))),
    el('table', { class: 'grid', id: 'self-time-operations' },
      head(['Operation', 'Spans', 'Self time', 'Share of trace', 'Critical-path share']),
      b.operations.map((g) => el('tr', {}, el('td', { text: `${g.service}: ${g.operation}` }),
        num(String(g.spans)), num(fmtDur(g.selfUs)), num(pct(g.share)), num(pct(g.criticalShare))))),
    el('div', { class: 'note', text: 'Shares of concurrent spans can add up to more than 100 %; critical-path shares add up to at most 100 %.' }));
}

/**
 * A link to a span's deep link that, clicked, selects it in this view.
 * @param {Actions} on @param {string} spanId @param {string} text
 */
function spanLink(on, spanId, text) {
  return el('a', {
    href: `/trace/${on.traceId}?span=${spanId}`, text,
    onclick: (/** @type {Event} */ e) => { e.preventDefault(); on.select(spanId); },
  });
}

/** @param {Actions} on @param {ClockEvent} ev */
function evLink(on, ev) {
  return el('a', {
    href: '#', text: `${ev.service}: ${ev.operation} (${ev.event})`,
    onclick: (/** @type {Event} */ e) => { e.preventDefault(); on.select(ev.spanID); },
  });
}

/** The explanation, the corrected-view toggle and the evidence. @param {Causal} c @param {Actions} on */
function skewWarning(c, on) {
  return el('div', { class: 'warning', id: 'skew-warning' },
    el('strong', { text: 'Clock skew. ' }), c.explanation,
    el('div', {}, el('button', {
      id: 'toggle-corrected', text: 'Show corrected timeline',
      onclick: (/** @type {Event} */ e) => on.toggleCorrected(/** @type {HTMLElement} */ (e.target)),
    })),
    el('details', { id: 'skew-evidence' },
      el('summary', { text: `Evidence: ${c.violationCount} happened-before pair${c.violationCount === 1 ? '' : 's'} contradicted by wall clocks` }),
      offsetsTable(c), violationsTable(c, on)));
}

/** @param {number} us */
const signed = (us) => `${us >= 0 ? '+' : ''}${fmtDur(us)}`;

/** @param {Causal} c */
function offsetsTable(c) {
  return el('table', { class: 'grid' },
    head(['Service', 'Proposed correction', 'Why']),
    c.offsets.map((o) => el('tr', {},
      el('td', { text: o.service }),
      el('td', { class: 'num', text: o.reference ? 'reference' : `${signed(o.offsetUs)}${o.conflict ? ' (conflicting)' : ''}` }),
      el('td', { text: o.explanation }))));
}

/** @param {Causal} c @param {Actions} on */
function violationsTable(c, on) {
  /** @param {ClockEvent} ev */
  const stamp = (ev) => el('td', {}, el('code', { text: ev.wallNs }), el('br'), el('code', { text: ev.clock }));
  return el('table', { class: 'grid', id: 'violations' },
    head(['Happened first', 'raw timestamp (ns) · clock', 'Happened after', 'raw timestamp (ns) · clock', 'Stamped earlier by']),
    c.violations.map((v) => el('tr', {},
      el('td', {}, evLink(on, v.before)), stamp(v.before),
      el('td', {}, evLink(on, v.after)), stamp(v.after),
      el('td', { class: 'num', text: fmtDur(v.byUs) }))));
}

/**
 * The banner text of the corrected view.
 * @param {Causal} c
 */
export function correctedText(c) {
  const offs = c.offsets.filter((o) => o.offsetUs !== 0).map((o) => `${o.service} ${signed(o.offsetUs)}`);
  return `Corrected view: bars are drawn with the proposed clock offsets applied (${offs.join(', ')}). ` +
    'Stored timestamps are unchanged; the span panel shows them as recorded.';
}
