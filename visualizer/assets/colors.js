// @ts-check
// One colour per service, the same on every page (pure).
//
// Every page takes its colours from one assignment made from the sorted
// list of services the collector knows: each service, in name order, gets
// the palette slot its name hashes to, or the next free one. Two services
// never share a colour while there are at most PALETTE.length of them, and
// a service keeps its colour when others come and go unless one of them
// took its slot first. Beyond the palette, services get generated hues.

/**
 * Twenty colours chosen greedily for the largest smallest difference
 * (CIEDE2000 at least 15, CIE76 at least 20), of middle lightness so each
 * reads on white and behind text.
 */
export const PALETTE = Object.freeze([
  '#4477aa', '#aaaa00', '#ff5544', '#bb22aa', '#007744', '#885500', '#00aaaa', '#bb99cc', '#ee8800', '#11bb55',
  '#994444', '#ff5599', '#777733', '#00aaff', '#776699', '#8899ff', '#aa7755', '#aa66ee', '#bb4400', '#aa6688',
]);

/** @typedef {(service: string) => string} ColorOf a service's colour */

/**
 * FNV-1a over the name's UTF-16 code units: stable across pages and runs.
 * @param {string} s
 * @returns {number}
 */
export function hashName(s) {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193) >>> 0;
  return h;
}

/**
 * The `k`th colour past the palette: golden-angle hues at two lightnesses.
 * @param {number} k
 */
export function extraColor(k) {
  return `hsl(${((k * 137.508 + 17) % 360).toFixed(1)}, 55%, ${k % 2 ? 36 : 56}%)`;
}

/**
 * The colours of `known` services (assigned in name order); a service not
 * in it gets the next free colour when first asked for, and keeps it.
 * @param {string[]} known
 * @returns {ColorOf}
 */
export function servicePalette(known) {
  /** @type {Map<string, string>} */
  const colors = new Map();
  /** @type {Set<number>} */
  const taken = new Set();
  /** @param {string} s */
  const assign = (s) => {
    let c;
    if (taken.size < PALETTE.length) {
      let slot = hashName(s) % PALETTE.length;
      while (taken.has(slot)) slot = (slot + 1) % PALETTE.length;
      taken.add(slot);
      c = PALETTE[slot];
    } else {
      c = extraColor(colors.size - PALETTE.length);
    }
    colors.set(s, c);
    return c;
  };
  [...new Set(known)].sort().forEach(assign);
  return (s) => colors.get(s) || assign(s);
}

/**
 * The session's colours: `load` (the collector's service list) is asked
 * once and the assignment kept, so every page of the session agrees. When
 * it fails, one assignment from no known services stands in (and the next
 * call asks again).
 * @param {() => Promise<string[]>} load
 * @returns {() => Promise<ColorOf>}
 */
export function sessionColors(load) {
  /** @type {Promise<ColorOf> | null} */
  let known = null;
  const fallback = servicePalette([]);
  return () => {
    if (!known) {
      known = load().then(servicePalette, () => {
        known = null;
        return fallback;
      });
    }
    return known;
  };
}
