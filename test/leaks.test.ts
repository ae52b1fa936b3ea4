// Twenty thousand create / clone / restore / close cycles must leave the
// process as they found it: the same open descriptors, the same mappings,
// and the memory back.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { Segment, backend, memoryStats } from '../src/index.ts';
import { fullGc, linuxOnly, memfdBytes, newSegmentLikeMaps, processMemory, rollup, snapshot } from './helpers/proc.ts';

const skip = linuxOnly || (backend.name !== 'linux' && `the ${backend.name} backend is loaded, not linux`);

const CYCLES = 20_000;
const MiB = 1 << 20;

/**
 * One cycle: a fresh segment written at two places, cloned, written again and
 * rolled back (the fast restore on even cycles; on odd ones the clone is
 * written too, so restore takes the general path), a view, then both closed.
 * Checks the bytes as it goes.
 */
function cycle(i: number, page: number): void {
  const a = Segment.create(4 * page);
  const ua = new Uint8Array(a.buffer);
  ua[0] = i & 0xff;
  ua[2 * page + 5] = 1;
  const b = a.clone();
  const v = new Uint8Array(b.view(page, 2 * page));
  ua[page] = 2;
  if (i % 2 === 1) v[page + 5] = 9; // b's page 2
  a.restore(b);
  assert.equal(ua[page], 0);
  assert.equal(ua[0], i & 0xff);
  assert.equal(ua[2 * page + 5], i % 2 === 1 ? 9 : 1);
  a.close();
  b.close();
  assert.equal(v.length, 0, 'close() detached the view');
}

const macrotask = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

/**
 * Lets the garbage collector take what it can: a WeakRef keeps its target
 * alive until the current job ends (segments keep WeakRefs to their views),
 * so yield to the event loop first.
 */
async function settle(): Promise<void> {
  for (let i = 0; i < 3; i++) {
    await macrotask();
    fullGc();
  }
}

/** Runs `n` cycles, yielding to the event loop every thousand as a real program would. */
async function cycles(n: number, page: number): Promise<void> {
  for (let i = 0; i < n; i++) {
    cycle(i, page);
    if (i % 1000 === 999) await macrotask();
  }
}

test(`${CYCLES} create/clone/restore/close cycles leave descriptors, mappings and memory as they were`, { skip }, async (t) => {
  const page = backend.pageSize;
  // Warm up: V8 compiles, koffi caches, the backend opens what it keeps open,
  // and the runtime's heap reaches its working size: V8 keeps freed heap
  // pages for reuse (256 KiB mappings, in no heap figure), and a process
  // that did little before this test (its TypeScript already transpiled)
  // adds 50 MiB of them over the first few thousand cycles on Node.js 22.
  // Until a thousand cycles add less than 2 MiB, at most ten thousand: a
  // leak of a page a cycle adds 4 MiB a thousand and still shows below.
  await cycles(500, page);
  await settle();
  for (let i = 0; i < 10; i++) {
    const before = processMemory();
    await cycles(1000, page);
    await settle();
    if (processMemory() - before < 2 * MiB) break;
  }
  const base = snapshot();
  const stats = memoryStats();
  const proc = processMemory();
  const heap = process.memoryUsage();
  const memfd = memfdBytes();
  const rss = rollup('Rss');

  const started = performance.now();
  await cycles(CYCLES, page);
  const ms = performance.now() - started;
  await settle();

  const now = snapshot();
  const procNow = processMemory();
  const heapNow = process.memoryUsage();
  const memfdNow = memfdBytes();
  const rssNow = rollup('Rss');
  const statsNow = memoryStats();
  t.diagnostic(`${CYCLES} cycles in ${Math.round(ms)} ms (${((ms * 1000) / CYCLES).toFixed(1)} µs each)`);
  t.diagnostic(`fds ${base.fds} → ${now.fds}; maps ${base.maps} → ${now.maps}; layer maps ${base.layerMaps} → ${now.layerMaps}`);
  const heapGrew = heapNow.heapTotal - heap.heapTotal;
  t.diagnostic(
    `JS heap used ${(heap.heapUsed / MiB).toFixed(1)} → ${(heapNow.heapUsed / MiB).toFixed(1)} MiB, ` +
      `V8 heap size ${(heap.heapTotal / MiB).toFixed(1)} → ${(heapNow.heapTotal / MiB).toFixed(1)} MiB`,
  );
  t.diagnostic(
    `process anon+shmem ${(proc / MiB).toFixed(1)} → ${(procNow / MiB).toFixed(1)} MiB; ` +
      `Rss ${(rss / MiB).toFixed(1)} → ${(rssNow / MiB).toFixed(1)} MiB; ` +
      `memory files ${(memfd / MiB).toFixed(1)} → ${(memfdNow / MiB).toFixed(1)} MiB`,
  );

  assert.equal(statsNow.segments, stats.segments, 'live segments');
  assert.equal(statsNow.layers, stats.layers, 'layers');
  assert.equal(statsNow.layerBytes, stats.layerBytes, 'bytes in layers');
  assert.equal(now.fds, base.fds, 'open descriptors');
  assert.equal(now.layerMaps, base.layerMaps, 'mappings of memory files');
  // No mapping a cycle makes is larger than its segments (Bun's allocator
  // keeps 64 KiB anonymous chunks of the same look now and then).
  assert.deepEqual(newSegmentLikeMaps(base, 4 * page), [], 'no segment-like mapping left behind');
  // The total line count is V8's business too (Node.js 26 keeps a hundred or
  // more heap pages mapped after such a run); a segment leak is caught above.
  assert.ok(now.maps - base.maps < 1000, `mappings ${base.maps} → ${now.maps}`);
  // JavaScript objects: a few bytes kept per cycle would show here.
  assert.ok(heapNow.heapUsed - heap.heapUsed < 4 * MiB, 'no JavaScript objects pile up');
  // Each cycle touches about 20 KiB: a leak of one page a cycle is 78 MiB.
  // V8 may keep a larger heap after the run; that is not memfork's.
  assert.ok(procNow - proc - Math.max(0, heapGrew) < 40 * MiB, 'this process holds its memory again');
  assert.ok(rssNow - rss - Math.max(0, heapGrew) < 40 * MiB, 'its mappings hold their resident memory again');
  // Pages of memory files count whether mapped or not (a layer kept open by
  // a leaked descriptor shows here, not in resident memory): every memory
  // file of the process holds what it held, and memfork's match its accounting.
  assert.equal(memfdNow, memfd, 'bytes in memory files');
  assert.equal(memfdBytes('/memfd:memfork'), statsNow.layerBytes, "memoryStats().layerBytes is what memfork's memory files hold");
});
