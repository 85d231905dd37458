// @ts-check
// Row virtualization and bar geometry of the waterfall (pure): only the
// rows in view, plus a margin, exist in the DOM.

/** Row height in px; must match `--row` in app.css. */
export const ROW = 24;

/** Rows rendered above and below the viewport. */
export const OVERSCAN = 10;

/**
 * The rows `[first, last)` to render for a viewport at `scrollTop` of
 * `height` px over `count` rows.
 * @param {number} scrollTop @param {number} height @param {number} count
 * @param {number} [row] @param {number} [overscan]
 * @returns {{ first: number, last: number }}
 */
export function visibleRange(scrollTop, height, count, row = ROW, overscan = OVERSCAN) {
  const first = Math.min(count, Math.max(0, Math.floor(scrollTop / row) - overscan));
  const last = Math.min(count, Math.ceil((scrollTop + height) / row) + overscan);
  return { first, last: Math.max(first, last) };
}

/**
 * The scrollTop that shows row `index` a third of the way down.
 * @param {number} index @param {number} height @param {number} [row]
 */
export function scrollTopFor(index, height, row = ROW) {
  return Math.max(0, index * row - height / 3);
}

/**
 * Bar positions as CSS percentages of the trace's extent.
 * @param {number} t0 trace start, µs
 * @param {number} total trace duration, µs (> 0)
 */
export function scale(t0, total) {
  return {
    /** @param {number} t */
    x: (t) => `${((t - t0) / total) * 100}%`,
    /** @param {number} d */
    w: (d) => `${(d / total) * 100}%`,
  };
}

/**
 * Where a bar's duration label goes: after the bar, or inside its end
 * when the bar reaches into the last 15 % of the row.
 * @param {number} start @param {number} dur @param {number} t0 @param {number} total
 * @returns {{ left: string } | { right: string }}
 */
export function labelPlace(start, dur, t0, total) {
  const endFrac = (start + dur - t0) / total;
  if (endFrac > 0.85) return { right: `calc(${(1 - endFrac) * 100}% + 4px)` };
  return { left: `calc(${scale(t0, total).x(start + dur)} + 4px)` };
}
