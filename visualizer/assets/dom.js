// @ts-check
// Element builders and the error banner. Every value from the server goes
// into the page as textContent or an attribute, never as HTML.

const NS = 'http://www.w3.org/2000/svg';

/**
 * Attributes of {@link el} and {@link sv}: `text` (textContent), `class`,
 * `style` (CSSOM properties), `vars` (CSS custom properties), `data`
 * (dataset), `on<event>` listeners, anything else as an attribute (`true`
 * → present, `null`/`undefined`/`false` → left out).
 * @typedef {Record<string, any> | null | undefined} Attrs
 * @typedef {Node | string | number | null | undefined | false | Kids[]} Kids
 */

/**
 * An HTML element.
 * @param {string} tag @param {Attrs} [attrs] @param {...Kids} kids
 * @returns {HTMLElement}
 */
export function el(tag, attrs, ...kids) {
  const n = document.createElement(tag);
  setAttrs(n, attrs);
  append(n, kids);
  return n;
}

/**
 * An SVG element.
 * @param {string} tag @param {Attrs} [attrs] @param {...Kids} kids
 * @returns {SVGElement}
 */
export function sv(tag, attrs, ...kids) {
  const n = /** @type {SVGElement} */ (document.createElementNS(NS, tag));
  setAttrs(n, attrs);
  append(n, kids);
  return n;
}

/** @param {HTMLElement | SVGElement} n @param {Attrs} attrs */
function setAttrs(n, attrs) {
  if (!attrs) return;
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'text') n.textContent = v;
    else if (k === 'class') n.setAttribute('class', v);
    else if (k === 'style') Object.assign(n.style, v);
    else if (k === 'vars') for (const [p, x] of Object.entries(v)) n.style.setProperty(p, x);
    else if (k === 'data') Object.assign(n.dataset, v);
    else if (k.startsWith('on')) n.addEventListener(k.slice(2), v);
    else n.setAttribute(k, v === true ? '' : String(v));
  }
}

/** @param {Node} n @param {Kids[]} kids */
function append(n, kids) {
  for (const k of kids.flat(Infinity)) {
    if (k === null || k === undefined || k === false) continue;
    n.appendChild(k instanceof Node ? k : document.createTextNode(String(k)));
  }
}

/**
 * A link the router follows without reloading the page.
 * @param {string} href @param {string} text @param {Attrs} [attrs]
 */
export function link(href, text, attrs) {
  return el('a', Object.assign({ href, 'data-nav': true, text }, attrs || {}));
}

/** A "Loading…" line, removed when a page fails. @param {string} text */
export const loading = (text) => el('div', { class: 'loading', text });

/** @param {string} text @param {string} [id] */
export const warning = (text, id) => el('div', { class: 'warning', id, text });

/** @param {string} text @param {string} [id] */
export const note = (text, id) => el('p', { class: 'note', id, text });

/**
 * A `<dl>` of label → value pairs.
 * @param {[string, Kids][]} pairs
 */
export function kv(pairs) {
  return el('dl', { class: 'kv' }, pairs.flatMap(([k, v]) => [el('dt', { text: k }), el('dd', {}, v)]));
}

/** @returns {HTMLElement} */
function banner() {
  const e = document.getElementById('error');
  if (!e) throw new Error('index.html has no #error banner');
  return e;
}

/** Shows `e`'s message in the banner above the page. @param {unknown} e */
export function showError(e) {
  const b = banner();
  b.hidden = false;
  const msg = e && typeof e === 'object' && 'message' in e ? e.message : null;
  b.textContent = msg ? String(msg) : String(e);
}

export function clearError() {
  const b = banner();
  b.hidden = true;
  b.textContent = '';
}
