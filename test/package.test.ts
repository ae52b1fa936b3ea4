// The published package: builds it, packs it, installs the tarball into an
// empty project and uses it from there, the way a user would: as an ES module,
// as CommonJS, and from TypeScript with `using`.
import { after, before, test } from 'node:test';
import * as assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { projectRoot as root, runtime } from './helpers/runtime.ts';

const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';
const tsc = path.join(root, 'node_modules', 'typescript', 'bin', 'tsc');
/** The consumer is a Node.js project; other runtimes skip this suite (packing once is enough). */
const skip = runtime !== 'node' && 'the package is built and checked once, on Node.js';
/** Node.js itself, to run the consumer and tsc. */
const node = process.execPath;

let work = '';
let consumer = '';
let tarball = '';

function run(cmd: string, args: string[], cwd: string): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(
      cmd,
      args,
      { cwd, timeout: 80_000, maxBuffer: 32 << 20, shell: process.platform === 'win32', env: { ...process.env, NO_COLOR: '1' } },
      (err, stdout, stderr) => {
        if (err) reject(new Error(`${cmd} ${args.join(' ')} failed: ${err.message}\n${stdout}\n${stderr}`));
        else resolve(stdout);
      },
    );
  });
}

const clonePlan = `
const a = Segment.create(3 * 4096 + 5);
new Uint8Array(a.buffer).fill(7);
const b = a.clone();
new Uint8Array(b.buffer)[4096] = 1;
const ok = new Uint8Array(a.buffer)[4096] === 7 && new Uint8Array(b.buffer)[4096] === 1 && b.byteLength === a.byteLength;
a.restore(b);
const restored = new Uint8Array(a.buffer)[4096] === 1;
b.close();
a.close();
console.log(JSON.stringify({ backend: backend.name, ok, restored, closed: a.closed, error: typeof SegmentError }));
`;

before(async () => {
  if (skip) return;
  work = fs.mkdtempSync(path.join(os.tmpdir(), 'memfork-pack-'));
  await run(npm, ['run', 'build'], root);
  const packed = JSON.parse(await run(npm, ['pack', '--json', '--pack-destination', work], root)) as { filename: string }[];
  tarball = path.join(work, packed[0].filename);
  consumer = path.join(work, 'consumer');
  fs.mkdirSync(consumer);
  fs.writeFileSync(path.join(consumer, 'package.json'), JSON.stringify({ name: 'consumer', version: '1.0.0', private: true }));
  // koffi comes along as a dependency, from the local npm cache when it is there.
  await run(npm, ['install', tarball, '--prefer-offline', '--no-audit', '--no-fund', '--loglevel=error'], consumer);
});

after(() => {
  if (work !== '' && !skip) fs.rmSync(work, { recursive: true, force: true });
});

