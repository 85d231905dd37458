// @ts-check
// clew's web UI: a single-page app of native ES modules (no build step, no
// third-party code). This entry module wires the routes, the upload input
// and the error banner; the pages live in pages/, the waterfall in trace/.

import * as api from './api.js';
import { signInUrl } from './auth.js';
import { sessionColors } from './colors.js';
import { showError } from './dom.js';
import { depsPage } from './pages/dependencies.js';
import { insightsPage } from './pages/insights.js';
import { searchPage } from './pages/search.js';
import { servicesPage } from './pages/services.js';
import { signInPage } from './pages/signin.js';
import { tracePage, uploadedPage } from './pages/trace.js';
import { createRouter } from './router.js';
import { parseUpload } from './upload.js';

/** @type {import('./router.js').Routes} */
const ROUTES = [
  [/^\/(?:search)?$/, searchPage],
  [/^\/trace\/upload$/, uploadedPage],
  [/^\/trace\/([0-9a-fA-F]{1,32})$/, tracePage],
  [/^\/dependencies$/, depsPage],
  [/^\/services(?:\/([^/]+))?$/, servicesPage],
  [/^\/insights$/, insightsPage],
  [/^\/signin$/, signInPage],
];

/** Uncaught errors are shown, never a blank page (and counted for the tests). */
function catchUncaught() {
  /** @type {string[]} */
  const seen = [];
  Object.assign(window, { __clewErrors: seen });
  window.addEventListener('error', (e) => {
    seen.push(String(e.message));
    showError(new Error('The page failed: ' + e.message));
  });
  window.addEventListener('unhandledrejection', (e) => {
    seen.push(String(e.reason));
    showError(e.reason instanceof Error ? e.reason : new Error(String(e.reason)));
  });
}

/**
 * Opens a chosen trace file on /trace/upload.
 * @param {HTMLInputElement} input
 * @param {import('./router.js').Session} session
 * @param {(url: string) => void} navigate
 */
function wireUpload(input, session, navigate) {
  input.addEventListener('change', async () => {
    const file = input.files && input.files[0];
    input.value = '';
    if (!file) return;
    try {
      session.uploaded = parseUpload(JSON.parse(await file.text()));
      navigate('/trace/upload');
    } catch (err) {
      showError(new Error(`Cannot open ${file.name}: ${err instanceof Error ? err.message : err}`));
    }
  });
}

function main() {
  catchUncaught();
  const root = document.getElementById('main');
  const upload = document.getElementById('upload');
  if (!root || !(upload instanceof HTMLInputElement)) throw new Error('index.html lacks #main or #upload');
  /** @type {import('./router.js').Session} */
  const session = { uploaded: null, colors: sessionColors(api.services) };
  const router = createRouter(root, ROUTES, session);
  wireUpload(upload, session, router.navigate);
  // A 401 from the API: sign in, then come back here.
  window.addEventListener('clew:unauthorized', () => {
    if (location.pathname !== '/signin') router.navigate(signInUrl(location.pathname + location.search));
  });
  router.start();
}

main();
