// Garbage collection: a segment dropped without close() is released, but
// never while its buffer or a view of it is reachable. The checks run in a
// child process started with --expose-gc (this same file, in child mode),
// which prints one JSON line of findings; the tests below read them.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { writeSync } from 'node:fs';
import * as path from 'node:path';
import { backend } from '../src/index.ts';
import { linuxOnly } from './helpers/proc.ts';
import { projectRoot, tsCommand } from './helpers/runtime.ts';

const CHILD = process.env.MEMFORK_GC_CHILD === '1';
const MiB = 1 << 20;

/** How many gc() + macrotask rounds a release may take before it counts as never. */
const TRIES = 50;
/** How many rounds a segment that must stay alive is given to (wrongly) go. */
const HOLD_ROUNDS = 10;

interface Findings {
  backend: string;
  dropped: { released: boolean; tries: number; unmapped: boolean; layerMapsAlive: number; layerMapsAfter: number };
  heldByBuffer: { kept: boolean; readable: boolean; releasedAfter: boolean; tries: number };
  heldByView: { kept: boolean; readable: boolean; releasedAfter: boolean };
  heldByTypedArray: { kept: boolean; readable: boolean; releasedAfter: boolean };
  cloneOutlivesOrigin: { originReleased: boolean; cloneReadable: boolean };
  memory: {
    segments: number;
    layerBytesAlive: number;
    layersLeft: number;
    layerBytesLeft: number;
    processLeft: number;
    /** Bytes of every memory file the process holds open, less those at the start, while alive and after. */
    memfdAlive: number;
    memfdLeft: number;
    /** Bytes of memfork's memory files while alive (from /proc, to check memoryStats() against). */
    memforkAlive: number;
    /** Resident bytes of the process's mappings (smaps_rollup Rss), less those at the start, after. */
    rssLeft: number;
    released: boolean;
    tries: number;
  };
}

