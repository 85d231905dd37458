// @ts-check
// The waterfall: a ruler, and the span rows virtualized in a scroller (an
// absolutely positioned window of rows inside a spacer as tall as all).

import { el } from '../dom.js';
import { fmtDur } from '../format.js';
import { flatten } from './model.js';
import { ROW, labelPlace, scale, scrollTopFor, visibleRange } from './rows.js';

/** @typedef {import('./state.js').ViewState} ViewState */
/** @typedef {import('./model.js').ViewSpan} ViewSpan */

/**
 * @param {ViewState} st
 * @param {(id: string) => void} select called when a row is clicked
 */
export function createWaterfall(st, select) {
  const ruler = el('div', { class: 'ruler' });
  const spacer = el('div', { class: 'wf-spacer' });
  const scroller = el('div', { class: 'wf-scroll', id: 'wf-scroll' }, spacer);
  const element = el('div', { class: 'waterfall' },
    el('div', { class: 'wf-head' }, el('div', { class: 'name', text: 'Service · operation' }), ruler), scroller);
  let pending = false;

  function drawRuler() {
    const { total } = st.bounds;
    ruler.replaceChildren(...[0, 0.25, 0.5, 0.75, 1].map((f) =>
      el('span', { class: 'tick', style: { left: `${f * 100}%` }, text: fmtDur(f * total) })));
  }
  function layoutRows() {
    st.rows = flatten(st.model.roots, st.collapsed);
    spacer.style.height = `${st.rows.length * ROW}px`;
  }
  function render() {
    const { first, last } = visibleRange(scroller.scrollTop, scroller.clientHeight || 600, st.rows.length);
    const out = [];
    for (let i = first; i < last; i++) out.push(rowEl(st, st.rows[i], i, { select, toggle }));
    spacer.replaceChildren(...out);
  }
  function refresh() {
    layoutRows();
    render();
  }
  /** @param {string} id */
  function toggle(id) {
    if (!st.collapsed.delete(id)) st.collapsed.add(id);
    refresh();
  }
  /** @param {ViewSpan} s */
  function scrollTo(s) {
    const i = st.rows.indexOf(s);
    if (i >= 0) scroller.scrollTop = scrollTopFor(i, scroller.clientHeight);
  }
  scroller.addEventListener('scroll', () => {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => {
      pending = false;
      render();
    });
  });
  drawRuler();
  layoutRows();
  return { element, drawRuler, layoutRows, render, refresh, scrollTo };
}

/** @typedef {ReturnType<typeof createWaterfall>} Waterfall */

/**
 * One row: the tree cell (toggle, service, operation) and the timeline
 * (bar, critical sections, duration).
 * @param {ViewState} st @param {ViewSpan} s @param {number} i
 * @param {{ select: (id: string) => void, toggle: (id: string) => void }} on
 */
function rowEl(st, s, i, on) {
  const cls = ['row'];
  if (st.critical.has(s.id)) cls.push('critical');
  if (s.error) cls.push('error');
  if (s.id === st.selected) cls.push('selected');
  const row = el('div', {
    class: cls.join(' '), style: { top: `${i * ROW}px` }, data: { spanId: s.id },
    title: `${s.service}: ${s.op} — ${fmtDur(s.dur)}`,
  },
  el('div', { class: 'name', style: { paddingLeft: `${Math.min(s.depth, 40) * 12 + 2}px` } },
    toggleButton(st, s, on.toggle),
    el('span', { class: 'svc', vars: { '--c': s.color }, text: s.service }),
    el('span', { class: 'op', text: s.op })),
  timeline(st, s));
  row.addEventListener('click', () => on.select(s.id));
  return row;
}

/**
 * @param {ViewState} st @param {ViewSpan} s @param {(id: string) => void} toggle
 */
function toggleButton(st, s, toggle) {
  const n = s.children.length;
  const b = el('button', {
    class: n ? 'toggle' : 'toggle leaf',
    text: st.collapsed.has(s.id) ? '▸' : '▾',
    title: n ? `${n} children` : null,
    'aria-label': 'collapse or expand',
  });
  b.addEventListener('click', (e) => {
    e.stopPropagation();
    toggle(s.id);
  });
  return b;
}

/** @param {ViewState} st @param {ViewSpan} s */
function timeline(st, s) {
  const { t0, total } = st.bounds;
  const { x, w } = scale(t0, total);
  const line = el('div', { class: 'timeline' },
    el('div', { class: 'bar', vars: { '--c': s.color }, style: { left: x(s.start), width: w(s.dur) } }));
  const crit = st.critical.get(s.id);
  if (crit) {
    // Critical sections are relative to the raw trace start (analysis).
    const shift = st.analysisT0 !== undefined ? st.analysisT0 + (s.start - s.rawStart) : t0;
    for (const [a, b] of crit) line.append(el('div', { class: 'crit', style: { left: x(shift + a), width: w(b - a) } }));
  }
  line.append(el('span', { class: 'dur', style: labelPlace(s.start, s.dur, t0, total), text: fmtDur(s.dur) }));
  return line;
}
