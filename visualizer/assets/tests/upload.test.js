// @ts-check
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { downloadBundle, parseUpload } from '../upload.js';

const trace = {
  traceID: 'ab',
  spans: [{ spanID: '01', operationName: 'GET /', startTime: 1, duration: 2, tags: [], logs: [], processID: 'p1' }],
  processes: { p1: { serviceName: 'frontend', tags: [] } },
};

test('parseUpload reads clew\'s download with its analysis', () => {
  const analysis = { bottlenecks: { criticalPath: [] }, causal: null };
  const up = parseUpload({ format: 'clew-trace/v1', trace, analysis });
  assert.equal(up.trace, trace);
  assert.equal(up.analysis, analysis);
});

test('parseUpload round-trips what Download JSON saves', () => {
  const saved = JSON.parse(JSON.stringify(downloadBundle(/** @type {any} */ (trace), null)));
  assert.equal(saved.format, 'clew-trace/v1');
  assert.deepEqual(parseUpload(saved), { trace, analysis: null });
});

test('parseUpload reads Jaeger\'s API answer and a bare Jaeger trace, without analysis', () => {
  assert.deepEqual(parseUpload({ data: [trace], total: 1 }), { trace, analysis: null });
  assert.deepEqual(parseUpload(trace), { trace, analysis: null });
});

test('parseUpload refuses what is not a trace, naming what it expects', () => {
  for (const junk of [null, 42, { hello: 'world' }, { data: [] }, { spans: [] }, { format: 'clew-trace/v1' }]) {
    assert.throws(() => parseUpload(junk), /^Error: not a trace \(expected clew's download or Jaeger's JSON\)$/, JSON.stringify(junk));
  }
});
