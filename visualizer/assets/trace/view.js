// @ts-check
// One trace on screen: the header, the analysis box, the waterfall and the
// span panel, wired to one ViewState.

import { downloadBundle } from '../upload.js';
import { el } from '../dom.js';
import { fmtDur, fmtTime } from '../format.js';
import { analysisNodes, correctedText } from './analysis.js';
import { collapseAll, criticalSections, expandAncestors, maxDepth } from './model.js';
import { renderPanel } from './panel.js';
import { applyTimes, viewState } from './state.js';
import { createWaterfall } from './waterfall.js';

/** @typedef {import('../api.js').Trace} Trace */
/** @typedef {import('../api.js').Analysis} Analysis */
/** @typedef {import('./state.js').ViewState} ViewState */

/**
 * @param {Trace} trace
 * @param {import('./state.js').ViewOptions} opts
 */
export function createTraceView(trace, opts) {
  const st = viewState(trace, opts);
  const wf = createWaterfall(st, (id) => ctl.select(id, false));
  const analysisBox = el('div', { id: 'analysis' });
  const panel = el('aside', { class: 'span-panel', id: 'span-panel', hidden: true });
  const banner = el('div', { class: 'corrected-banner', id: 'corrected-banner', hidden: true });
  const ctl = controller(st, wf, panel, banner);
  const root = el('div', { class: 'trace', id: 'trace-view', data: { traceId: trace.traceID } },
    el('div', { class: 'panel' }, header(st, ctl), analysisBox),
    banner,
    el('div', { class: 'trace-body' }, wf.element, panel));
  return {
    root,
    /** Renders the rows (once in the page, so the scroller has a height). */
    afterMount() {
      if (st.selected && st.model.byId.has(st.selected)) ctl.select(st.selected, true);
      else wf.render();
    },
    /** @param {Analysis} a */
    setAnalysis(a) {
      setAnalysis(st, a);
      document.body.dataset.criticalSpans = String(st.critical.size);
      const on = { traceId: trace.traceID, select: (/** @type {string} */ id) => ctl.select(id, true), toggleCorrected: ctl.toggleCorrected };
      analysisBox.replaceChildren(...analysisNodes(a, st.critical.size, on, st.color));
      wf.render();
      if (st.selected && !panel.hidden) ctl.showPanel(st.selected);
    },
    /** @param {Error} e */
    analysisFailed(e) {
      analysisBox.replaceChildren(el('div', { class: 'warning', id: 'analysis-error', text: `Analysis unavailable: ${e.message}` }));
    },
  };
}

/**
 * What the user does with a trace view: select spans, collapse, correct
 * the clocks, download.
 * @param {ViewState} st @param {import('./waterfall.js').Waterfall} wf
 * @param {HTMLElement} panel @param {HTMLElement} banner
 */
function controller(st, wf, panel, banner) {
  /** @param {string} id */
  function showPanel(id) {
    const s = st.model.byId.get(id);
    if (s) renderPanel(panel, st, s, (p) => select(p, true));
  }
  /** Selects span `id`: expands its ancestors, marks its row, opens the panel. @param {string} id @param {boolean} scroll */
  function select(id, scroll) {
    const s = st.model.byId.get(id);
    if (!s) return;
    st.selected = id;
    if (expandAncestors(st.model, s, st.collapsed)) wf.layoutRows();
    if (scroll) wf.scrollTo(s);
    wf.render();
    if (!st.uploaded) {
      const url = new URL(location.href);
      url.searchParams.set('span', id);
      history.replaceState(null, '', url.pathname + url.search);
    }
    showPanel(id);
  }
  /** @param {HTMLElement} button */
  function toggleCorrected(button) {
    st.corrected = !st.corrected;
    button.textContent = st.corrected ? 'Show recorded timestamps' : 'Show corrected timeline';
    applyTimes(st);
    banner.hidden = !st.corrected;
    if (st.analysis && st.analysis.causal) banner.textContent = correctedText(st.analysis.causal);
    wf.drawRuler();
    wf.render();
  }
  return {
    select, showPanel, toggleCorrected,
    expand: () => { st.collapsed.clear(); wf.refresh(); },
    collapse: () => { collapseAll(st.model, st.collapsed); wf.refresh(); },
    download: () => download(st),
  };
}

/** @typedef {ReturnType<typeof createTraceView>} TraceView */

/** @param {ViewState} st @param {Analysis} a */
function setAnalysis(st, a) {
  st.analysis = a;
  st.analysisT0 = a.bottlenecks.traceStartUs;
  st.critical = criticalSections(a.bottlenecks);
}

/**
 * Title, figures and the buttons.
 * @param {ViewState} st
 * @param {{ expand: () => void, collapse: () => void, download: () => void }} on
 */
function header(st, on) {
  const root = st.model.roots[0];
  const { t0, total } = st.bounds;
  return el('div', { class: 'trace-head' },
    el('div', {},
      el('h2', { id: 'trace-title', text: root ? `${root.service}: ${root.op}` : 'Trace' }),
      el('div', { class: 'meta' },
        el('span', {}, 'Trace ', el('code', { text: st.trace.traceID })),
        el('span', { text: `Start ${fmtTime(t0)}` }),
        el('span', { id: 'trace-duration', text: `Duration ${fmtDur(total)}` }),
        el('span', { id: 'trace-spans', text: `${st.model.spans.length} spans` }),
        el('span', { text: `${st.model.services.length} services` }),
        el('span', { text: `depth ${maxDepth(st.model.roots)}` }),
        st.uploaded ? el('span', { class: 'badge', text: 'uploaded file' }) : null)),
    el('div', { class: 'actions' },
      el('button', { id: 'expand-all', text: 'Expand all', onclick: on.expand }),
      el('button', { id: 'collapse-all', text: 'Collapse all', onclick: on.collapse }),
      el('button', { id: 'download', text: 'Download JSON', onclick: on.download })));
}

/** Saves the trace and its analysis as a file. @param {ViewState} st */
function download(st) {
  const bundle = downloadBundle(st.trace, st.analysis);
  const blob = new Blob([JSON.stringify(bundle)], { type: 'application/json' });
  const a = /** @type {HTMLAnchorElement} */ (
    el('a', { href: URL.createObjectURL(blob), download: `trace-${st.trace.traceID}.json` }));
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}
