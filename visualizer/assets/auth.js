// @ts-check
// Pure: the bearer token the user pasted on the sign-in page, kept in
// sessionStorage (gone when the tab closes), sent on every API call; where
// sign-in returns to. The storage is passed in, so Node tests use a fake.

/** The sessionStorage key of the token. */
export const TOKEN_KEY = 'clew.token';

/** @typedef {Pick<Storage, 'getItem' | 'setItem' | 'removeItem'>} TokenStore */

/**
 * The token to store from what was pasted: trimmed, a leading `Bearer `
 * dropped; `null` when empty or holding whitespace (not a header value).
 * @param {string} input
 * @returns {string | null}
 */
export function normalizeToken(input) {
  const t = input.trim().replace(/^bearer(\s+|$)/i, '');
  return t && !/[\s\u0000-\u001f\u007f]/.test(t) ? t : null;
}

/** @param {TokenStore} store @returns {string | null} */
export function readToken(store) {
  return store.getItem(TOKEN_KEY);
}

/** @param {TokenStore} store @param {string} token */
export function saveToken(store, token) {
  store.setItem(TOKEN_KEY, token);
}

/** @param {TokenStore} store */
export function clearToken(store) {
  store.removeItem(TOKEN_KEY);
}

/**
 * The headers of an API call: JSON, and the token when there is one.
 * @param {TokenStore} store
 * @returns {Record<string, string>}
 */
export function authHeaders(store) {
  const token = readToken(store);
  return token ? { accept: 'application/json', authorization: `Bearer ${token}` } : { accept: 'application/json' };
}

/**
 * The sign-in page's URL, returning to `here` (a path with its query).
 * @param {string} here
 */
export function signInUrl(here) {
  return here.startsWith('/signin') ? '/signin' : `/signin?next=${encodeURIComponent(here)}`;
}

/**
 * Where to go after signing in: `next` when it is a path of this site
 * (never another origin, `//host` or `/\host`), else the search page.
 * @param {string | null} next
 */
export function safeNext(next) {
  if (!next || !next.startsWith('/') || next.startsWith('//') || next.startsWith('/\\')) return '/search';
  return next.startsWith('/signin') ? '/search' : next;
}
