// @ts-check
// Sign-in: the user pastes a bearer token (a static token or an OIDC JWT
// from their identity provider); it is checked against the API, kept in
// sessionStorage and sent on every call. Signing out forgets it.

import * as api from '../api.js';
import { clearToken, normalizeToken, readToken, safeNext, saveToken } from '../auth.js';
import { el } from '../dom.js';

/** @typedef {import('../router.js').Context} Context */

/** @param {Context} ctx */
export async function signInPage(ctx) {
  const next = safeNext(ctx.query.get('next'));
  const input = el('input', { type: 'password', id: 'signin-token', name: 'token', autocomplete: 'off', required: true });
  const note = el('p', { class: 'note', id: 'signin-note', role: 'status' });
  const form = el('form', { class: 'search signin', id: 'signin-form' },
    el('label', {}, 'Access token', input),
    el('button', { class: 'primary', type: 'submit', id: 'signin-submit', text: 'Sign in' }));
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    submit(/** @type {HTMLInputElement} */ (input).value, note, () => ctx.navigate(next, true));
  });
  const signedIn = readToken(sessionStorage) !== null;
  const out = el('button', { type: 'button', id: 'signout', text: 'Sign out', hidden: !signedIn, onclick: () => {
    clearToken(sessionStorage);
    out.hidden = true;
    note.textContent = 'Signed out.';
  } });
  ctx.main.append(el('div', { class: 'panel' }, el('h2', { text: 'Sign in' }),
    el('p', { text: 'This clew requires an access token to read traces. Paste a token given to you, or an ID token from your identity provider.' }),
    form, out, note));
  input.focus();
}

/**
 * Keeps the token if the API accepts it.
 * @param {string} value @param {HTMLElement} note @param {() => void} done
 */
async function submit(value, note, done) {
  const token = normalizeToken(value);
  if (!token) {
    note.textContent = 'Paste a token: one word, no spaces.';
    return;
  }
  saveToken(sessionStorage, token);
  note.textContent = 'Checking…';
  try {
    await api.services();
    done();
  } catch (e) {
    clearToken(sessionStorage);
    note.textContent = e instanceof api.ApiError && e.status === 401
      ? 'That token was refused.'
      : `The token could not be checked: ${e instanceof Error ? e.message : e}`;
  }
}
