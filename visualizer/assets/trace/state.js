// @ts-check
// The state of one open trace view, created per view and passed to its
// parts (no module-level state).

import { servicePalette } from '../colors.js';
import { buildModel, retime } from './model.js';

/** @typedef {import('../api.js').Trace} Trace */
/** @typedef {import('../api.js').Analysis} Analysis */
/** @typedef {import('./model.js').Model} Model */
/** @typedef {import('./model.js').Bounds} Bounds */
/** @typedef {import('./model.js').ViewSpan} ViewSpan */

/**
 * @typedef {{
 *   trace: Trace, model: Model, uploaded: boolean, color: import('../colors.js').ColorOf,
 *   analysis: Analysis | null, analysisT0: number | undefined,
 *   critical: Map<string, [number, number][]>,
 *   corrected: boolean, collapsed: Set<string>, selected: string | null,
 *   bounds: Bounds, rows: ViewSpan[],
 * }} ViewState `critical`: critical-path sections per span ID, relative to
 * `analysisT0` (the raw trace start the analysis used); `rows`: the
 * waterfall's rows with collapsed subtrees left out.
 */

/**
 * @param {Trace} trace
 * @param {ViewOptions} opts
 * @returns {ViewState}
 */
export function viewState(trace, opts) {
  const color = opts.color || servicePalette(Object.values(trace.processes).map((p) => p.serviceName));
  const model = buildModel(trace, color);
  return {
    trace, model, uploaded: !!opts.uploaded, color,
    analysis: null, analysisT0: undefined, critical: new Map(),
    corrected: false, collapsed: new Set(), selected: opts.selected || null,
    bounds: retime(model.spans, new Map()), rows: [],
  };
}

/**
 * `selected`: the span to open; `color`: the session's service colours.
 * @typedef {{ uploaded?: boolean, selected?: string | null,
 *   color?: import('../colors.js').ColorOf }} ViewOptions
 */

/**
 * Re-positions the spans: with the analysis's proposed clock offsets
 * when the corrected view is on, else as recorded.
 * @param {ViewState} st
 */
export function applyTimes(st) {
  const off = new Map();
  if (st.corrected && st.analysis && st.analysis.causal) {
    for (const o of st.analysis.causal.offsets) off.set(o.service, o.offsetUs);
  }
  st.bounds = retime(st.model.spans, off);
}
