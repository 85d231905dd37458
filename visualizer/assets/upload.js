// @ts-check
// Reading a trace file the user uploads (pure).

/** @typedef {import('./api.js').Trace} Trace */
/** @typedef {import('./api.js').Analysis} Analysis */

/**
 * An uploaded trace, with clew's analysis when the file has one.
 * @typedef {{ trace: Trace, analysis: Analysis | null }} Upload
 */

/**
 * Accepts clew's download (`{format: "clew-trace/v1", trace, analysis}`),
 * Jaeger's API answer (`{data: [trace]}`) or a bare Jaeger trace.
 * @param {any} obj the parsed JSON
 * @returns {Upload}
 * @throws {Error} when it is none of those
 */
export function parseUpload(obj) {
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

/**
 * The bundle that "Download JSON" saves and {@link parseUpload} reads.
 * @param {Trace} trace
 * @param {Analysis | null} analysis
 */
export function downloadBundle(trace, analysis) {
  return { format: 'clew-trace/v1', trace, analysis };
}
