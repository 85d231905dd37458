// @ts-check
// The collector's query API as the visualizer proxies it under /api/: fetch
// wrappers and the shapes of their answers. Every call carries the
// signed-in token; a 401 sends the user to the sign-in page.

import { authHeaders, clearToken } from './auth.js';

/**
 * @typedef {{ key: string, value: unknown, type?: string }} Tag
 * @typedef {{ refType: string, traceID: string, spanID: string }} Reference
 * @typedef {{ timestamp: number, fields: Tag[] }} Log
 * @typedef {{
 *   traceID: string, spanID: string, operationName: string,
 *   references?: Reference[], startTime: number, duration: number,
 *   tags: Tag[], logs: Log[], processID: string,
 * }} Span Jaeger's span; times in microseconds since the epoch.
 * @typedef {{ serviceName: string, tags: Tag[] }} Process
 * @typedef {{ traceID: string, spans: Span[], processes: Record<string, Process> }} Trace
 */

/**
 * @typedef {{ p50Us: number, p95Us: number, p99Us: number }} Latency
 * @typedef {{ spanID: string, startUs: number, endUs: number }} CriticalSection
 * @typedef {{ service: string, spans: number, selfUs: number, share: number,
 *   criticalUs: number, criticalShare: number }} ServiceTime
 * @typedef {ServiceTime & { operation: string }} OperationTime
 * @typedef {{ spanID: string, service: string, operation: string, selfUs: number,
 *   share: number, criticalUs: number }} SpanTime
 * @typedef {{ traceStartUs: number, criticalPath: CriticalSection[],
 *   services: ServiceTime[], operations: OperationTime[], spans: SpanTime[] }} Bottlenecks
 * @typedef {{ spanID: string, service: string, operation: string, event: string,
 *   wallNs: string, clock: string }} ClockEvent
 * @typedef {{ service: string, offsetUs: number, reference: boolean, conflict: boolean,
 *   explanation: string }} Offset
 * @typedef {{ consistent: boolean, explanation: string, spansWithClocks: number,
 *   violationCount: number, offsets: Offset[],
 *   violations: { before: ClockEvent, after: ClockEvent, byUs: number }[],
 *   order: { spanID: string, event: string, rank: number }[] }} Causal
 * @typedef {{ bottlenecks: Bottlenecks, causal: Causal | null }} Analysis
 */

/**
 * Dependencies and RED come from the collectors' roll-ups: every span of
 * the window, over whole buckets from `fromUs` to `toUs`.
 * @typedef {{ parent: string, child: string, callCount: number, errorCount: number,
 *   errorRate: number, latency: Latency }} Edge
 * @typedef {{ service: string, spans: number, errors: number }} GraphService
 * @typedef {{ services: GraphService[], edges: Edge[], fromUs: number, toUs: number }} Dependencies
 * @typedef {{ startUs: number, requests: number, errors: number, rate: number,
 *   errorRate: number, p50Us: number, p95Us: number, p99Us: number }} RedBucket
 * @typedef {{ service: string, operation: string | null, requests: number, errors: number,
 *   latency: Latency, buckets: RedBucket[] }} RedSeries
 * @typedef {{ series: RedSeries[], fromUs: number, toUs: number, stepUs: number }} Red
 * @typedef {{ samples: number, medianUs?: number, madUs?: number, rate?: number }} Baseline
 * @typedef {{ kind: string, service: string, operation: string, spanKind?: string,
 *   message: string, timeUs: number, score: number, value: number, baseline: Baseline,
 *   traceID?: string, spanID?: string }} Anomaly
 * @typedef {{ kind: string, service: string, operation: string, spanKind: string,
 *   count: number, baseline: Baseline, worstValue: number, worstScore: number,
 *   ratio?: number, firstUs: number, lastUs: number, message: string,
 *   examples: Anomaly[] }} AnomalyGroup `examples`: the worst few, worst first
 * @typedef {{ anomalies: Anomaly[], groups?: AnomalyGroup[], structuralFromTraces: number,
 *   structuralTruncated: boolean, fromUs: number, toUs: number }} Anomalies
 *   `groups`: every anomaly, grouped. Slow spans and error spikes come from
 *   the roll-ups (every span from `fromUs` to `toUs`); new and missing calls
 *   from the `structuralFromTraces` most recent traces (`structuralTruncated`:
 *   the window held more).
 */

/** An answer that is not a usable JSON envelope, worded for the banner. */
export class ApiError extends Error {
  /** @param {string} msg @param {number} status */
  constructor(msg, status) {
    super(msg);
    this.status = status;
  }
}

/**
 * GETs `path` and returns the envelope's `data`; throws an {@link ApiError}
 * with the collector's first error message otherwise.
 * @param {string} path
 * @returns {Promise<any>}
 */
export async function getJson(path) {
  let resp;
  try {
    resp = await fetch(path, { headers: authHeaders(sessionStorage) });
  } catch (e) {
    throw new ApiError(`Cannot reach clew's visualizer (${errorText(e)}).`, 0);
  }
  if (resp.status === 401) {
    clearToken(sessionStorage);
    // app.js navigates to the sign-in page.
    window.dispatchEvent(new CustomEvent('clew:unauthorized'));
    throw new ApiError('Sign in to read traces.', 401);
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

/** @param {unknown} e */
function errorText(e) {
  return e instanceof Error ? e.message : String(e);
}

/**
 * A promise that never rejects: the value, or `{ error }`.
 * @template T
 * @param {Promise<T>} p
 * @returns {Promise<T | { error: Error }>}
 */
export function settle(p) {
  return p.catch((e) => ({ error: e instanceof Error ? e : new Error(String(e)) }));
}

const enc = encodeURIComponent;

/** @returns {Promise<string[]>} */
export const services = () => getJson('/api/services');

/** @param {string} service @returns {Promise<string[]>} */
export const operations = (service) => getJson(`/api/services/${enc(service)}/operations`);

/** @param {URLSearchParams} params @returns {Promise<Trace[]>} */
export const searchTraces = (params) => getJson(`/api/traces?${params}`);

/** @param {string} id @returns {Promise<Trace[]>} */
export const trace = (id) => getJson(`/api/traces/${id}`);

/** @param {string} id @returns {Promise<Analysis>} */
export const analysis = (id) => getJson(`/api/clew/traces/${id}/analysis`);

/** @param {number} lookbackMs @returns {Promise<Dependencies>} */
export const dependencies = (lookbackMs) => getJson(`/api/clew/dependencies?lookback=${lookbackMs}`);

/**
 * @param {string} service @param {number} lookbackMs @param {number} stepSec
 * @returns {Promise<Red>}
 */
export const red = (service, lookbackMs, stepSec) =>
  getJson(`/api/clew/red?service=${enc(service)}&lookback=${lookbackMs}ms&step=${stepSec}s`);

/**
 * @param {number} lookbackMs @param {string} service '' for every service
 * @returns {Promise<Anomalies>}
 */
export const anomalies = (lookbackMs, service) =>
  getJson(`/api/clew/anomalies?lookback=${lookbackMs}ms${service ? `&service=${enc(service)}` : ''}`);

/**
 * The most recent traces of the window (up to 100).
 * @param {number} lookbackMs @param {string} service '' for every service
 * @returns {Promise<Trace[]>}
 */
export const recentTraces = (lookbackMs, service) =>
  getJson(`/api/traces?lookback=${lookbackMs}ms&limit=100${service ? `&service=${enc(service)}` : ''}`);
