// @ts-check
// Routing on the path: each page is a function of a context; a page that
// is still loading when the user moves on sees `stale()` turn true.

import { clearError, el, link, showError } from './dom.js';

/** @typedef {import('./upload.js').Upload} Upload */

/**
 * What lives across pages: the last uploaded trace, and the service
 * colours every page draws with.
 * @typedef {{ uploaded: Upload | null,
 *   colors: () => Promise<import('./colors.js').ColorOf> }} Session
 */

/**
 * @typedef {{
 *   main: HTMLElement, match: RegExpMatchArray, query: URLSearchParams,
 *   navigate: (url: string, replace?: boolean) => void,
 *   stale: () => boolean, session: Session,
 * }} Context
 * @typedef {(ctx: Context) => Promise<void>} Page
 * @typedef {[RegExp, Page][]} Routes
 */

/**
 * @param {HTMLElement} main where pages render
 * @param {Routes} routes the first matching path wins
 * @param {Session} session handed to every page
 */
export function createRouter(main, routes, session) {
  let token = 0;

  /** @param {string} url @param {boolean} [replace] */
  function navigate(url, replace) {
    history[replace ? 'replaceState' : 'pushState'](null, '', url);
    route();
  }

  async function route() {
    clearError();
    const my = ++token;
    main.replaceChildren();
    markActiveNav(location.pathname);
    for (const [re, page] of routes) {
      const match = location.pathname.match(re);
      if (!match) continue;
      const ctx = {
        main, match, query: new URLSearchParams(location.search), navigate,
        stale: () => my !== token, session,
      };
      await runPage(page, ctx);
      return;
    }
    main.append(el('div', { class: 'panel' }, el('h2', { text: 'Page not found' }), link('/search', 'Search traces')));
  }

  /** Follows `a[data-nav]` clicks without a reload; back/forward re-route. */
  function start() {
    document.addEventListener('click', (e) => {
      const a = e.target instanceof Element ? e.target.closest('a[data-nav]') : null;
      if (!a || e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey) return;
      e.preventDefault();
      navigate(a.getAttribute('href') || '/');
    });
    window.addEventListener('popstate', route);
    return route();
  }

  return { navigate, route, start };
}

/**
 * Runs a page; its failure is shown in the banner (unless the user has
 * moved on) and its loading lines are removed.
 * @param {Page} page @param {Context} ctx
 */
async function runPage(page, ctx) {
  try {
    await page(ctx);
  } catch (e) {
    if (ctx.stale()) return;
    showError(e);
    ctx.main.querySelectorAll('.loading').forEach((n) => n.remove());
  }
}

/** @param {string} path */
function markActiveNav(path) {
  document.querySelectorAll('header nav a').forEach((a) => {
    a.classList.toggle('active', path.startsWith(a.getAttribute('href') || '\0'));
  });
}
