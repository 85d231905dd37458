// @ts-check
// The search form's tag filter (pure).

/**
 * Parses logfmt-style `key=value` pairs, values optionally double-quoted:
 * `http.status_code=500 msg="not found"` → `{"http.status_code": "500",
 * "msg": "not found"}`. Later keys win; text without `=` is ignored.
 * @param {string} s
 * @returns {Record<string, string>}
 */
export function parseTags(s) {
  /** @type {Record<string, string>} */
  const out = {};
  const re = /([^\s=]+)=("([^"]*)"|\S*)/g;
  let m;
  while ((m = re.exec(s))) out[m[1]] = m[3] !== undefined ? m[3] : m[2];
  return out;
}

/**
 * A `datetime-local` value as microseconds since the epoch, or null.
 * @param {string} local
 * @returns {number | null}
 */
export function toMicros(local) {
  const t = Date.parse(local);
  return isNaN(t) ? null : t * 1000;
}