async function child(): Promise<void> {
  const { Segment, backend, memoryStats } = await import('../src/index.ts');
  const proc = await import('./helpers/proc.ts');
  // globalThis.gc with --expose-gc (Node.js, Deno's --v8-flags), Bun.gc(true) on Bun.
  const gc = proc.fullGc;
  const page = backend.pageSize;
  const macrotask = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

  /** gc() and a macrotask, until `done()` or TRIES rounds; returns the rounds taken or -1. */
  async function until(done: () => boolean, rounds = TRIES): Promise<number> {
    for (let i = 1; i <= rounds; i++) {
      await macrotask(); // lets WeakRef targets of the last job go
      gc!();
      await macrotask(); // lets FinalizationRegistry callbacks run
      if (done()) return i;
    }
    return -1;
  }

  function pattern(seg: import('../src/index.ts').Segment, seed: number): void {
    const u = new Uint8Array(seg.buffer);
    for (let i = 0; i < u.length; i += 509) u[i] = (i + seed) & 0xff;
  }
  function holds(u: Uint8Array, seed: number): boolean {
    for (let i = 0; i < u.length; i += 509) if (u[i] !== ((i + seed) & 0xff)) return false;
    return true;
  }
  /**
   * Whether `length` bytes starting at segment offset `offset`, seen through
   * `through`, hold the pattern. A function of its own, so that no typed
   * array made here stays reachable from the caller's frame.
   */
  function reads(through: ArrayBuffer | Uint8Array, offset: number, length: number, seed: number): boolean {
    const u = through instanceof Uint8Array ? through : new Uint8Array(through);
    if (u.length !== length) return false;
    for (let at = Math.ceil(offset / 509) * 509; at < offset + length; at += 509) {
      if (u[at - offset] !== ((at + seed) & 0xff)) return false;
    }
    return true;
  }

  const findings: Partial<Findings> = { backend: backend.name };
  const live = (): number => memoryStats().segments;

  // 1. Dropped without close().
  {
    const base = live();
    let layerMapsAlive = 0;
    let addr = 0n;
    (() => {
      const s = Segment.create(16 * page);
      pattern(s, 1);
      addr = s.address;
      void s.clone().buffer; // a clone dropped as well, mapped by asking for its memory
      layerMapsAlive = proc.layerMapsCount();
    })();
    const tries = await until(() => live() === base);
    findings.dropped = {
      released: tries > 0,
      tries,
      // Not mapped by memfork: the runtime may place its own memory in the
      // hole at once (Bun's allocator did, once in a CI run).
      unmapped: !(proc.mappingAt(addr)?.includes('memfd:memfork') ?? false),
      layerMapsAlive,
      layerMapsAfter: proc.layerMapsCount(),
    };
  }

  // 2. Its buffer still reachable.
  {
    const base = live();
    let buf: ArrayBuffer | undefined;
    (() => {
      const s = Segment.create(8 * page);
      pattern(s, 2);
      buf = s.buffer;
    })();
    const early = await until(() => live() === base, HOLD_ROUNDS);
    const readable = buf!.byteLength === 8 * page && holds(new Uint8Array(buf!), 2);
    buf = undefined;
    const tries = await until(() => live() === base);
    findings.heldByBuffer = { kept: early === -1, readable, releasedAfter: tries > 0, tries };
  }

  // 3. A view still reachable.
  {
    const base = live();
    let view: ArrayBuffer | undefined;
    (() => {
      const s = Segment.create(8 * page);
      pattern(s, 3);
      view = s.view(page, 3 * page);
    })();
    const early = await until(() => live() === base, HOLD_ROUNDS);
    const readable = reads(view!, page, 3 * page, 3);
    view = undefined;
    const tries = await until(() => live() === base);
    findings.heldByView = { kept: early === -1, readable, releasedAfter: tries > 0 };
  }

  // 4. Only a typed array over the buffer still reachable.
  {
    const base = live();
    let arr: Uint8Array | undefined;
    (() => {
      const s = Segment.create(8 * page);
      pattern(s, 4);
      arr = new Uint8Array(s.buffer, 100);
    })();
    const early = await until(() => live() === base, HOLD_ROUNDS);
    const readable = arr!.length === 8 * page - 100 && reads(arr!, 100, 8 * page - 100, 4);
    arr = undefined;
    const tries = await until(() => live() === base);
    findings.heldByTypedArray = { kept: early === -1, readable, releasedAfter: tries > 0 };
  }

  // 5. A clone outlives its dropped origin.
  {
    const base = live();
    let clone: import('../src/index.ts').Segment | undefined;
    (() => {
      const s = Segment.create(8 * page);
      pattern(s, 5);
      clone = s.clone();
      new Uint8Array(s.buffer)[0] = 0xaa; // after the clone: not in it
    })();
    const tries = await until(() => live() === base + 1);
    const u = new Uint8Array(clone!.buffer);
    findings.cloneOutlivesOrigin = { originReleased: tries > 0, cloneReadable: holds(u, 5) };
    clone!.close();
  }

  // 6. The memory of many dropped, written segments comes back: this
  // process's own figures (resident memory, and every memory file it holds
  // open, mapped or not), cross-checked with memfork's accounting.
  {
    const COUNT = 64;
    const SIZE = 2 * MiB;
    await until(() => false, 3);
    const base = live();
    const proc0 = proc.processMemory();
    const memfd0 = proc.memfdBytes();
    const rss0 = proc.rollup('Rss');
    let layerBytes = 0;
    let memfdAlive = 0;
    let memforkAlive = 0;
    (() => {
      const keep: import('../src/index.ts').Segment[] = [];
      for (let i = 0; i < COUNT; i++) {
        const s = Segment.create(SIZE);
        new Uint8Array(s.buffer).fill(i + 1);
        const c = s.clone();
        new Uint8Array(c.buffer).fill(i + 2, 0, SIZE / 2); // half of it written again: private pages
        keep.push(s, c);
      }
      layerBytes = memoryStats().layerBytes;
      memfdAlive = proc.memfdBytes() - memfd0;
      memforkAlive = proc.memfdBytes('/memfd:memfork');
    })();
    const tries = await until(() => live() === base);
    await until(() => false, 2);
    const stats = memoryStats();
    findings.memory = {
      segments: 2 * COUNT,
      layerBytesAlive: layerBytes,
      layersLeft: stats.layers,
      layerBytesLeft: stats.layerBytes,
      processLeft: proc.processMemory() - proc0,
      memfdAlive,
      memforkAlive,
      memfdLeft: proc.memfdBytes() - memfd0,
      rssLeft: proc.rollup('Rss') - rss0,
      released: tries > 0,
      tries,
    };
  }

  writeSync(1, `${JSON.stringify(findings)}\n`);
}

let cached: Findings | undefined;

