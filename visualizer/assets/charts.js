// @ts-check
// SVG charts: the search page's duration scatter and the RED line charts.

import { el, sv } from './dom.js';
import { fmtDur, fmtTime } from './format.js';

/** @typedef {import('./trace/model.js').Summary} Summary */
/** @typedef {import('./api.js').RedBucket} RedBucket */

/**
 * Duration over start time, one dot per trace (errors in red).
 * @param {Summary[]} rows
 * @param {(id: string) => void} open called with the clicked trace's ID
 */
export function scatter(rows, open) {
  const W = 1000;
  const H = 220;
  const pad = { l: 60, r: 12, t: 10, b: 26 };
  const t0 = Math.min(...rows.map((r) => r.start));
  const t1 = Math.max(...rows.map((r) => r.start));
  const dMax = Math.max(...rows.map((r) => r.duration), 1);
  /** @param {number} t */
  const x = (t) => pad.l + (t1 === t0 ? 0.5 : (t - t0) / (t1 - t0)) * (W - pad.l - pad.r);
  /** @param {number} d */
  const y = (d) => H - pad.b - (d / dMax) * (H - pad.t - pad.b);
  const g = sv('svg', { class: 'scatter', id: 'scatter', viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: 'none' });
  g.append(sv('g', { class: 'axis' },
    sv('line', { x1: pad.l, x2: W - pad.r, y1: H - pad.b, y2: H - pad.b }),
    sv('line', { x1: pad.l, x2: pad.l, y1: pad.t, y2: H - pad.b }),
    sv('text', { x: pad.l - 6, y: pad.t + 8, 'text-anchor': 'end', text: fmtDur(dMax) }),
    sv('text', { x: pad.l - 6, y: H - pad.b, 'text-anchor': 'end', text: '0' }),
    sv('text', { x: pad.l, y: H - 8, text: fmtTime(t0) }),
    sv('text', { x: W - pad.r, y: H - 8, 'text-anchor': 'end', text: fmtTime(t1) })));
  for (const r of rows) {
    const tip = `${r.rootService}: ${r.rootOp}\n${fmtDur(r.duration)} · ${r.spans} spans\n${fmtTime(r.start)}`;
    g.append(sv('circle', {
      cx: x(r.start), cy: y(r.duration), r: 5, class: r.errors ? 'error' : '',
      data: { traceId: r.id }, onclick: () => open(r.id),
    }, sv('title', { text: tip })));
  }
  return g;
}

/**
 * One line of a chart: bucket field, legend label, colour, value format.
 * @typedef {[keyof RedBucket, string, string, (v: number) => string]} Line
 */

/**
 * A line chart of `buckets` (every point of the window, from the roll-ups).
 * @param {string} title
 * @param {RedBucket[]} buckets
 * @param {Line[]} lines the first one's format labels the axis
 */
export function lineChart(title, buckets, lines) {
  const W = 320;
  const H = 140;
  const pad = { l: 50, r: 6, t: 8, b: 18 };
  const max = Math.max(1e-9, ...lines.flatMap(([k]) => buckets.map((b) => b[k])));
  const n = Math.max(buckets.length - 1, 1);
  /** @param {number} i */
  const x = (i) => pad.l + (i / n) * (W - pad.l - pad.r);
  /** @param {number} v */
  const y = (v) => H - pad.b - (v / max) * (H - pad.t - pad.b);
  const g = sv('svg', { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: 'none' },
    chartAxis(buckets, { W, H, pad }, lines[0][3](max)));
  for (const [k, , color] of lines) {
    const points = buckets.map((b, i) => `${x(i).toFixed(1)},${y(b[k]).toFixed(1)}`);
    g.append(sv('polyline', { stroke: color, points: points.join(' ') }));
  }
  return el('div', { class: 'chart' }, el('div', { class: 'note', text: title }), g,
    el('div', { class: 'legend' }, lines.map(([, label, color]) => el('span', { vars: { '--c': color }, text: label }))));
}

/**
 * The x axis with the first and last bucket's time, and the y scale.
 * @param {RedBucket[]} buckets
 * @param {{ W: number, H: number, pad: { l: number, r: number, t: number, b: number } }} box
 * @param {string} maxLabel
 */
function chartAxis(buckets, { W, H, pad }, maxLabel) {
  /** @param {RedBucket} b */
  const hms = (b) => fmtTime(b.startUs).slice(11, 19);
  const last = buckets[buckets.length - 1];
  return sv('g', { class: 'axis' },
    sv('line', { x1: pad.l, x2: W - pad.r, y1: H - pad.b, y2: H - pad.b }),
    sv('text', { x: pad.l - 4, y: pad.t + 8, 'text-anchor': 'end', text: maxLabel }),
    sv('text', { x: pad.l - 4, y: H - pad.b, 'text-anchor': 'end', text: '0' }),
    buckets.length ? sv('text', { x: pad.l, y: H - 4, text: hms(buckets[0]) }) : null,
    buckets.length ? sv('text', { x: W - pad.r, y: H - 4, 'text-anchor': 'end', text: hms(last) }) : null);
}
