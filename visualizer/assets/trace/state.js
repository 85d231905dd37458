// @ts-check
// The state of one open trace view, created per view and passed to its
// parts (no module-level state).

import { buildModel, retime } from './model.js';

/** @typedef {import('../api.js').Trace} Trace */
/** @typedef {import('../api.js').Analysis} Analysis */
/** @typedef {import('./model.js').Model} Model */
/** @typedef {import('./model.js').Bounds} Bounds */
/** @typedef {import('./model.js').ViewSpan} ViewSpan */

/**
 * @typedef {{
 *   trace: Trace, model: Model, uploaded: boolean,
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
 * @param {{ uploaded?: boolean, selected?: string | null }} opts
 * @returns {ViewState}
 */
export function viewState(trace, opts) {
  const model = buildModel(trace);
  return {
    trace, model, uploaded: !!opts.uploaded,
    analysis: null, analysisT0: undefined, critical: new Map(),
    corrected: false, collapsed: new Set(), selected: opts.selected || null,
    bounds: retime(model.spans, new Map()), rows: [],
  };
}

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
