// ts-node's transpiler for this project (tsconfig.json, "ts-node" →
// "transpiler"): TypeScript's own transpileModule, as ts-node uses in
// transpile-only mode, with each file's output kept on disk under
// node_modules/.cache/memfork-ts. A Node.js process started with
// `-r ts-node/register` transpiles every source file it loads, about 1.3 s
// for the library alone on a small machine, and the test suites start such
// processes by the hundred (each file, and the child processes the suites
// run): with the cache, a file is transpiled once per change.
//
// The key is the file's name and text, the compiler options and the
// TypeScript version, so an edit, a tsconfig change or an upgrade misses
// and transpiles again. Output with diagnostics (a syntax error) is never
// kept. The cache is only an optimisation: when its folder cannot be read
// or written, files are transpiled as without it.
'use strict';
const { createHash } = require('node:crypto');
const { mkdirSync, readFileSync, renameSync, writeFileSync } = require('node:fs');
const { join } = require('node:path');

const cacheDir = join(__dirname, '..', 'node_modules', '.cache', 'memfork-ts');

/** @param {import('ts-node').CreateTranspilerOptions} options */
function create(options) {
  const { service } = options;
  const compilerOptions = service.config.options;
  // The compiler module loads only when a file is not in the cache.
  const compilerPath = service.projectLocalResolveHelper('typescript', true);
  let ts;
  const typescript = () => (ts ??= require(compilerPath));
  const version = require(service.projectLocalResolveHelper('typescript/package.json', true)).version;
  const settings = `${version}\n${JSON.stringify(compilerOptions)}\n`;
  let writable = true;
  return {
    transpile(input, { fileName }) {
      const key = createHash('sha256').update(settings).update(fileName).update('\n').update(input).digest('hex');
      const file = join(cacheDir, `${key}.json`);
      try {
        return JSON.parse(readFileSync(file, 'utf8'));
      } catch {
        // Not there yet (or unreadable): transpile.
      }
      const result = typescript().transpileModule(input, { fileName, compilerOptions, reportDiagnostics: true });
      const output = { outputText: result.outputText, sourceMapText: result.sourceMapText };
      if (writable && (result.diagnostics ?? []).length === 0) {
        try {
          mkdirSync(cacheDir, { recursive: true });
          // Written whole under another name, then renamed: a process reading
          // the same key at once sees the whole entry or none.
          const tmp = `${file}.${process.pid}.tmp`;
          writeFileSync(tmp, JSON.stringify(output));
          renameSync(tmp, file);
        } catch {
          writable = false;
        }
      }
      return { ...output, diagnostics: result.diagnostics };
    },
  };
}

module.exports = { create };
