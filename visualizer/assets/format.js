// @ts-check
// Formatting of durations, times and shares (pure); service colours are in
// colors.js.

/**
 * A duration in microseconds, in the largest unit that keeps it readable:
 * `12.5µs`, `430ms`, `1.25s`, `2.5min`; `–` when not finite.
 * @param {number} us
 * @returns {string}
 */
export function fmtDur(us) {
  if (!isFinite(us)) return '–';
  const a = Math.abs(us);
  if (a < 1000) return `${+us.toFixed(a < 10 ? 2 : 0)}µs`;
  if (a < 1e6) return `${+(us / 1000).toFixed(2)}ms`;
  if (a < 6e7) return `${+(us / 1e6).toFixed(2)}s`;
  return `${+(us / 6e7).toFixed(1)}min`;
}

/**
 * Microseconds since the epoch as local `YYYY-MM-DD HH:MM:SS.mmm`.
 * @param {number} us
 * @returns {string}
 */
export function fmtTime(us) {
  const d = new Date(us / 1000);
  /** @param {number} x @param {number} [n] */
  const pad = (x, n = 2) => String(x).padStart(n, '0');
  const day = `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
  const time = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  return `${day} ${time}.${pad(d.getMilliseconds(), 3)}`;
}

/**
 * A share (0..1) as a percentage; one decimal below 10 %.
 * @param {number} x
 * @returns {string}
 */
export function pct(x) {
  return `${(100 * x).toFixed(x < 0.1 && x > 0 ? 1 : 0)}%`;
}

/**
 * `n thing` or `n things`.
 * @param {number} n
 * @param {string} word
 * @returns {string}
 */
export function plural(n, word) {
  return `${n} ${word}${n === 1 ? '' : 's'}`;
}
