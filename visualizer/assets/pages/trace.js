// @ts-check
// A trace from the collector, or the trace file the user uploaded.

import * as api from '../api.js';
import { el } from '../dom.js';
import { createTraceView } from '../trace/view.js';

/** @typedef {import('../router.js').Context} Context */

/**
 * Renders the trace as soon as its JSON arrives; the analysis, fetched in
 * parallel, adds the critical path and skew box when it lands. Timings go
 * to `document.body.dataset` for the browser tests.
 * @param {Context} ctx
 */
export async function tracePage(ctx) {
  const id = ctx.match[1].toLowerCase();
  ctx.main.append(el('div', { class: 'loading', text: 'Loading trace…' }));
  const t0 = performance.now();
  const since = () => String(Math.round(performance.now() - t0));
  const analysisP = api.settle(api.analysis(id));
  const [data, color] = await Promise.all([api.trace(id), ctx.session.colors()]);
  if (ctx.stale()) return;
  document.body.dataset.traceFetchMs = since();
  const view = createTraceView(data[0], { selected: ctx.query.get('span'), color });
  ctx.main.replaceChildren(view.root);
  view.afterMount();
  document.body.dataset.traceRenderMs = since();
  const analysis = await analysisP;
  if (ctx.stale()) return;
  if ('error' in analysis) view.analysisFailed(analysis.error);
  else view.setAnalysis(analysis);
  document.body.dataset.analysisRenderMs = since();
}

/** @param {Context} ctx */
export async function uploadedPage(ctx) {
  const up = ctx.session.uploaded;
  if (!up) {
    ctx.main.append(el('div', { class: 'panel' }, el('h2', { text: 'No uploaded trace' }),
      el('p', { class: 'note', text: 'Use "Upload trace JSON" above to open a trace saved with Download JSON (or Jaeger\'s JSON).' })));
    return;
  }
  const color = await ctx.session.colors();
  if (ctx.stale()) return;
  const view = createTraceView(up.trace, { uploaded: true, selected: ctx.query.get('span'), color });
  ctx.main.replaceChildren(view.root);
  view.afterMount();
  if (up.analysis) view.setAnalysis(up.analysis);
  else view.analysisFailed(new Error('The file has no clew analysis (critical path, clock skew): it was not saved by clew.'));
}
