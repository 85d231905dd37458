// @ts-check
// The time windows of the dependencies, services and insights pages.

import { el } from './dom.js';

/** @typedef {[string, number]} Window label and length in ms */

/** @type {readonly Window[]} */
export const WINDOWS = Object.freeze([
  ['1h', 3600e3], ['6h', 6 * 3600e3], ['24h', 24 * 3600e3], ['7d', 7 * 24 * 3600e3],
]);

/**
 * The window named `label`, or `fallback`.
 * @param {string | null} label @param {Window} fallback
 * @returns {Window}
 */
export function windowNamed(label, fallback) {
  return WINDOWS.find(([l]) => l === label) || fallback;
}

/**
 * A `<select>` of the windows.
 * @param {string} current @param {(label: string) => void} onChange @param {string} id
 */
export function windowSelect(current, onChange, id) {
  const s = /** @type {HTMLSelectElement} */ (
    el('select', { id }, WINDOWS.map(([l]) => el('option', { value: l, text: `last ${l}` }))));
  s.value = current;
  s.addEventListener('change', () => onChange(s.value));
  return s;
}