test('the tarball ships only dist/, README.md, LICENSE, package.json and the docs the README links', { skip }, async () => {
  const [info] = JSON.parse(await run(npm, ['pack', '--dry-run', '--json'], root)) as { files: { path: string }[] }[];
  const files = info.files.map((f) => f.path).sort();
  // Every relative link of the README, which npm shows as the package's page.
  const readme = fs.readFileSync(path.join(root, 'README.md'), 'utf8');
  const linked = [...readme.matchAll(/\]\(([^)#:\s]+)(?:#[^)]*)?\)/g)].map((m) => m[1]);
  assert.ok(linked.length > 0, 'the README links files of the project');
  const stray = files.filter((f) => !f.startsWith('dist/') && !['README.md', 'LICENSE', 'package.json', ...linked].includes(f));
  assert.deepEqual(stray, [], `unexpected files in the package: ${stray.join(', ')}`);
  for (const f of ['LICENSE', 'README.md', 'package.json', 'dist/index.js', 'dist/index.mjs', 'dist/index.d.ts', 'dist/index.d.mts', ...linked]) {
    assert.ok(files.includes(f), `${f} is in the package`);
  }
});

test('the installed package brings koffi along', { skip }, () => {
  assert.ok(fs.existsSync(path.join(consumer, 'node_modules', 'memfork', 'dist', 'index.mjs')));
  // Hoisted, or nested under memfork (npm's install-strategy decides, and
  // `npm test` passes this project's own strategy down to the install).
  const hoisted = path.join(consumer, 'node_modules', 'koffi', 'package.json');
  const nested = path.join(consumer, 'node_modules', 'memfork', 'node_modules', 'koffi', 'package.json');
  assert.ok(fs.existsSync(hoisted) || fs.existsSync(nested), 'koffi is installed with memfork');
});

test('the installed package imports as an ES module and clones in isolation', { skip }, async () => {
  fs.writeFileSync(path.join(consumer, 'check.mjs'), `import { Segment, SegmentError, backend } from 'memfork';\n${clonePlan}`);
  const out = JSON.parse(await run(node, ['check.mjs'], consumer));
  assert.deepEqual(out, { backend: out.backend, ok: true, restored: true, closed: true, error: 'function' });
  if (process.platform === 'linux') assert.equal(out.backend, process.env.MEMFORK_BACKEND || 'linux');
});

test('the installed package loads with require() and clones in isolation', { skip }, async () => {
  fs.writeFileSync(path.join(consumer, 'check.cjs'), `const { Segment, SegmentError, backend } = require('memfork');\n${clonePlan}`);
  const out = JSON.parse(await run(node, ['check.cjs'], consumer));
  assert.deepEqual(out, { backend: out.backend, ok: true, restored: true, closed: true, error: 'function' });
});

test('a TypeScript consumer type-checks against the installed types, with using', { skip }, async () => {
  const source = (importLine: string) => `${importLine}
export function demo(): number {
  using a = Segment.create(1 << 20);
  using b = a.clone();
  new Uint8Array(b.buffer)[0] = 1;
  a.restore(b);
  const s: SegmentStats = a.stats();
  const m: MemoryStats = memoryStats();
  const name: BackendName = backend.name;
  const shared = Segment.from(new SharedArrayBuffer(8));
  const fromView = Segment.from(new Uint16Array(new SharedArrayBuffer(8)));
  shared.close();
  fromView.close();
  // @ts-expect-error a segment is made by create(), from() or clone(), never by new
  new Segment();
  const err: unknown = new Error();
  const code = err instanceof SegmentError ? err.code : undefined;
  void code;
  // @ts-expect-error byteLength is read-only
  a.byteLength = 2;
  // @ts-expect-error from() takes bytes, not a number
  Segment.from(3);
  return s.privateBytes + m.mappings + name.length + Number(a.address);
}
`;
  const names = `Segment, SegmentError, backend, memoryStats, type SegmentStats, type MemoryStats, type BackendName`;
  fs.writeFileSync(path.join(consumer, 'use-esm.mts'), source(`import { ${names} } from 'memfork';`));
  fs.writeFileSync(path.join(consumer, 'use-cjs.cts'), source(`import { ${names} } from 'memfork';`));
  fs.writeFileSync(
    path.join(consumer, 'tsconfig.json'),
    JSON.stringify({
      compilerOptions: {
        target: 'ES2022',
        module: 'NodeNext',
        moduleResolution: 'NodeNext',
        lib: ['ES2022', 'ESNext.Disposable'],
        types: [],
        strict: true,
        noEmit: true,
        skipLibCheck: false,
      },
      files: ['use-esm.mts', 'use-cjs.cts'],
    }),
  );
  await run(node, [tsc, '-p', 'tsconfig.json'], consumer);
});

test('the installed declarations hold the public API only, nothing marked @internal', { skip }, () => {
  for (const file of ['index.d.ts', 'index.d.mts']) {
    const dts = fs.readFileSync(path.join(consumer, 'node_modules', 'memfork', 'dist', file), 'utf8');
    assert.doesNotMatch(dts, /interface Backend\b|\bBackend</, `${file} declares the internal Backend interface`);
    assert.doesNotMatch(dts, /token|constructor\(token/, `${file} shows the constructor's token`);
    assert.match(dts, /static from\(source: ArrayBuffer \| SharedArrayBuffer \| ArrayBufferView\): Segment;/);
    assert.match(dts, /declare class Segment implements Disposable/);
  }
});

test('the built package shows a segment as Segment { … } and names Segment in stack traces', { skip }, async () => {
  const program = `
import { inspect } from 'node:util';
import { Segment, backend } from 'memfork';
const seg = Segment.create(10);
const open = inspect(seg);
seg.close();
let stack = '';
try { seg.clone(); } catch (err) { stack = err.stack; }
console.log(JSON.stringify({ name: Segment.name, open, closed: inspect(seg), backend: backend.name, stack }));
`;
  for (const file of ['inspect.mjs', 'inspect.cjs']) {
    fs.writeFileSync(
      path.join(consumer, file),
      file.endsWith('.cjs') ? program.replace(/^import \{ (.*) \} from '(.*)';$/gm, "const { $1 } = require('$2');") : program,
    );
    const out = JSON.parse(await run(node, [file], consumer)) as { name: string; open: string; closed: string; backend: string; stack: string };
    assert.equal(out.name, 'Segment', file);
    assert.match(out.open, new RegExp(`^Segment \\{ byteLength: 10, closed: false, backend: '${out.backend}', address: 0x[0-9a-f]+n \\}$`), file);
    assert.equal(out.closed, `Segment <closed> { byteLength: 10, backend: '${out.backend}' }`, file);
    assert.match(out.stack, /at Segment\.clone /, `${file}: ${out.stack}`);
    assert.doesNotMatch(out.stack, /_Segment/, `${file}: ${out.stack}`);
  }
});
