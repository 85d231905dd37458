// @ts-check
// The anomalies of a window, one row per (kind, service, operation, span
// kind): how many, against which baseline, how bad at worst, when, and the
// worst examples (expandable) with links to their traces.

import { el, link } from '../dom.js';
import { fmtDur, fmtTime, pct, plural } from '../format.js';

/** @typedef {import('../api.js').Anomalies} Anomalies */
/** @typedef {import('../api.js').Anomaly} Anomaly */
/** @typedef {import('../api.js').AnomalyGroup} AnomalyGroup */
/** @typedef {import('../colors.js').ColorOf} ColorOf */

const KINDS = /** @type {Record<string, string>} */ ({
  latencyOutlier: 'slow', errorSpike: 'error spike', newEdge: 'new call', missingChild: 'missing call',
});

/**
 * The anomalies box's content.
 * @param {Anomalies} anom @param {string} window e.g. `1h` @param {ColorOf} color
 * @returns {HTMLElement[]}
 */
export function anomalyViews(anom, window, color) {
  const groups = anom.groups || anom.anomalies.map(single);
  if (!groups.length) {
    return [el('p', { class: 'note', id: 'no-anomalies', text: `No anomalies in the last ${window}.` })];
  }
  const total = groups.reduce((n, g) => n + g.count, 0);
  const head = `${total} ${total === 1 ? 'anomaly' : 'anomalies'} in ${plural(groups.length, 'group')}: ${sources(anom)}`;
  return [el('p', { class: 'note', id: 'anomaly-summary', text: head }), ...groups.map((g) => groupView(g, color))];
}

/**
 * What the anomalies were found in: every span for slow spans and error
 * spikes, the traces read for new and missing calls.
 * @param {Anomalies} anom
 */
export function sources(anom) {
  const n = anom.structuralFromTraces ?? 0;
  const traces = anom.structuralTruncated ? `the ${plural(n, 'most recent trace')}` : plural(n, 'trace');
  return `slow spans and error spikes from every span of the window, new and missing calls from ${traces}.`;
}

/**
 * An anomaly as a group of its own (a collector that does not group).
 * @param {Anomaly} a
 * @returns {AnomalyGroup}
 */
function single(a) {
  return {
    kind: a.kind, service: a.service, operation: a.operation, spanKind: a.spanKind || '', count: 1,
    baseline: a.baseline, worstValue: a.value, worstScore: a.score, firstUs: a.timeUs, lastUs: a.timeUs,
    message: a.message, examples: [a],
  };
}

/** @param {AnomalyGroup} g @param {ColorOf} color */
function groupView(g, color) {
  const when = g.firstUs === g.lastUs ? fmtTime(g.firstUs) : `${fmtTime(g.firstUs)} – ${fmtTime(g.lastUs)}`;
  return el('div', {
    class: 'anomaly group',
    data: { kind: g.kind, service: g.service, operation: g.operation, spanKind: g.spanKind, count: String(g.count) },
  },
  el('div', { class: 'group-head' },
    el('span', { class: g.kind === 'errorSpike' ? 'badge error' : 'badge', text: KINDS[g.kind] || g.kind }),
    el('span', { class: 'chip', vars: { '--c': color(g.service) }, data: { service: g.service }, text: g.service }),
    el('span', { class: 'op', text: g.operation }),
    g.spanKind ? el('span', { class: 'badge', text: g.spanKind }) : null,
    el('span', { class: 'count', text: `× ${g.count}` })),
  el('div', { class: 'message', text: g.message }),
  el('div', { class: 'meta' },
    el('span', { class: 'baseline', text: `Baseline: ${baselineText(g)}` }),
    el('span', { class: 'worst', text: `Worst: ${valueText(g.kind, g.worstValue)}${g.ratio ? ` (${g.ratio.toFixed(1)}×)` : ''}` }),
    el('span', { class: 'when', text: when })),
  examples(g));
}

/** @param {string} kind @param {number} v */
function valueText(kind, v) {
  if (kind === 'latencyOutlier') return fmtDur(v);
  if (kind === 'errorSpike') return `${pct(v)} of calls failed`;
  if (kind === 'newEdge') return plural(v, 'call');
  return 'call missing';
}

/** What the detector compared against. @param {AnomalyGroup} g */
function baselineText(g) {
  const b = g.baseline;
  if (g.kind === 'latencyOutlier') {
    return `median ${fmtDur(b.medianUs ?? NaN)} (MAD ${fmtDur(b.madUs ?? NaN)}) of ${plural(b.samples, 'span')}`;
  }
  if (g.kind === 'errorSpike') return `${pct(b.rate ?? 0)} errors in ${plural(b.samples, 'other call')}`;
  if (g.kind === 'newEdge') return `not made in ${plural(b.samples, 'earlier run')}`;
  return `made in ${pct(b.rate ?? 0)} of ${plural(b.samples, 'run')}`;
}

/** The worst examples, collapsed. @param {AnomalyGroup} g */
function examples(g) {
  if (!g.examples.length) return null;
  const more = g.count > g.examples.length ? ` of ${g.count}` : '';
  return el('details', { class: 'examples' },
    el('summary', { text: `${g.examples.length === 1 ? 'Example' : `Worst ${g.examples.length}${more}`}` }),
    el('ol', {}, g.examples.map((a) => el('li', { class: 'example', data: { traceId: a.traceID || '' } },
      el('span', { class: 'note', text: fmtTime(a.timeUs) }), ' ',
      el('span', { class: 'value', text: valueText(a.kind, a.value) }), ' ',
      a.traceID ? link(`/trace/${a.traceID}${a.spanID ? `?span=${a.spanID}` : ''}`, 'open trace') : null,
      el('div', { class: 'note', text: a.message })))));
}
