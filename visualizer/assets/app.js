// clew's web UI: a small single-page app in plain JavaScript (no build step,
// no third-party code). Every value from the server is put in the page with
// textContent or SVG attributes, never as HTML.
'use strict';

(() => {
  const $main = document.getElementById('main');
  const $error = document.getElementById('error');
  const ROW = 24; // px, must match --row in app.css
  const NS = 'http://www.w3.org/2000/svg';

  // Uncaught errors are shown, never a blank page (and counted for the tests).
  window.__clewErrors = [];
  window.addEventListener('error', (e) => {
    window.__clewErrors.push(String(e.message));
    showError(new Error('The page failed: ' + e.message));
  });
  window.addEventListener('unhandledrejection', (e) => {
    window.__clewErrors.push(String(e.reason));
    showError(e.reason instanceof Error ? e.reason : new Error(String(e.reason)));
  });

  // ---- DOM helpers ------------------------------------------------------

  function el(tag, attrs, ...kids) {
    const n = document.createElement(tag);
    setAttrs(n, attrs);
    append(n, kids);
    return n;
  }

  function sv(tag, attrs, ...kids) {
    const n = document.createElementNS(NS, tag);
    setAttrs(n, attrs);
    append(n, kids);
    return n;
  }

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

  function append(n, kids) {
    for (const k of kids.flat(Infinity)) {
      if (k === null || k === undefined || k === false) continue;
      n.append(k instanceof Node ? k : document.createTextNode(String(k)));
    }
  }

  function link(href, text, attrs) {
    return el('a', Object.assign({ href, 'data-nav': true, text }, attrs || {}));
  }

  // ---- formatting -------------------------------------------------------

  function fmtDur(us) {
    if (!isFinite(us)) return '–';
    const a = Math.abs(us);
    if (a < 1000) return `${+us.toFixed(a < 10 ? 2 : 0)}µs`;
    if (a < 1e6) return `${+(us / 1000).toFixed(2)}ms`;
    if (a < 6e7) return `${+(us / 1e6).toFixed(2)}s`;
    return `${+(us / 6e7).toFixed(1)}min`;
  }

  function fmtTime(us) {
    const d = new Date(us / 1000);
    const pad = (x, n = 2) => String(x).padStart(n, '0');
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
      `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
  }

  function pct(x) {
    return `${(100 * x).toFixed(x < 0.1 && x > 0 ? 1 : 0)}%`;
  }

  function colorOf(service) {
    let h = 0;
    for (let i = 0; i < service.length; i++) h = (h * 31 + service.charCodeAt(i)) >>> 0;
    return `hsl(${h % 360}, 55%, 50%)`;
  }

  // ---- API --------------------------------------------------------------

  class ApiError extends Error {
    constructor(msg, status) {
      super(msg);
      this.status = status;
    }
  }

  async function api(path) {
    let resp;
    try {
      resp = await fetch(path, { headers: { accept: 'application/json' } });
    } catch (e) {
      throw new ApiError(`Cannot reach clew's visualizer (${e.message}).`, 0);
    }
    let body = null;
    try {
      body = await resp.json();
    } catch (_) {
      // handled below
    }
    const errs = body && Array.isArray(body.errors) ? body.errors : null;
    if (!resp.ok || (errs && errs.length)) {
      const msg = errs && errs[0] && errs[0].msg ? errs[0].msg : resp.statusText || 'request failed';
      throw new ApiError(`The collector answered ${resp.status}: ${msg}`, resp.status);
    }
    if (!body) throw new ApiError('The collector sent an answer that is not JSON.', resp.status);
    return body.data;
  }

  function showError(e) {
    $error.hidden = false;
    $error.textContent = e && e.message ? e.message : String(e);
  }

  function clearError() {
    $error.hidden = true;
    $error.textContent = '';
  }

  // ---- routing ----------------------------------------------------------

  let token = 0;
  let uploaded = null;

  const routes = [
    [/^\/(?:search)?$/, searchPage],
    [/^\/trace\/upload$/, uploadedPage],
    [/^\/trace\/([0-9a-fA-F]{1,32})$/, tracePage],
    [/^\/dependencies$/, depsPage],
    [/^\/services(?:\/([^/]+))?$/, servicesPage],
    [/^\/insights$/, insightsPage],
  ];

  function navigate(url, replace) {
    history[replace ? 'replaceState' : 'pushState'](null, '', url);
    route();
  }

  async function route() {
    clearError();
    const my = ++token;
    $main.replaceChildren();
    document.querySelectorAll('header nav a').forEach((a) => {
      a.classList.toggle('active', location.pathname.startsWith(a.getAttribute('href')));
    });
    const path = location.pathname;
    for (const [re, page] of routes) {
      const m = path.match(re);
      if (m) {
        try {
          await page(m, my);
        } catch (e) {
          if (my === token) {
            showError(e);
            $main.querySelectorAll('.loading').forEach((n) => n.remove());
          }
        }
        return;
      }
    }
    $main.append(el('div', { class: 'panel' }, el('h2', { text: 'Page not found' }), link('/search', 'Search traces')));
  }

  const stale = (my) => my !== token;

  document.addEventListener('click', (e) => {
    const a = e.target.closest('a[data-nav]');
    if (!a || e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey) return;
    e.preventDefault();
    navigate(a.getAttribute('href'));
  });
  window.addEventListener('popstate', route);

  document.getElementById('upload').addEventListener('change', async (e) => {
    const file = e.target.files && e.target.files[0];
    e.target.value = '';
    if (!file) return;
    try {
      uploaded = parseUpload(JSON.parse(await file.text()));
      navigate('/trace/upload');
    } catch (err) {
      showError(new Error(`Cannot open ${file.name}: ${err.message}`));
    }
  });

  function parseUpload(obj) {
    let trace = null;
    let analysis = null;
    if (obj && obj.format === 'clew-trace/v1') {
      trace = obj.trace;
      analysis = obj.analysis || null;
    } else if (obj && Array.isArray(obj.data)) {
      trace = obj.data[0];
    } else if (obj && Array.isArray(obj.spans)) {
      trace = obj;
    }
    if (!trace || !Array.isArray(trace.spans) || !trace.processes) {
      throw new Error('not a trace (expected clew\'s download or Jaeger\'s JSON)');
    }
    return { trace, analysis };
  }

  // ---- search -----------------------------------------------------------

  const LOOKBACKS = ['5m', '15m', '1h', '6h', '12h', '24h', '48h', '168h'];

  function parseTags(s) {
    const out = {};
    const re = /([^\s=]+)=("([^"]*)"|\S*)/g;
    let m;
    while ((m = re.exec(s))) out[m[1]] = m[3] !== undefined ? m[3] : m[2];
    return out;
  }

  function toMicros(local) {
    const t = Date.parse(local);
    return isNaN(t) ? null : t * 1000;
  }

  async function searchPage(_m, my) {
    const q = new URLSearchParams(location.search);
    const field = (name, input) => el('label', {}, name, input);
    const service = el('select', { name: 'service', id: 'f-service' }, el('option', { value: '', text: '(any service)' }));
    const operation = el('select', { name: 'operation', id: 'f-operation' }, el('option', { value: '', text: '(any operation)' }));
    const tags = el('input', { name: 'tags', id: 'f-tags', placeholder: 'http.status_code=500 error=true', value: q.get('tags') || '' });
    const minD = el('input', { name: 'minDuration', id: 'f-min', placeholder: 'e.g. 10ms', value: q.get('minDuration') || '' });
    const maxD = el('input', { name: 'maxDuration', id: 'f-max', placeholder: 'e.g. 2s', value: q.get('maxDuration') || '' });
    const lookback = el('select', { name: 'lookback', id: 'f-lookback' },
      LOOKBACKS.map((l) => el('option', { value: l, text: `last ${l}` })),
      el('option', { value: 'custom', text: 'custom range' }));
    lookback.value = q.get('lookback') || '1h';
    const start = el('input', { type: 'datetime-local', step: 1, name: 'start', value: q.get('start') || '' });
    const end = el('input', { type: 'datetime-local', step: 1, name: 'end', value: q.get('end') || '' });
    const limit = el('input', { type: 'number', min: 1, max: 1000, name: 'limit', id: 'f-limit', value: q.get('limit') || '20' });
    const custom = [field('From', start), field('To', end)];
    const showCustom = () => custom.forEach((c) => { c.hidden = lookback.value !== 'custom'; });
    lookback.addEventListener('change', showCustom);
    showCustom();
    const form = el('form', { class: 'search panel', id: 'search-form' },
      field('Service', service), field('Operation', operation), field('Tags (key=value …)', tags),
      field('Min duration', minD), field('Max duration', maxD), field('Time range', lookback), custom,
      field('Limit', limit), el('button', { class: 'primary', type: 'submit', id: 'f-submit', text: 'Find traces' }));
    const results = el('div', { id: 'results' });
    $main.append(form, results);

    form.addEventListener('submit', (e) => {
      e.preventDefault();
      const p = new URLSearchParams();
      for (const [k, v] of new FormData(form)) if (v !== '') p.set(k, v);
      if (p.get('lookback') !== 'custom') { p.delete('start'); p.delete('end'); }
      navigate('/search?' + p.toString());
    });

    async function loadOps() {
      operation.replaceChildren(el('option', { value: '', text: '(any operation)' }));
      if (!service.value) return;
      const ops = await api(`/api/services/${encodeURIComponent(service.value)}/operations`);
      for (const o of ops) operation.append(el('option', { value: o, text: o }));
    }
    service.addEventListener('change', () => loadOps().catch(showError));

    try {
      const services = await api('/api/services');
      if (stale(my)) return;
      for (const s of services) service.append(el('option', { value: s, text: s }));
      service.value = q.get('service') || '';
      await loadOps();
      operation.value = q.get('operation') || '';
    } catch (e) {
      showError(e);
    }
    if (stale(my)) return;

    // Search at once: the landing page shows the last hour.
    const p = new URLSearchParams();
    for (const k of ['service', 'operation', 'minDuration', 'maxDuration', 'limit']) if (q.get(k)) p.set(k, q.get(k));
    if (!p.has('limit')) p.set('limit', '20');
    if (q.get('tags')) p.set('tags', JSON.stringify(parseTags(q.get('tags'))));
    if (lookback.value === 'custom') {
      const s = toMicros(start.value);
      const e = toMicros(end.value);
      if (s !== null) p.set('start', s);
      if (e !== null) p.set('end', e);
    } else {
      p.set('lookback', lookback.value);
    }
    results.append(el('div', { class: 'loading', text: 'Searching…' }));
    const traces = await api('/api/traces?' + p.toString());
    if (stale(my)) return;
    results.replaceChildren();
    const rows = traces.map(summarize).sort((a, b) => b.start - a.start);
    if (!rows.length) {
      results.append(el('div', { class: 'panel note', id: 'no-results', text: 'No traces match. Widen the time range or remove a filter.' }));
      return;
    }
    results.append(el('div', { class: 'panel' }, el('h3', { text: `${rows.length} trace${rows.length === 1 ? '' : 's'}` }), scatter(rows)));
    const list = el('div', { class: 'panel', id: 'result-list' });
    for (const r of rows) {
      list.append(el('div', { class: 'result', data: { traceId: r.id } },
        link(`/trace/${r.id}`, `${r.rootService}: ${r.rootOp}`, { class: 'title' }),
        el('div', { class: 'dur', text: fmtDur(r.duration) }),
        el('div', { class: 'chips' },
          el('span', { class: 'badge', text: `${r.spans} spans` }),
          r.errors ? el('span', { class: 'badge error', text: `${r.errors} error${r.errors === 1 ? '' : 's'}` }) : null,
          [...r.services.entries()].map(([s, n]) => el('span', { class: 'chip', vars: { '--c': colorOf(s) }, text: `${s} (${n})` }))),
        el('div', { class: 'note', text: fmtTime(r.start) })));
    }
    results.append(list);
  }

  function isError(span) {
    return span.tags.some((t) => t.key === 'error' && (t.value === true || t.value === 'true'));
  }

  function parentOf(span) {
    const r = (span.references || []).find((x) => x.refType === 'CHILD_OF');
    return r ? r.spanID : null;
  }

  function summarize(t) {
    const ids = new Set(t.spans.map((s) => s.spanID));
    let start = Infinity;
    let end = -Infinity;
    let root = null;
    let errors = 0;
    const services = new Map();
    for (const s of t.spans) {
      start = Math.min(start, s.startTime);
      end = Math.max(end, s.startTime + s.duration);
      const p = parentOf(s);
      if ((!p || !ids.has(p)) && (!root || s.startTime < root.startTime)) root = s;
      if (isError(s)) errors++;
      const svc = (t.processes[s.processID] || {}).serviceName || '?';
      services.set(svc, (services.get(svc) || 0) + 1);
    }
    return {
      id: t.traceID, start, duration: end - start, spans: t.spans.length, errors, services,
      rootService: root ? (t.processes[root.processID] || {}).serviceName : '?',
      rootOp: root ? root.operationName : '?',
    };
  }

  function scatter(rows) {
    const W = 1000;
    const H = 220;
    const pad = { l: 60, r: 12, t: 10, b: 26 };
    const t0 = Math.min(...rows.map((r) => r.start));
    const t1 = Math.max(...rows.map((r) => r.start));
    const dMax = Math.max(...rows.map((r) => r.duration), 1);
    const x = (t) => pad.l + (t1 === t0 ? 0.5 : (t - t0) / (t1 - t0)) * (W - pad.l - pad.r);
    const y = (d) => H - pad.b - (d / dMax) * (H - pad.t - pad.b);
    const g = sv('svg', { class: 'scatter', id: 'scatter', viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: 'none' });
    const axis = sv('g', { class: 'axis' },
      sv('line', { x1: pad.l, x2: W - pad.r, y1: H - pad.b, y2: H - pad.b }),
      sv('line', { x1: pad.l, x2: pad.l, y1: pad.t, y2: H - pad.b }),
      sv('text', { x: pad.l - 6, y: pad.t + 8, 'text-anchor': 'end', text: fmtDur(dMax) }),
      sv('text', { x: pad.l - 6, y: H - pad.b, 'text-anchor': 'end', text: '0' }),
      sv('text', { x: pad.l, y: H - 8, text: fmtTime(t0) }),
      sv('text', { x: W - pad.r, y: H - 8, 'text-anchor': 'end', text: fmtTime(t1) }));
    g.append(axis);
    for (const r of rows) {
      const c = sv('circle', { cx: x(r.start), cy: y(r.duration), r: 5, class: r.errors ? 'error' : '', data: { traceId: r.id } },
        sv('title', { text: `${r.rootService}: ${r.rootOp}\n${fmtDur(r.duration)} · ${r.spans} spans\n${fmtTime(r.start)}` }));
      c.addEventListener('click', () => navigate(`/trace/${r.id}`));
      g.append(c);
    }
    return g;
  }

  // ---- trace view -------------------------------------------------------

  async function tracePage(m, my) {
    const id = m[1].toLowerCase();
    $main.append(el('div', { class: 'loading', text: 'Loading trace…' }));
    const t0 = performance.now();
    const analysisP = api(`/api/clew/traces/${id}/analysis`).catch((e) => ({ error: e }));
    const data = await api(`/api/traces/${id}`);
    if (stale(my)) return;
    document.body.dataset.traceFetchMs = String(Math.round(performance.now() - t0));
    const view = new TraceView(data[0], { id });
    $main.replaceChildren(view.root);
    view.afterMount();
    document.body.dataset.traceRenderMs = String(Math.round(performance.now() - t0));
    const analysis = await analysisP;
    if (stale(my)) return;
    if (analysis.error) view.analysisFailed(analysis.error);
    else view.setAnalysis(analysis);
    document.body.dataset.analysisRenderMs = String(Math.round(performance.now() - t0));
  }

  async function uploadedPage() {
    if (!uploaded) {
      $main.append(el('div', { class: 'panel' }, el('h2', { text: 'No uploaded trace' }),
        el('p', { class: 'note', text: 'Use "Upload trace JSON" above to open a trace saved with Download JSON (or Jaeger\'s JSON).' })));
      return;
    }
    const view = new TraceView(uploaded.trace, { uploaded: true });
    $main.replaceChildren(view.root);
    view.afterMount();
    if (uploaded.analysis) view.setAnalysis(uploaded.analysis);
    else view.analysisFailed(new Error('The file has no clew analysis (critical path, clock skew): it was not saved by clew.'));
  }

  class TraceView {
    constructor(trace, opts) {
      this.trace = trace;
      this.opts = opts;
      this.analysis = null;
      this.corrected = false;
      this.collapsed = new Set();
      this.critical = new Map(); // spanID → [[startUs, endUs] relative to trace start]
      this.selected = new URLSearchParams(location.search).get('span');
      this.buildModel();
      this.buildDom();
    }

    buildModel() {
      const t = this.trace;
      this.byId = new Map();
      this.spans = t.spans.map((s) => {
        const proc = t.processes[s.processID] || { serviceName: '?', tags: [] };
        const kind = (s.tags.find((x) => x.key === 'span.kind') || {}).value || '';
        const span = {
          id: s.spanID, parentId: parentOf(s), op: s.operationName, service: proc.serviceName,
          rawStart: s.startTime, start: s.startTime, dur: s.duration, raw: s, proc, kind,
          error: isError(s), children: [], depth: 0, color: colorOf(proc.serviceName),
        };
        this.byId.set(span.id, span);
        return span;
      });
      this.roots = [];
      for (const s of this.spans) {
        const p = s.parentId && this.byId.get(s.parentId);
        if (p && p !== s) p.children.push(s);
        else this.roots.push(s);
      }
      const byStart = (a, b) => a.start - b.start;
      this.roots.sort(byStart);
      for (const s of this.spans) s.children.sort(byStart);
      this.services = [...new Set(this.spans.map((s) => s.service))];
      this.retime();
    }

    // Positions come from the raw timestamps, or the corrected ones when
    // the user asked for the proposed clock correction.
    retime() {
      const off = new Map();
      if (this.corrected && this.analysis) {
        for (const o of this.analysis.causal.offsets) off.set(o.service, o.offsetUs);
      }
      // Loops, not Math.min(...spread): a huge trace would overflow the stack.
      this.t0 = Infinity;
      this.t1 = -Infinity;
      this.rawT0 = Infinity;
      for (const s of this.spans) {
        s.start = s.rawStart + (off.get(s.service) || 0);
        this.t0 = Math.min(this.t0, s.start);
        this.t1 = Math.max(this.t1, s.start + s.dur);
        this.rawT0 = Math.min(this.rawT0, s.rawStart);
      }
      if (!this.spans.length) this.t0 = this.t1 = this.rawT0 = 0;
      this.total = Math.max(this.t1 - this.t0, 1);
    }

    flatten() {
      const rows = [];
      const stack = this.roots.slice().reverse().map((s) => [s, 0]);
      const seen = new Set();
      while (stack.length) {
        const [s, d] = stack.pop();
        if (seen.has(s)) continue; // cyclic parent ids
        seen.add(s);
        s.depth = d;
        rows.push(s);
        if (!this.collapsed.has(s.id)) {
          for (let i = s.children.length - 1; i >= 0; i--) stack.push([s.children[i], d + 1]);
        }
      }
      this.rows = rows;
      this.spacer.style.height = `${rows.length * ROW}px`;
    }

    buildDom() {
      const root = this.roots[0];
      const id = this.trace.traceID;
      let depth = 0;
      const walk = [[this.roots, 1]];
      while (walk.length) {
        const [list, d] = walk.pop();
        for (const s of list) {
          depth = Math.max(depth, d);
          if (s.children.length) walk.push([s.children, d + 1]);
        }
      }
      this.analysisBox = el('div', { id: 'analysis' });
      this.panel = el('aside', { class: 'span-panel', id: 'span-panel', hidden: true });
      this.ruler = el('div', { class: 'ruler' });
      this.spacer = el('div', { class: 'wf-spacer' });
      this.scroller = el('div', { class: 'wf-scroll', id: 'wf-scroll' }, this.spacer);
      this.scroller.addEventListener('scroll', () => this.schedule());
      this.correctedBanner = el('div', { class: 'corrected-banner', id: 'corrected-banner', hidden: true });
      this.root = el('div', { class: 'trace', id: 'trace-view', data: { traceId: id } },
        el('div', { class: 'panel' },
          el('div', { class: 'trace-head' },
            el('div', {},
              el('h2', { id: 'trace-title', text: root ? `${root.service}: ${root.op}` : 'Trace' }),
              el('div', { class: 'meta' },
                el('span', {}, 'Trace ', el('code', { text: id })),
                el('span', { text: `Start ${fmtTime(this.t0)}` }),
                el('span', { id: 'trace-duration', text: `Duration ${fmtDur(this.total)}` }),
                el('span', { id: 'trace-spans', text: `${this.spans.length} spans` }),
                el('span', { text: `${this.services.length} services` }),
                el('span', { text: `depth ${depth}` }),
                this.opts.uploaded ? el('span', { class: 'badge', text: 'uploaded file' }) : null)),
            el('div', { class: 'actions' },
              el('button', { id: 'expand-all', text: 'Expand all', onclick: () => { this.collapsed.clear(); this.refresh(); } }),
              el('button', { id: 'collapse-all', text: 'Collapse all', onclick: () => { for (const s of this.spans) if (s.children.length) this.collapsed.add(s.id); for (const r of this.roots) this.collapsed.delete(r.id); this.refresh(); } }),
              el('button', { id: 'download', text: 'Download JSON', onclick: () => this.download() }))),
          this.analysisBox),
        this.correctedBanner,
        el('div', { class: 'trace-body' },
          el('div', { class: 'waterfall' }, el('div', { class: 'wf-head' }, el('div', { class: 'name', text: 'Service · operation' }), this.ruler), this.scroller),
          this.panel));
      this.drawRuler();
      this.flatten();
    }

    afterMount() {
      if (this.selected && this.byId.has(this.selected)) this.select(this.selected, true);
      else this.renderRows();
    }

    drawRuler() {
      this.ruler.replaceChildren(...[0, 0.25, 0.5, 0.75, 1].map((f) => el('span', { class: 'tick', style: { left: `${f * 100}%` }, text: fmtDur(f * this.total) })));
    }

    refresh() {
      this.flatten();
      this.renderRows();
    }

    schedule() {
      if (this.pending) return;
      this.pending = true;
      requestAnimationFrame(() => {
        this.pending = false;
        this.renderRows();
      });
    }

    renderRows() {
      const top = this.scroller.scrollTop;
      const h = this.scroller.clientHeight || 600;
      const first = Math.max(0, Math.floor(top / ROW) - 10);
      const last = Math.min(this.rows.length, Math.ceil((top + h) / ROW) + 10);
      const out = [];
      for (let i = first; i < last; i++) out.push(this.rowEl(this.rows[i], i));
      this.spacer.replaceChildren(...out);
    }

    rowEl(s, i) {
      const x = (t) => `${((t - this.t0) / this.total) * 100}%`;
      const w = (d) => `${(d / this.total) * 100}%`;
      const crit = this.critical.get(s.id);
      const cls = ['row'];
      if (crit) cls.push('critical');
      if (s.error) cls.push('error');
      if (s.id === this.selected) cls.push('selected');
      const toggle = el('button', {
        class: s.children.length ? 'toggle' : 'toggle leaf',
        text: this.collapsed.has(s.id) ? '▸' : '▾',
        title: s.children.length ? `${s.children.length} children` : null,
        'aria-label': 'collapse or expand',
      });
      toggle.addEventListener('click', (e) => {
        e.stopPropagation();
        if (this.collapsed.has(s.id)) this.collapsed.delete(s.id);
        else this.collapsed.add(s.id);
        this.refresh();
      });
      const timeline = el('div', { class: 'timeline' },
        el('div', { class: 'bar', vars: { '--c': s.color }, style: { left: x(s.start), width: w(s.dur) } }));
      if (crit) {
        // Critical sections are relative to the raw trace start (analysis).
        const shift = this.analysisT0 !== undefined ? this.analysisT0 + (s.start - s.rawStart) : this.t0;
        for (const [a, b] of crit) timeline.append(el('div', { class: 'crit', style: { left: x(shift + a), width: w(b - a) } }));
      }
      const endFrac = (s.start + s.dur - this.t0) / this.total;
      // The duration after the bar, or inside its end when the bar reaches the right edge.
      timeline.append(el('span', { class: 'dur', style: endFrac > 0.85 ? { right: `calc(${(1 - endFrac) * 100}% + 4px)` } : { left: `calc(${x(s.start + s.dur)} + 4px)` }, text: fmtDur(s.dur) }));
      const row = el('div', { class: cls.join(' '), style: { top: `${i * ROW}px` }, data: { spanId: s.id }, title: `${s.service}: ${s.op} — ${fmtDur(s.dur)}` },
        el('div', { class: 'name', style: { paddingLeft: `${Math.min(s.depth, 40) * 12 + 2}px` } },
          toggle, el('span', { class: 'svc', vars: { '--c': s.color }, text: s.service }), el('span', { class: 'op', text: s.op })),
        timeline);
      row.addEventListener('click', () => this.select(s.id));
      return row;
    }

    select(id, scroll) {
      const s = this.byId.get(id);
      if (!s) return;
      this.selected = id;
      // Expand the ancestors so the span is visible.
      let changed = false;
      for (let p = this.byId.get(s.parentId), n = 0; p && n < this.spans.length; p = this.byId.get(p.parentId), n++) {
        if (this.collapsed.delete(p.id)) changed = true;
      }
      if (changed) this.flatten();
      if (scroll) {
        const i = this.rows.indexOf(s);
        if (i >= 0) this.scroller.scrollTop = Math.max(0, i * ROW - this.scroller.clientHeight / 3);
      }
      this.renderRows();
      const url = new URL(location.href);
      if (!this.opts.uploaded) {
        url.searchParams.set('span', id);
        history.replaceState(null, '', url.pathname + url.search);
      }
      this.renderPanel(s);
    }

    selfTime(s) {
      const a = s.start;
      const b = s.start + s.dur;
      const iv = s.children.map((c) => [Math.max(a, c.start), Math.min(b, c.start + c.dur)]).filter(([x, y]) => y > x).sort((p, q) => p[0] - q[0]);
      let covered = 0;
      let cur = null;
      for (const [x, y] of iv) {
        if (cur && x <= cur[1]) cur[1] = Math.max(cur[1], y);
        else {
          if (cur) covered += cur[1] - cur[0];
          cur = [x, y];
        }
      }
      if (cur) covered += cur[1] - cur[0];
      return Math.max(0, s.dur - covered);
    }

    renderPanel(s) {
      const tag = (k) => s.raw.tags.find((t) => t.key === k);
      const val = (t) => (t ? String(t.value) : '');
      const kv = (pairs) => el('dl', { class: 'kv' }, pairs.flatMap(([k, v]) => [el('dt', { text: k }), el('dd', {}, v)]));
      const crit = this.critical.get(s.id);
      const critUs = crit ? crit.reduce((a, [x, y]) => a + (y - x), 0) : 0;
      const status = val(tag('otel.status_code')) || 'UNSET';
      const desc = val(tag('otel.status_description'));
      const hidden = new Set(['span.kind', 'otel.status_code', 'otel.status_description', 'error', 'clew.clock.start', 'clew.clock.end']);
      const attrs = s.raw.tags.filter((t) => !hidden.has(t.key));
      const node = (s.proc.tags.find((t) => t.key === 'clew.node') || {}).value;
      const deep = `/trace/${this.trace.traceID}?span=${s.id}`;
      const order = this.analysis && this.analysis.causal ? this.analysis.causal.order.filter((e) => e.spanID === s.id) : [];
      const skew = this.analysis && this.analysis.causal ? this.analysis.causal.violations.filter((v) => v.before.spanID === s.id || v.after.spanID === s.id) : [];
      this.panel.hidden = false;
      this.panel.dataset.spanId = s.id;
      this.panel.replaceChildren(
        el('div', { class: 'trace-head' }, el('h3', { id: 'panel-op', text: s.op }), el('button', { text: '×', title: 'Close', onclick: () => { this.panel.hidden = true; } })),
        kv([
          ['Service', el('span', { class: 'chip', vars: { '--c': s.color }, text: s.service })],
          ['Span ID', el('code', { text: s.id })],
          ['Parent', s.parentId ? (this.byId.has(s.parentId) ? el('a', { href: '#', text: s.parentId, onclick: (e) => { e.preventDefault(); this.select(s.parentId, true); } }) : `${s.parentId} (not in trace)`) : 'none (root)'],
          ['Kind', s.kind || 'unspecified'],
          ['Status', el('span', { id: 'panel-status', class: s.error ? 'badge error' : 'badge', text: desc ? `${status}: ${desc}` : status })],
          ['Start', `${fmtTime(s.rawStart)} (+${fmtDur(s.rawStart - this.rawT0)})`],
          ['Duration', fmtDur(s.dur)],
          ['Self time', fmtDur(this.selfTime(s))],
          ['Critical path', crit ? `${fmtDur(critUs)} on the critical path` : 'not on the critical path'],
          ['Deep link', el('a', { href: deep, 'data-nav': true, text: 'link to this span' })],
        ]),
        el('section', { id: 'panel-clocks' }, el('h4', { text: 'Vector clocks' }),
          kv([
            ['Node', node ? el('code', { text: node }) : 'none'],
            ['At start', tag('clew.clock.start') ? el('code', { text: val(tag('clew.clock.start')) }) : 'none'],
            ['At end', tag('clew.clock.end') ? el('code', { text: val(tag('clew.clock.end')) }) : 'none'],
            ...order.map((e) => [`Causal rank (${e.event})`, `${e.rank} of ${this.analysis.causal.order.length}`]),
          ]),
          skew.length ? el('div', { class: 'warning', id: 'panel-skew' }, `Clock skew evidence for this span (${skew.length}):`,
            skew.slice(0, 5).map((v) => el('div', { class: 'mono', text: `${v.after.service} ${v.after.event} @ ${v.after.wallNs} ns happened after ${v.before.service} ${v.before.event} @ ${v.before.wallNs} ns (stamped ${fmtDur(v.byUs)} earlier)` }))) : null),
        el('section', {}, el('h4', { text: 'Raw timestamps' }),
          kv([['startTime (µs since epoch)', el('code', { text: String(s.raw.startTime) })], ['duration (µs)', el('code', { text: String(s.raw.duration) })]])),
        el('section', { id: 'panel-attributes' }, el('h4', { text: `Attributes (${attrs.length})` }),
          attrs.length ? kv(attrs.map((t) => [t.key, el('span', { class: 'mono', text: String(t.value) })])) : el('div', { class: 'note', text: 'none' })),
        el('section', { id: 'panel-events' }, el('h4', { text: `Events (${s.raw.logs.length})` }),
          s.raw.logs.length ? s.raw.logs.map((l) => el('div', { class: 'anomaly' },
            el('div', { class: 'note', text: `+${fmtDur(l.timestamp - s.rawStart)} · ${fmtTime(l.timestamp)}` }),
            kv(l.fields.map((f) => [f.key, el('span', { class: 'mono', text: String(f.value) })])))) : el('div', { class: 'note', text: 'none' })),
        el('section', {}, el('h4', { text: 'Process' }),
          s.proc.tags.length ? kv(s.proc.tags.map((t) => [t.key, el('span', { class: 'mono', text: String(t.value) })])) : el('div', { class: 'note', text: 'no resource attributes' })));
    }

    analysisFailed(e) {
      this.analysisBox.replaceChildren(el('div', { class: 'warning', id: 'analysis-error', text: `Analysis unavailable: ${e.message}` }));
    }

    setAnalysis(a) {
      this.analysis = a;
      this.analysisT0 = a.bottlenecks.traceStartUs;
      this.critical.clear();
      for (const c of a.bottlenecks.criticalPath) {
        if (!this.critical.has(c.spanID)) this.critical.set(c.spanID, []);
        this.critical.get(c.spanID).push([c.startUs, c.endUs]);
      }
      document.body.dataset.criticalSpans = String(this.critical.size);
      const b = a.bottlenecks;
      const box = [];
      box.push(el('div', { class: 'note', id: 'critical-summary' },
        `Critical path: ${b.criticalPath.length} sections over ${this.critical.size} spans (◆, orange). Time on it by service:`));
      box.push(el('div', { class: 'summary-bars' }, b.services.filter((s) => s.criticalShare > 0).map((s) =>
        el('div', { vars: { '--c': colorOf(s.service) }, style: { width: `${s.criticalShare * 100}%` }, title: `${s.service}: ${fmtDur(s.criticalUs)} (${pct(s.criticalShare)})` }))));
      box.push(el('div', { class: 'chips' }, b.services.filter((s) => s.criticalShare > 0).map((s) =>
        el('span', { class: 'chip', vars: { '--c': colorOf(s.service) }, text: `${s.service} ${pct(s.criticalShare)}` }))));
      box.push(this.selfTimeTables(b));
      const c = a.causal;
      if (c && !c.consistent) {
        box.push(el('div', { class: 'warning', id: 'skew-warning' },
          el('strong', { text: 'Clock skew. ' }), c.explanation,
          el('div', {}, el('button', { id: 'toggle-corrected', text: 'Show corrected timeline', onclick: (e) => this.toggleCorrected(e.target) })),
          el('details', { id: 'skew-evidence' }, el('summary', { text: `Evidence: ${c.violationCount} happened-before pair${c.violationCount === 1 ? '' : 's'} contradicted by wall clocks` }),
            el('table', { class: 'grid' },
              el('tr', {}, ['Service', 'Proposed correction', 'Why'].map((x) => el('th', { text: x }))),
              c.offsets.map((o) => el('tr', {}, el('td', { text: o.service }), el('td', { class: 'num', text: o.reference ? 'reference' : `${o.offsetUs >= 0 ? '+' : ''}${fmtDur(o.offsetUs)}${o.conflict ? ' (conflicting)' : ''}` }), el('td', { text: o.explanation })))),
            el('table', { class: 'grid', id: 'violations' },
              el('tr', {}, ['Happened first', 'raw timestamp (ns) · clock', 'Happened after', 'raw timestamp (ns) · clock', 'Stamped earlier by'].map((x) => el('th', { text: x }))),
              c.violations.map((v) => el('tr', {},
                el('td', {}, this.evLink(v.before)), el('td', {}, el('code', { text: v.before.wallNs }), el('br'), el('code', { text: v.before.clock })),
                el('td', {}, this.evLink(v.after)), el('td', {}, el('code', { text: v.after.wallNs }), el('br'), el('code', { text: v.after.clock })),
                el('td', { class: 'num', text: fmtDur(v.byUs) })))))));
      } else if (c && c.spansWithClocks > 0) {
        box.push(el('div', { class: 'note', id: 'skew-ok', text: c.explanation }));
      }
      this.analysisBox.replaceChildren(...box);
      this.renderRows();
      if (this.selected && this.byId.has(this.selected) && !this.panel.hidden) this.renderPanel(this.byId.get(this.selected));
    }

    /** Self time (a span's time not covered by its children), ranked: by span, service and operation, each with its share of the trace. */
    selfTimeTables(b) {
      const head = (cols) => el('tr', {}, cols.map((x) => el('th', { text: x })));
      const num = (text) => el('td', { class: 'num', text });
      const spanLink = (t) => el('a', { href: `/trace/${this.trace.traceID}?span=${t.spanID}`, text: `${t.service}: ${t.operation}`,
        onclick: (e) => { e.preventDefault(); this.select(t.spanID, true); } });
      return el('details', { id: 'self-time' },
        el('summary', { text: `Self time: ${b.spans.length ? `${b.spans[0].service} "${b.spans[0].operation}" leads with ${pct(b.spans[0].share)} of the trace` : 'no spans'}` }),
        el('table', { class: 'grid', id: 'self-time-spans' },
          head(['Span', 'Self time', 'Share of trace', 'On the critical path']),
          b.spans.map((t) => el('tr', {}, el('td', {}, spanLink(t)), num(fmtDur(t.selfUs)), num(pct(t.share)), num(fmtDur(t.criticalUs))))),
        el('table', { class: 'grid', id: 'self-time-services' },
          head(['Service', 'Spans', 'Self time', 'Share of trace', 'Critical-path share']),
          b.services.map((g) => el('tr', {}, el('td', { text: g.service }), num(String(g.spans)), num(fmtDur(g.selfUs)), num(pct(g.share)), num(pct(g.criticalShare))))),
        el('table', { class: 'grid', id: 'self-time-operations' },
          head(['Operation', 'Spans', 'Self time', 'Share of trace', 'Critical-path share']),
          b.operations.map((g) => el('tr', {}, el('td', { text: `${g.service}: ${g.operation}` }), num(String(g.spans)), num(fmtDur(g.selfUs)), num(pct(g.share)), num(pct(g.criticalShare))))),
        el('div', { class: 'note', text: 'Shares of concurrent spans can add up to more than 100 %; critical-path shares add up to at most 100 %.' }));
    }

    evLink(ev) {
      return el('a', { href: '#', text: `${ev.service}: ${ev.operation} (${ev.event})`, onclick: (e) => { e.preventDefault(); this.select(ev.spanID, true); } });
    }

    toggleCorrected(btn) {
      this.corrected = !this.corrected;
      btn.textContent = this.corrected ? 'Show recorded timestamps' : 'Show corrected timeline';
      this.retime();
      const offs = this.analysis.causal.offsets.filter((o) => o.offsetUs !== 0).map((o) => `${o.service} ${o.offsetUs >= 0 ? '+' : ''}${fmtDur(o.offsetUs)}`);
      this.correctedBanner.hidden = !this.corrected;
      this.correctedBanner.textContent = `Corrected view: bars are drawn with the proposed clock offsets applied (${offs.join(', ')}). Stored timestamps are unchanged; the span panel shows them as recorded.`;
      this.drawRuler();
      this.renderRows();
    }

    download() {
      const bundle = { format: 'clew-trace/v1', trace: this.trace, analysis: this.analysis };
      const blob = new Blob([JSON.stringify(bundle)], { type: 'application/json' });
      const a = el('a', { href: URL.createObjectURL(blob), download: `trace-${this.trace.traceID}.json` });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(a.href), 10000);
    }
  }

  // ---- dependency graph -------------------------------------------------

  const WINDOWS = [['1h', 3600e3], ['6h', 6 * 3600e3], ['24h', 24 * 3600e3], ['7d', 7 * 24 * 3600e3]];

  function windowSelect(current, onChange, id) {
    const s = el('select', { id }, WINDOWS.map(([l]) => el('option', { value: l, text: `last ${l}` })));
    s.value = current;
    s.addEventListener('change', () => onChange(s.value));
    return s;
  }

  async function depsPage(_m, my) {
    const q = new URLSearchParams(location.search);
    const win = WINDOWS.find(([l]) => l === q.get('lookback')) || WINDOWS[2];
    $main.append(el('div', { class: 'toolbar' }, el('h2', { text: 'Service dependencies' }),
      windowSelect(win[0], (v) => navigate(`/dependencies?lookback=${v}`), 'deps-window')));
    const loading = el('div', { class: 'loading', text: 'Loading…' });
    $main.append(loading);
    const g = await api(`/api/clew/dependencies?lookback=${win[1]}`);
    if (stale(my)) return;
    loading.remove();
    if (!g.edges.length) {
      $main.append(el('div', { class: 'panel note', id: 'no-deps', text: `No calls between services in the last ${win[0]}.` }));
      return;
    }
    $main.append(depGraph(g));
    if (g.truncated) $main.append(el('p', { class: 'note', text: `Percentiles from the ${g.traces} most recent traces of the window; call and error counts are exact.` }));
    const table = el('table', { class: 'grid', id: 'deps-table' },
      el('tr', {}, ['Caller', 'Callee', 'Calls', 'Errors', 'Error rate', 'p50', 'p95', 'p99'].map((x, i) => el('th', { class: i > 1 ? 'num' : null, text: x }))),
      g.edges.map((e) => el('tr', { data: { edge: `${e.parent}>${e.child}` } },
        el('td', {}, link(`/services/${encodeURIComponent(e.parent)}`, e.parent)), el('td', {}, link(`/services/${encodeURIComponent(e.child)}`, e.child)),
        el('td', { class: 'num', text: e.callCount }), el('td', { class: 'num', text: e.errorCount }), el('td', { class: 'num', text: pct(e.errorRate) }),
        el('td', { class: 'num', text: e.latencySamples ? fmtDur(e.latency.p50Us) : '–' }),
        el('td', { class: 'num', text: e.latencySamples ? fmtDur(e.latency.p95Us) : '–' }),
        el('td', { class: 'num', text: e.latencySamples ? fmtDur(e.latency.p99Us) : '–' }))));
    $main.append(el('div', { class: 'panel' }, table));
  }

  function depGraph(g) {
    const names = g.services.map((s) => s.service);
    const depth = new Map(names.map((n) => [n, 0]));
    // Longest path from the callers, bounded so a cycle cannot loop.
    for (let k = 0; k < names.length; k++) {
      let moved = false;
      for (const e of g.edges) {
        if (e.parent === e.child) continue;
        const d = depth.get(e.parent) + 1;
        if (d > depth.get(e.child) && d < names.length) {
          depth.set(e.child, d);
          moved = true;
        }
      }
      if (!moved) break;
    }
    const cols = new Map();
    for (const n of names) {
      const d = depth.get(n);
      if (!cols.has(d)) cols.set(d, []);
      cols.get(d).push(n);
    }
    const NW = 170;
    const NH = 46;
    const CX = 360;
    const RY = 120;
    const pos = new Map();
    let maxRows = 1;
    for (const [d, list] of cols) {
      list.sort();
      maxRows = Math.max(maxRows, list.length);
      list.forEach((n, i) => pos.set(n, { x: 30 + d * CX, y: 40 + i * RY }));
    }
    const W = 60 + (Math.max(...cols.keys()) + 1) * CX;
    const H = 60 + maxRows * RY;
    const svgEl = sv('svg', { class: 'depgraph', id: 'depgraph', viewBox: `0 0 ${W} ${H}`, style: { height: `${Math.min(H, 700)}px` } },
      sv('defs', {}, sv('marker', { id: 'arrow', viewBox: '0 0 10 10', refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse' },
        sv('path', { d: 'M0,0 L10,5 L0,10 z', fill: '#7a8699' }))));
    const indeg = new Map();
    const outdeg = new Map();
    for (const e of g.edges) {
      indeg.set(e.child, (indeg.get(e.child) || 0) + 1);
      outdeg.set(e.parent, (outdeg.get(e.parent) || 0) + 1);
    }
    const labels = [];
    const bez = (t, p0, p1, p2, p3) => (1 - t) ** 3 * p0 + 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t * t * p2 + t ** 3 * p3;
    for (const e of g.edges) {
      const a = pos.get(e.parent);
      const b = pos.get(e.child);
      if (!a || !b) continue;
      let d;
      let lx;
      let ly;
      if (b.x > a.x) {
        const x1 = a.x + NW; const y1 = a.y + NH / 2; const x2 = b.x; const y2 = b.y + NH / 2;
        d = `M${x1},${y1} C${x1 + 60},${y1} ${x2 - 60},${y2} ${x2},${y2}`;
        // Label where it cannot collide: near the callee when it has one
        // caller, near the caller when that makes one call, else midway.
        const t = indeg.get(e.child) === 1 ? 0.7 : outdeg.get(e.parent) === 1 ? 0.3 : 0.5;
        lx = bez(t, x1, x1 + 60, x2 - 60, x2); ly = bez(t, y1, y1, y2, y2) - 6;
      } else {
        // A call back to an earlier column (or itself): loop below the boxes.
        const x1 = a.x + NW / 2; const y1 = a.y + NH; const x2 = b.x + NW / 2 + (a === b ? 30 : 0); const y2 = b.y + NH;
        const low = Math.max(y1, y2) + 50;
        d = `M${x1},${y1} C${x1},${low} ${x2},${low} ${x2},${y2}`;
        lx = (x1 + x2) / 2; ly = low - 8;
      }
      const label = `${e.callCount} call${e.callCount === 1 ? '' : 's'} · ${pct(e.errorRate)} err` + (e.latencySamples ? ` · p95 ${fmtDur(e.latency.p95Us)}` : '');
      // Labels go on top of the boxes, so none is hidden behind one.
      labels.push(sv('text', { class: 'edge-label', x: lx, y: ly, 'text-anchor': 'middle', data: { edge: `${e.parent}>${e.child}` }, text: label }));
      svgEl.append(sv('g', { class: e.errorRate > 0.05 ? 'edge bad' : 'edge', data: { edge: `${e.parent}>${e.child}` } },
        sv('path', { d, 'marker-end': 'url(#arrow)' }),
        sv('title', { text: `${e.parent} → ${e.child}\n${e.callCount} calls, ${e.errorCount} errors\np50 ${fmtDur(e.latency.p50Us)} · p95 ${fmtDur(e.latency.p95Us)} · p99 ${fmtDur(e.latency.p99Us)}` })));
    }
    for (const s of g.services) {
      const p = pos.get(s.service);
      const node = sv('g', { class: 'node', data: { service: s.service }, transform: `translate(${p.x},${p.y})` },
        sv('rect', { width: NW, height: NH, rx: 6 }),
        sv('rect', { width: 5, height: NH, fill: colorOf(s.service), stroke: 'none' }),
        sv('text', { x: 14, y: 19, text: s.service }),
        sv('text', { x: 14, y: 36, class: 'sub', text: `${s.spans} spans${s.errors ? ` · ${s.errors} errors` : ''}` }));
      node.addEventListener('click', () => navigate(`/services/${encodeURIComponent(s.service)}`));
      svgEl.append(node);
    }
    svgEl.append(sv('g', { class: 'labels' }, labels));
    return svgEl;
  }

  // ---- service dashboard (RED) -------------------------------------------

  async function servicesPage(m, my) {
    const q = new URLSearchParams(location.search);
    const service = m[1] ? decodeURIComponent(m[1]) : null;
    const win = WINDOWS.find(([l]) => l === q.get('lookback')) || WINDOWS[0];
    const services = await api('/api/services');
    if (stale(my)) return;
    const pick = el('select', { id: 'svc-select' }, el('option', { value: '', text: '(choose a service)' }), services.map((s) => el('option', { value: s, text: s })));
    pick.value = service || '';
    pick.addEventListener('change', () => pick.value && navigate(`/services/${encodeURIComponent(pick.value)}?lookback=${win[0]}`));
    $main.append(el('div', { class: 'toolbar' }, el('h2', { text: 'Service dashboard' }), pick,
      windowSelect(win[0], (v) => navigate(`${location.pathname}?lookback=${v}`), 'svc-window')));
    if (!service) {
      $main.append(el('div', { class: 'panel' }, el('p', { class: 'note', text: services.length ? 'Rate, errors and duration (RED) per service and operation:' : 'No services have sent spans yet.' }),
        el('ul', {}, services.map((s) => el('li', {}, link(`/services/${encodeURIComponent(s)}`, s))))));
      return;
    }
    const stepSec = Math.max(1, Math.round(win[1] / 1000 / 60));
    const red = await api(`/api/clew/red?service=${encodeURIComponent(service)}&lookback=${win[1]}ms&step=${stepSec}s`);
    if (stale(my)) return;
    if (!red.series.length) {
      $main.append(el('div', { class: 'panel note', id: 'no-red', text: `${service} served no requests in the last ${win[0]}.` }));
      return;
    }
    for (const s of red.series) {
      const title = s.operation === null ? `${service} (all operations)` : s.operation;
      $main.append(el('div', { class: 'panel red-series', data: { operation: s.operation === null ? '' : s.operation } },
        el('h3', { text: title }),
        el('div', { class: 'meta' },
          el('span', { text: `${s.requests} requests` }), el('span', { text: `${s.errors} errors (${pct(s.requests ? s.errors / s.requests : 0)})` }),
          el('span', { text: `p50 ${fmtDur(s.latency.p50Us)} · p95 ${fmtDur(s.latency.p95Us)} · p99 ${fmtDur(s.latency.p99Us)}` })),
        el('div', { class: 'charts' },
          chart('Rate (requests/s)', s.buckets, [['rate', 'req/s', '#1f6feb', (v) => v.toFixed(2)]], red.coveredFromUs),
          chart('Errors (share of requests)', s.buckets, [['errorRate', 'errors', '#c62828', pct]], red.coveredFromUs),
          chart('Duration', s.buckets, [['p50Us', 'p50', '#2e7d32', fmtDur], ['p95Us', 'p95', '#f9a825', fmtDur], ['p99Us', 'p99', '#d84315', fmtDur]], red.coveredFromUs))));
    }
    if (red.truncated) {
      $main.append(el('p', { class: 'note', id: 'red-truncated', text: red.coveredFromUs
        ? `Computed from the ${red.traces} most recent traces of the window, which start at ${fmtTime(red.coveredFromUs).slice(11, 19)}: the shaded part before that was not read, and is not drawn as zero.`
        : `Computed from the ${red.traces} most recent traces of the window.` }));
    }
  }

  /** A line chart of `buckets`; buckets that start before `coveredFromUs` (a part of the window that was not read) are shaded and left out of the lines. */
  function chart(title, buckets, lines, coveredFromUs) {
    const W = 320;
    const H = 140;
    const pad = { l: 50, r: 6, t: 8, b: 18 };
    const max = Math.max(1e-9, ...lines.flatMap(([k]) => buckets.map((b) => b[k])));
    const n = Math.max(buckets.length - 1, 1);
    const x = (i) => pad.l + (i / n) * (W - pad.l - pad.r);
    const y = (v) => H - pad.b - (v / max) * (H - pad.t - pad.b);
    const fmt = lines[0][3];
    const g = sv('svg', { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: 'none' },
      sv('g', { class: 'axis' },
        sv('line', { x1: pad.l, x2: W - pad.r, y1: H - pad.b, y2: H - pad.b }),
        sv('text', { x: pad.l - 4, y: pad.t + 8, 'text-anchor': 'end', text: fmt(max) }),
        sv('text', { x: pad.l - 4, y: H - pad.b, 'text-anchor': 'end', text: '0' }),
        buckets.length ? sv('text', { x: pad.l, y: H - 4, text: fmtTime(buckets[0].startUs).slice(11, 19) }) : null,
        buckets.length ? sv('text', { x: W - pad.r, y: H - 4, 'text-anchor': 'end', text: fmtTime(buckets[buckets.length - 1].startUs).slice(11, 19) }) : null));
    const first = coveredFromUs ? buckets.findIndex((b) => b.startUs >= coveredFromUs) : 0;
    const from = first < 0 ? buckets.length : first;
    if (from > 0) {
      g.append(sv('rect', { class: 'not-read', x: pad.l, y: pad.t, width: Math.max(0, x(Math.min(from, n)) - pad.l), height: H - pad.t - pad.b, fill: '#eee' }));
    }
    for (const [k, , color] of lines) {
      g.append(sv('polyline', { stroke: color, points: buckets.slice(from).map((b, i) => `${x(i + from).toFixed(1)},${y(b[k]).toFixed(1)}`).join(' ') }));
    }
    return el('div', { class: 'chart' }, el('div', { class: 'note', text: title }), g,
      el('div', { class: 'legend' }, lines.map(([, label, color]) => el('span', { vars: { '--c': color }, text: label }))));
  }

  // ---- anomalies and bottlenecks ------------------------------------------

  async function insightsPage(_m, my) {
    const q = new URLSearchParams(location.search);
    const win = WINDOWS.find(([l]) => l === q.get('lookback')) || WINDOWS[0];
    const service = q.get('service') || '';
    const go = (lookback, svc) => navigate(`/insights?lookback=${lookback}${svc ? `&service=${encodeURIComponent(svc)}` : ''}`);
    const pick = el('select', { id: 'insights-service' }, el('option', { value: '', text: '(every service)' }));
    pick.addEventListener('change', () => go(win[0], pick.value));
    $main.append(el('div', { class: 'toolbar' }, el('h2', { text: 'Anomalies and bottlenecks' }), pick,
      windowSelect(win[0], (v) => go(v, service), 'insights-window')));
    api('/api/services').then((list) => {
      for (const s of list) pick.append(el('option', { value: s, text: s }));
      pick.value = service;
    }).catch(showError);
    const svcParam = service ? `&service=${encodeURIComponent(service)}` : '';
    const anomBox = el('div', { class: 'panel', id: 'anomalies' }, el('h3', { text: 'Anomalies' }), el('div', { class: 'loading', text: 'Analysing…' }));
    const botBox = el('div', { class: 'panel', id: 'bottlenecks' }, el('h3', { text: 'Bottlenecks of the slowest recent traces' }), el('div', { class: 'loading', text: 'Analysing…' }));
    $main.append(anomBox, botBox);
    const [anom, traces] = await Promise.all([
      api(`/api/clew/anomalies?lookback=${win[1]}ms${svcParam}`).catch((e) => ({ error: e })),
      api(`/api/traces?lookback=${win[1]}ms&limit=100${svcParam}`).catch((e) => ({ error: e })),
    ]);
    if (stale(my)) return;
    anomBox.querySelector('.loading').remove();
    if (anom.error) anomBox.append(el('div', { class: 'warning', text: anom.error.message }));
    else if (!anom.anomalies.length) anomBox.append(el('p', { class: 'note', id: 'no-anomalies', text: `No anomalies in the ${anom.traces} traces of the last ${win[0]}.` }));
    else {
      anomBox.append(el('p', { class: 'note', text: `${anom.anomalies.length} found in ${anom.traces} traces${anom.truncated ? ' (the most recent of the window)' : ''}.` }));
      const kinds = { latencyOutlier: 'slow', errorSpike: 'error spike', newEdge: 'new call', missingChild: 'missing call' };
      for (const a of anom.anomalies) {
        anomBox.append(el('div', { class: 'anomaly', data: { kind: a.kind } },
          el('span', { class: a.kind === 'errorSpike' ? 'badge error' : 'badge', text: kinds[a.kind] || a.kind }), ' ',
          a.message, ' ',
          el('span', { class: 'note', text: fmtTime(a.timeUs) }), ' ',
          a.traceID ? link(`/trace/${a.traceID}${a.spanID ? `?span=${a.spanID}` : ''}`, 'open trace') : null));
      }
    }
    botBox.querySelector('.loading').remove();
    if (traces.error) {
      botBox.append(el('div', { class: 'warning', text: traces.error.message }));
      return;
    }
    const slow = traces.map(summarize).sort((a, b) => b.duration - a.duration).slice(0, 5);
    if (!slow.length) {
      botBox.append(el('p', { class: 'note', text: 'No traces in this window.' }));
      return;
    }
    const analyses = await Promise.all(slow.map((t) => api(`/api/clew/traces/${t.id}/analysis`).catch((e) => ({ error: e }))));
    if (stale(my)) return;
    slow.forEach((t, i) => {
      const a = analyses[i];
      const box = el('div', { class: 'anomaly bottleneck' }, link(`/trace/${t.id}`, `${t.rootService}: ${t.rootOp}`), ` — ${fmtDur(t.duration)}, ${t.spans} spans`);
      if (a.error) box.append(el('div', { class: 'warning', text: a.error.message }));
      else {
        const b = a.bottlenecks;
        box.append(el('div', { class: 'summary-bars' }, b.services.filter((s) => s.criticalShare > 0).map((s) =>
          el('div', { vars: { '--c': colorOf(s.service) }, style: { width: `${s.criticalShare * 100}%` }, title: `${s.service} ${pct(s.criticalShare)}` }))));
        const ops = b.operations.slice().sort((x, y) => y.criticalUs - x.criticalUs).slice(0, 3);
        box.append(el('div', { class: 'note' }, 'Most critical-path time: ',
          ops.map((o, k) => [k ? '; ' : '', `${o.service} "${o.operation}" ${fmtDur(o.criticalUs)} (${pct(o.criticalShare)})`])));
        box.append(el('div', { class: 'note self-time-top' }, 'Most self time: ',
          b.operations.slice(0, 3).map((o, k) => [k ? '; ' : '', `${o.service} "${o.operation}" ${fmtDur(o.selfUs)} (${pct(o.share)})`])));
        if (a.causal && !a.causal.consistent) box.append(el('div', { class: 'warning', text: a.causal.explanation }));
      }
      botBox.append(box);
    });
  }

  route();
})();
