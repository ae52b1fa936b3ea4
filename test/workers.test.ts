// Segments made and used inside several worker_threads workers at once: each
// thread loads memfork for itself and works on its own segments, cloning,
// restoring and checking them against plain copies, all at the same time.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { Segment, backend } from '../src/index.ts';
import { runtimeName } from '../src/runtime.ts';
import { fdTargets, linuxOnly, newSegmentLikeMaps, snapshot } from './helpers/proc.ts';
import type { Report } from './fixtures/workers-task.ts';

const skip = false;

/**
 * The worker's entry: Node.js workers start from plain JavaScript, which
 * registers ts-node; Bun and Deno workers run the TypeScript task directly.
 */
const entry = path.resolve('test', 'fixtures', runtimeName === 'node' ? 'workers-entry.cjs' : 'workers-task.ts');

function runWorker(seed: number, steps: number, pages: number, leaveOpen = false): Promise<Report> {
  return new Promise((resolve, reject) => {
    const w = new Worker(entry, {
      workerData: { seed, steps, pages, leaveOpen },
    });
    let report: Report | undefined;
    w.once('message', (m: Report) => {
      report = m;
    });
    w.once('error', reject);
    w.once('exit', (code) => {
      if (report === undefined) reject(new Error(`worker ${seed} exited with ${code} without a report`));
      else resolve(report);
    });
  });
}

test('segments made in several workers at once clone, restore and read back independently', { skip }, async (t) => {
  const WORKERS = 4;
  // The main thread keeps a segment of its own through it all.
  const mine = Segment.create(3 * backend.pageSize);
  new Uint8Array(mine.buffer).fill(0x5c);
  const snapshot = mine.clone();
  try {
    let done = false;
    const all = Promise.all(Array.from({ length: WORKERS }, (_, k) => runWorker(1000 + k, 400, 2 + 3 * k))).finally(() => {
      done = true;
    });
    // Meanwhile the main thread clones and restores its own segment (a few
    // hundred rounds, to leave the cores to the workers).
    let rounds = 0;
    const u = new Uint8Array(mine.buffer);
    while (!done && rounds < 300) {
      u[rounds % u.length] = 1;
      const c = mine.clone();
      u[(rounds * 7) % u.length] = 2;
      mine.restore(c);
      assert.equal(u[(rounds * 7) % u.length], (rounds * 7) % u.length === rounds % u.length ? 1 : 0x5c);
      assert.equal(u[rounds % u.length], 1);
      c.close();
      mine.restore(snapshot);
      rounds++;
      await new Promise((resolve) => setImmediate(resolve));
    }
    const reports = await all;
    t.diagnostic(`the main thread did ${rounds} clone/restore rounds meanwhile`);
    for (const r of reports) {
      t.diagnostic(
        `thread ${r.threadId}: ${r.steps} steps, ${r.clones} clones, ${r.restores} restores, ${r.checks} checks, ` +
          `${r.segmentsLeft} segments and ${r.layersLeft} layers left`,
      );
    }
    for (const r of reports) {
      assert.equal(r.error, undefined, `thread ${r.threadId}: ${r.error}`);
      assert.equal(r.ok, true);
      assert.equal(r.backend, backend.name, 'each worker loads the same backend');
      assert.ok(r.clones > 0 && r.restores > 0, 'each worker cloned and restored');
      assert.equal(r.segmentsLeft, 0, 'each worker released its segments');
      assert.equal(r.layersLeft, 0, 'and closed its layers');
    }
    assert.equal(new Set(reports.map((r) => r.threadId)).size, WORKERS, 'they ran on separate threads');
    assert.ok(new Uint8Array(mine.buffer).every((x) => x === 0x5c), "the main thread's segment is untouched");
    mine.restore(snapshot);
    assert.ok(new Uint8Array(mine.buffer).every((x) => x === 0x5c));
  } finally {
    snapshot.close();
    mine.close();
  }
});

/** Descriptors opened since `before`, by what they link to. */
function newFds(before: { fd: number; target: string }[]): string[] {
  const was = new Set(before.map((f) => `${f.fd} ${f.target}`));
  return fdTargets()
    .filter((f) => !was.has(`${f.fd} ${f.target}`))
    .map((f) => `${f.fd} -> ${f.target}`);
}

const procSkip = skip || linuxOnly;

test('workers that used memfork and closed everything leave no descriptor or mapping behind when they exit', { skip: procSkip }, async (t) => {
  const fds = fdTargets();
  const base = snapshot();
  for (let k = 0; k < 3; k++) {
    const r = await runWorker(2000 + k, 50, 3);
    assert.equal(r.error, undefined, r.error);
    assert.equal(r.segmentsLeft, 0);
  }
  const left = newFds(fds);
  t.diagnostic(`after 3 workers: ${left.length} new descriptors${left.length > 0 ? `: ${left.join(', ')}` : ''}`);
  // Every kind memfork opens: memory files, the copying pipe, the reserve
  // (/dev/null) and /proc/self/pagemap. Deno keeps each exited worker's event
  // loop descriptors (eventpoll, eventfd, a socket): the runtime's, not memfork's.
  assert.deepEqual(left.filter((f) => /memfd:|pipe:|\/dev\/null|pagemap/.test(f)), [], 'descriptors opened by memfork in the workers are closed');
  if (runtimeName !== 'deno') assert.deepEqual(left, [], 'no descriptor is left at all');
  // Every mapping memfork makes in these workers lies inside a segment of 3
  // pages: larger anonymous ones are the runtime's (Bun can keep a 64 KiB
  // MAP_NORESERVE mapping of an exited worker's, memfork loaded or not).
  assert.deepEqual(newSegmentLikeMaps(base, 3 * backend.pageSize), [], 'no segment mapping is left');
});

test('segments a worker never closed are released when it exits', { skip: procSkip }, async (t) => {
  const fds = fdTargets();
  const base = snapshot();
  const r = await runWorker(3000, 60, 4, true);
  assert.equal(r.error, undefined, r.error);
  assert.ok(r.segmentsLeft > 0, 'the worker left segments open');
  const left = newFds(fds);
  const maps = newSegmentLikeMaps(base, 4 * backend.pageSize);
  t.diagnostic(`the worker left ${r.segmentsLeft} segments open; after it exited: ${left.length} new descriptors, ${maps.length} segment mappings`);
  assert.deepEqual(left.filter((f) => f.includes('memfd:memfork')), [], 'its layers are closed');
  assert.deepEqual(maps, [], 'its segments are unmapped');
});
