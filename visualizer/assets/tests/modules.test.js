// @ts-check
// The house rules of the served modules, checked on their source: each is
// type-checked JSDoc, embedded in the binary, imports only files that
// exist, and keeps its lines and functions short.
import assert from 'node:assert/strict';
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const ASSETS = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const MAX_LINE = 150;
const MAX_FUNCTION_LINES = 50;

/** @param {string} dir @returns {string[]} module paths relative to assets/ */
function modules(dir) {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) return name === 'tests' || name === 'node_modules' ? [] : modules(path);
    return name.endsWith('.js') ? [relative(ASSETS, path)] : [];
  });
}

const FILES = modules(ASSETS).sort();
/** @param {string} f */
const source = (f) => readFileSync(join(ASSETS, f), 'utf8');

test('the UI is more than one module and app.js is among them', () => {
  assert.ok(FILES.includes('app.js') && FILES.includes('trace/waterfall.js'), FILES.join(' '));
});

test('every module starts with // @ts-check', () => {
  for (const f of FILES) assert.ok(source(f).startsWith('// @ts-check\n'), f);
});

test('every module is embedded by src/assets.rs, and nothing else is', () => {
  const rs = readFileSync(join(ASSETS, '../src/assets.rs'), 'utf8');
  const listed = [...rs.matchAll(/module!\("([^"]+)"\)/g)].map((m) => m[1]).sort();
  assert.deepEqual(listed, FILES);
});

test('index.html loads app.js as a module', () => {
  assert.match(readFileSync(join(ASSETS, 'index.html'), 'utf8'), /<script type="module" src="\/assets\/app\.js"><\/script>/);
});

test('every import is a relative path to a module that exists', () => {
  for (const f of FILES) {
    for (const [, spec] of source(f).matchAll(/^import [^;]*?from '([^']+)';$/gms)) {
      assert.match(spec, /^\.\.?\/.*\.js$/, `${f} imports ${spec}`);
      const target = relative(ASSETS, resolve(ASSETS, dirname(f), spec));
      assert.ok(FILES.includes(target), `${f} imports ${spec}, which is not a served module`);
    }
  }
});

test(`lines are at most ${MAX_LINE} characters`, () => {
  for (const f of FILES) {
    source(f).split('\n').forEach((l, i) => assert.ok(l.length <= MAX_LINE, `${f}:${i + 1} has ${l.length}`));
  }
});

test(`functions fit on a screen (at most ${MAX_FUNCTION_LINES} lines)`, () => {
  for (const f of FILES) {
    const lines = source(f).split('\n');
    lines.forEach((l, i) => {
      const m = /^(\s*)(?:export )?(?:async )?function (\w+)/.exec(l);
      if (!m) return;
      const end = lines.findIndex((x, j) => j > i && x === `${m[1]}}`);
      assert.ok(end > i, `${f}: the end of ${m[2]} is not at its indentation`);
      assert.ok(end - i + 1 <= MAX_FUNCTION_LINES, `${f}: ${m[2]} has ${end - i + 1} lines`);
    });
  }
});

test('no module keeps mutable state at its top level', () => {
  for (const f of FILES) {
    source(f).split('\n').forEach((l, i) => {
      assert.ok(!/^(let|var) /.test(l), `${f}:${i + 1}: ${l}`);
    });
  }
});