/** Runs this file as the child and returns its findings (once). */
function findings(): Findings {
  if (cached !== undefined) return cached;
  // Tests run from the project root (this file may be an ES module: no __filename).
  // The child runs on this runtime, loading TypeScript the way this process does.
  const { command, args } = tsCommand(path.join(projectRoot, 'test', 'gc.test.ts'), [], { exposeGc: true });
  const r = spawnSync(command, args, {
    cwd: projectRoot,
    env: { ...process.env, MEMFORK_GC_CHILD: '1' },
    encoding: 'utf8',
    timeout: 120_000,
  });
  assert.equal(r.signal, null, `the child was killed by ${r.signal}\n${r.stderr}`);
  assert.equal(r.status, 0, `the child exited with ${r.status}\n${r.stderr}`);
  cached = JSON.parse(r.stdout.trim().split('\n').pop() ?? '') as Findings;
  return cached;
}

if (CHILD) {
  child().catch((err: unknown) => {
    process.stderr.write(`${(err as Error)?.stack ?? String(err)}\n`);
    process.exitCode = 1;
  });
} else {
  const skip =
    linuxOnly ||
    (backend.name !== 'linux' && `the ${backend.name} backend is loaded, not linux`);

  test('a segment dropped without close() is released and unmapped after garbage collection', { skip }, (t) => {
    const f = findings();
    t.diagnostic(JSON.stringify(f.dropped));
    assert.equal(f.backend, 'linux');
    assert.equal(f.dropped.released, true, `memoryStats().segments did not drop within ${TRIES} gc rounds`);
    assert.equal(f.dropped.unmapped, true, 'its address is no longer mapped from a memory file of memfork');
    assert.ok(f.dropped.layerMapsAlive >= 2, 'the segment and its clone mapped their layer');
    assert.equal(f.dropped.layerMapsAfter, f.dropped.layerMapsAlive - 2, '/proc/self/maps lost both mappings');
  });

  test('a segment whose buffer is still reachable is not released, and its bytes stay readable', { skip }, () => {
    const f = findings().heldByBuffer;
    assert.equal(f.kept, true, `released within ${HOLD_ROUNDS} gc rounds while its buffer was reachable`);
    assert.equal(f.readable, true, 'the buffer reads as written');
    assert.equal(f.releasedAfter, true, 'released once the buffer is dropped too');
  });

  test('a segment with a view still reachable is not released, and the view stays readable', { skip }, () => {
    const f = findings().heldByView;
    assert.equal(f.kept, true, `released within ${HOLD_ROUNDS} gc rounds while a view was reachable`);
    assert.equal(f.readable, true, 'the view reads as written');
    assert.equal(f.releasedAfter, true, 'released once the view is dropped too');
  });

  test('a typed array over the buffer keeps the segment alive', { skip }, () => {
    const f = findings().heldByTypedArray;
    assert.equal(f.kept, true, `released within ${HOLD_ROUNDS} gc rounds while a typed array was reachable`);
    assert.equal(f.readable, true, 'the typed array reads as written');
    assert.equal(f.releasedAfter, true, 'released once the typed array is dropped too');
  });

  test('a clone stays readable after its origin is garbage-collected', { skip }, () => {
    const f = findings().cloneOutlivesOrigin;
    assert.equal(f.originReleased, true, 'the origin was released');
    assert.equal(f.cloneReadable, true, 'the clone reads as the origin did when cloned');
  });

  test('memory of many dropped, written segments comes back after garbage collection', { skip }, (t) => {
    const f = findings().memory;
    const mib = (n: number): string => `${(n / MiB).toFixed(1)} MiB`;
    t.diagnostic(
      `${f.segments} segments holding ${mib(f.layerBytesAlive)} in layers; after gc (${f.tries} rounds) ` +
        `${f.layersLeft} layers, process anon+shmem ${mib(f.processLeft)} from the start, Rss ${mib(f.rssLeft)}; ` +
        `memory files grew ${mib(f.memfdAlive)}, ${mib(f.memfdLeft)} left`,
    );
    assert.equal(f.released, true, 'every segment was released');
    assert.ok(f.layerBytesAlive >= 128 * MiB, 'the segments held their written bytes in layers');
    assert.equal(f.layersLeft, 0, 'every layer was closed');
    assert.equal(f.layerBytesLeft, 0);
    assert.ok(f.processLeft < 16 * MiB, 'the process gave its memory back');
    assert.ok(f.rssLeft < 16 * MiB, 'its mappings hold no more resident memory than before');
    // Memory files hold pages whether mapped or not: memfork's accounting
    // matches what the kernel says they hold, and every page went with them.
    assert.equal(f.memforkAlive, f.layerBytesAlive, 'memoryStats().layerBytes is what memfork\'s memory files hold');
    assert.ok(f.memfdAlive >= f.layerBytesAlive, 'the memory files grew by the layers');
    assert.equal(f.memfdLeft, 0, 'the memory files hold what they held before (memfork\'s are closed)');
  });
}
