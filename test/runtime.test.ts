// What differs between JavaScript runtimes, checked on the runtime running
// this file (Node.js, Bun or Deno): detaching views on close, the largest
// single ArrayBuffer, and errno reporting through koffi.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Segment, SegmentError, backend } from '../src/index.ts';
import { canDetach, maxViewLength, runtimeName } from '../src/runtime.ts';
import { CopyBackend } from '../platform/copy.ts';
import { denoPermissions, projectRoot, runtime as runtimeFromGlobals } from './helpers/runtime.ts';

const GiB4 = 2 ** 32;
const linux = process.platform === 'linux';
const nativeBackend = linux ? 'linux' : process.platform === 'darwin' ? 'darwin' : 'copy';
const overridden = (process.env.MEMFORK_BACKEND ?? '') !== '';

/** The runtime as seen from its own globals, independently of src/runtime.ts. */
const runtime = {
  name: runtimeFromGlobals,
  nodeMajor: Number.parseInt(process.versions.node ?? '0', 10),
};

/** The limit measured on each runtime: 4 GiB on Node.js before 22 and on Bun, 2^53 - 1 elsewhere. */
const expectedLimit = runtime.name === 'bun' || (runtime.name === 'node' && runtime.nodeMajor < 22) ? GiB4 : Number.MAX_SAFE_INTEGER;

test(`the runtime is recognised as ${runtime.name}`, () => {
  assert.equal(runtimeName, runtime.name);
});

test('the platform backend loads on this runtime instead of falling back to copy', { skip: overridden && 'MEMFORK_BACKEND is set' }, () => {
  assert.equal(backend.name, nativeBackend);
});

test('this runtime can detach ArrayBuffers', () => {
  assert.equal(canDetach(), true);
});

test('close() detaches buffer and views: byteLength 0 and typed arrays of length 0', () => {
  const page = backend.pageSize;
  const seg = Segment.create(3 * page);
  const whole = seg.buffer;
  const part = seg.view(page, page);
  const bytes = new Uint8Array(whole);
  const words = new Float64Array(part);
  const data = new DataView(whole);
  bytes[0] = 1;
  words[0] = 2.5;
  assert.equal(bytes[page], 0);
  assert.equal(new Float64Array(whole, page, 1)[0], 2.5);

  seg.close();

  assert.equal(whole.byteLength, 0);
  assert.equal(part.byteLength, 0);
  assert.equal(bytes.length, 0);
  assert.equal(bytes.byteLength, 0);
  assert.equal(words.length, 0);
  assert.equal(bytes[0], undefined);
  assert.equal(words[0], undefined);
  assert.throws(() => data.getUint8(0), TypeError);
});

test('a view handed out by from() is detached too once the segment closes', () => {
  const seg = Segment.from(new Uint8Array([1, 2, 3]));
  const bytes = new Uint8Array(seg.view(0, 3));
  assert.deepEqual([...bytes], [1, 2, 3]);
  seg.close();
  assert.equal(bytes.length, 0);
});

test(`backend.maxViewLength is ${expectedLimit === GiB4 ? '4 GiB' : '2^53 - 1'} on this runtime`, () => {
  assert.equal(maxViewLength, expectedLimit);
  // Every backend, the copy backend too: its buffers are ArrayBuffers as well.
  assert.equal(backend.maxViewLength, expectedLimit);
  assert.equal(new CopyBackend().maxViewLength, expectedLimit);
  assert.equal(new CopyBackend({ memory: 'arraybuffer' }).maxViewLength, expectedLimit);
});

test('a 4 GiB segment hands out one buffer of exactly 4 GiB', { skip: !linux && 'sparse 4 GiB mappings checked on Linux only' }, () => {
  using seg = Segment.create(GiB4);
  const bytes = new Uint8Array(seg.buffer);
  assert.equal(bytes.length, GiB4);
  bytes[GiB4 - 1] = 9;
  assert.equal(new Uint8Array(seg.view(GiB4 - 1, 1))[0], 9);
});

test('a segment one page over 4 GiB gives one buffer exactly where the runtime allows it', { skip: !linux && 'sparse 4 GiB mappings checked on Linux only' }, () => {
  const length = GiB4 + backend.pageSize;
  using seg = Segment.create(length);
  if (backend.maxViewLength < length) {
    assert.throws(() => seg.buffer, (err: unknown) => err instanceof RangeError && /view\(/.test(err.message));
    assert.throws(() => seg.view(0, length), RangeError);
    const tail = new Uint8Array(seg.view(length - GiB4, GiB4));
    tail[GiB4 - 1] = 5;
    assert.equal(new Uint8Array(seg.view(length - 1, 1))[0], 5);
  } else {
    const bytes = new Uint8Array(seg.buffer);
    assert.equal(bytes.length, length);
    bytes[length - 1] = 5;
    assert.equal(new Uint8Array(seg.view(length - 1, 1))[0], 5);
  }
});

// The probe maps 4 GiB + 1 page (reserving no memory) and asks koffi for one
// view of all of it. Where the limit is 4 GiB the runtime aborts on that view,
// which is why memfork refuses it with a RangeError instead.
const probe = `
const koffi = require('koffi');
const mmap = koffi.load('libc.so.6').func('void *mmap(void *addr, size_t length, int prot, int flags, int fd, int64_t offset)');
const length = ${GiB4} + 4096;
const p = mmap(null, length, 3, 0x4022, -1, 0); // PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS|MAP_NORESERVE
const bytes = new Uint8Array(koffi.view(p, length));
bytes[length - 1] = 1;
console.log('view-length ' + bytes.length);
`;

function runProbe(): { status: number | null; signal: string | null; stdout: string } {
  // Inside the project, so that require('koffi') finds node_modules on every runtime.
  mkdirSync(join(projectRoot, '.tmp'), { recursive: true });
  const dir = mkdtempSync(join(projectRoot, '.tmp', 'probe-'));
  try {
    const file = join(dir, 'probe.cjs');
    writeFileSync(file, probe);
    const args = runtime.name === 'deno' ? ['run', '--no-lock', ...denoPermissions, file] : [file];
    const r = spawnSync(process.execPath, args, { cwd: projectRoot, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 60_000 });
    return { status: r.status, signal: r.signal, stdout: r.stdout ?? '' };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

test('one view over 4 GiB is refused exactly where it would crash this runtime', { skip: !linux && 'probe uses Linux mmap flags' }, () => {
  const r = runProbe();
  if (expectedLimit === GiB4) {
    assert.notEqual(r.status, 0, `the runtime took a view over 4 GiB: ${r.stdout}`);
    assert.doesNotMatch(r.stdout, /view-length/);
  } else {
    assert.equal(r.status, 0, `the runtime failed on a view over 4 GiB (signal ${r.signal})`);
    assert.match(r.stdout, new RegExp(`view-length ${GiB4 + 4096}`));
  }
});

test('Segment.create(2 ** 52) throws SegmentError ENOMEM from mmap with errno 12', { skip: backend.name === 'copy' && 'no mmap in the copy backend' }, () => {
  assert.throws(
    () => Segment.create(2 ** 52),
    (err: unknown) => {
      assert.ok(err instanceof SegmentError, `expected a SegmentError, got ${String(err)}`);
      assert.equal(err.code, 'ENOMEM');
      assert.equal(err.errno, 12);
      assert.equal(err.syscall, 'mmap');
      assert.match(err.message, /^mmap ENOMEM: /);
      return true;
    },
  );
});
