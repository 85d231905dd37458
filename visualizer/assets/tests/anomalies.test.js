// @ts-check
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { sources } from '../pages/anomalies.js';

/** @param {number} n @param {boolean} truncated */
const answer = (n, truncated) => ({
  anomalies: [], groups: [], structuralFromTraces: n, structuralTruncated: truncated, fromUs: 0, toUs: 1,
});

test('the summary says slow spans and spikes come from every span, calls from the traces read', () => {
  assert.equal(
    sources(answer(1000, true)),
    'slow spans and error spikes from every span of the window, new and missing calls from the 1000 most recent traces.',
  );
  assert.equal(
    sources(answer(1, false)),
    'slow spans and error spikes from every span of the window, new and missing calls from 1 trace.',
  );
  assert.doesNotMatch(sources(answer(40, false)), /most recent/);
});
