// Memory is shared, not copied, until written: measured from the kernel's
// figures for the whole system (/proc/meminfo Shmem + AnonPages) and for this
// process alone (RssAnon + pages of its memfork memfds), from the anonymous
// memory of segments' own mappings (smaps), and from stats().
// Other processes move the system-wide figures too, so each measurement is
// repeated, and those figures are held to looser bounds (see assertAbout).
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as v8 from 'node:v8';
import * as vm from 'node:vm';
import { Segment, backend, memoryStats } from '../src/index.ts';
import { LinuxBackend } from '../platform/linux/index.ts';
import { allocatedBytes } from '../platform/libc.ts';
import { linuxBackends, useBackend } from './backends.ts';
import { anonymousIn } from './helpers/proc.ts';

const linux = process.platform === 'linux' && backend.name === 'linux';
const skip = !linux && 'Linux only (needs /proc/meminfo and the linux backend)';
/** Whether never-written anonymous memory reads as the kernel's shared zero page (some VMs turn it off). */
const zeroPage = linux && new LinuxBackend().zeroPage;

const MiB = 1 << 20;
const SIZE = 64 * MiB;
/** Pages written in the meminfo tests: 8 MiB, well above the noise of a shared machine. */
const K = 2048;
/** Pages written in the stats() tests, which are exact. */
const K_STATS = 256;
const TRIALS = 5;

/** A collection before each measurement, so the JavaScript heap moves little inside it. */
const collect: () => void = (() => {
  try {
    v8.setFlagsFromString('--expose-gc');
    return vm.runInNewContext('gc') as () => void;
  } catch {
    return () => {};
  }
})();

/** System-wide Shmem + AnonPages in bytes: memfd layers plus private copies, of every process. */
function systemBytes(): number {
  const text = fs.readFileSync('/proc/meminfo', 'utf8');
  return kB(text, 'Shmem') + kB(text, 'AnonPages');
}

/**
 * This process's private anonymous pages (RssAnon) plus the pages allocated
 * to its memfork memfds, as the kernel reports them: the same quantity as
 * systemBytes() without the other processes' noise.
 */
function processBytes(): number {
  return kB(fs.readFileSync('/proc/self/status', 'utf8'), 'RssAnon') + layerFileBytes();
}

/** Bytes allocated to this process's memfork memory files. */
function layerFileBytes(): number {
  let layers = 0;
  for (const name of fs.readdirSync('/proc/self/fd')) {
    try {
      if (!fs.readlinkSync(`/proc/self/fd/${name}`).startsWith('/memfd:memfork')) continue;
      // fstat through libc: Deno's node:fs numbers its own resources, not the OS's descriptors.
      layers += allocatedBytes(Number(name));
    } catch {
      // The descriptor of the directory listing itself, gone by now.
    }
  }
  return layers;
}

function kB(text: string, name: string): number {
  const m = new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(text);
  if (m === null) throw new Error(`no ${name} in ${text.slice(0, 80)}`);
  return Number(m[1]) * 1024;
}

function min(xs: number[]): number {
  return Math.min(...xs);
}

function max(xs: number[]): number {
  return Math.max(...xs);
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[s.length >> 1]!;
}

/** Both measures at once. */
function sample(): { system: number; process: number } {
  return { system: systemBytes(), process: processBytes() };
}

/** Writes one byte into each of `count` pages spread over the segment. */
function touchPages(seg: Segment, count: number, page: number, value: number): void {
  const bytes = new Uint8Array(seg.buffer);
  const pages = seg.byteLength / page;
  const stride = Math.floor(pages / count);
  for (let i = 0; i < count; i++) bytes[i * stride * page + (i % page)] = value;
}

/**
 * Asserts that a growth measured over several trials is about `expected`
 * bytes by this process's own figure (median of the trials, within `slack`),
 * and returns what is wrong with the system-wide figure. That one moves with
 * every other process on the machine, by tens of MiB within a few
 * milliseconds on a busy one, so it only has to bracket `expected` within
 * half the segment: enough to catch a copy of the whole segment, which noise
 * cannot hide from every trial.
 */
function checkAbout(what: string, sys: number[], proc: number[], expected: number, slack: number): string[] {
  assert.ok(Math.abs(median(proc) - expected) <= slack, `${what}: this process grew by ${median(proc)} bytes, expected ${expected} ± ${slack}`);
  const problems: string[] = [];
  if (min(sys) > expected + SIZE / 2) problems.push(`${what}: the system grew by at least ${min(sys)} bytes, expected about ${expected}`);
  if (max(sys) < expected - SIZE / 2) problems.push(`${what}: the system grew by at most ${max(sys)} bytes, expected about ${expected}`);
  return problems;
}

/** Rounds of trials to run before system-wide noise counts as a failure. */
const ATTEMPTS = 3;

/**
 * Runs `measure` (trials that assert this process's figures and return the
 * problems with the system-wide ones) until a round has none, at most
 * ATTEMPTS times. A real regression fails every round; noise rarely does.
 */
function untilQuiet(t: { diagnostic(message: string): void }, measure: () => string[]): void {
  let problems: string[] = [];
  for (let attempt = 1; attempt <= ATTEMPTS; attempt++) {
    problems = measure();
    if (problems.length === 0) return;
    t.diagnostic(`round ${attempt}: ${problems.join('; ')}`);
  }
  assert.fail(problems.join('; '));
}

describe('memory use', { skip }, () => {
  const page = backend.pageSize;

  const pages = (xs: number[]): string => xs.map((x) => Math.round(x / page)).join(', ');

  it('grows by well under 1% of the size on clone(), and by about the pages written afterwards', (t) => {
    const origin = Segment.create(SIZE);
    new Uint8Array(origin.buffer).fill(0x5a);
    const wrote = K * page;
    try {
      untilQuiet(t, () => {
        const growth = { clone: [[], []], write: [[], []], close: [[], []] } as Record<string, [number[], number[]]>;
        const record = (what: string, from: { system: number; process: number }, to: { system: number; process: number }): void => {
          growth[what]![0].push(to.system - from.system);
          growth[what]![1].push(to.process - from.process);
        };
        for (let trial = 0; trial < TRIALS; trial++) {
          collect();
          const m0 = sample();
          const clone = origin.clone();
          const m1 = sample();
          touchPages(clone, K, page, trial);
          const m2 = sample();
          clone.close();
          const m3 = sample();
          record('clone', m0, m1);
          record('write', m1, m2);
          record('close', m2, m3);
        }
        for (const [what, [sys, proc]] of Object.entries(growth)) {
          t.diagnostic(`${what}: growth in pages, system-wide ${pages(sys)}; this process ${pages(proc)}`);
        }
        const [cloneSys, cloneProc] = growth.clone!;
        assert.ok(median(cloneProc) < SIZE / 100, `clone() grew this process's memory by ${median(cloneProc)} bytes`);
        const problems: string[] = [];
        // Copying would cost every trial 64 MiB; noise from elsewhere cannot
        // hide that from the smallest one.
        if (min(cloneSys) >= SIZE / 100) problems.push(`clone() grew the system's memory by ${min(cloneSys)} bytes at least`);
        problems.push(...checkAbout(`writing ${K} pages`, ...growth.write!, wrote, wrote / 4 + 64 * page));
        // Closing the clone gives back its private copies, and only those.
        const [closeSys, closeProc] = growth.close!;
        problems.push(...checkAbout('closing the clone', closeSys.map((x) => -x), closeProc.map((x) => -x), wrote, wrote / 4 + 64 * page));
        return problems;
      });
    } finally {
      const before = processBytes();
      origin.close();
      const freed = before - processBytes();
      t.diagnostic(`closing the origin freed ${Math.round(freed / page)} pages of this process`);
      assert.ok(Math.abs(freed - SIZE) <= SIZE / 4, `closing the origin freed ${freed} bytes, expected about ${SIZE}`);
    }
  });

  it('grows by about the pages written when a written segment is cloned again', (t) => {
    // The second clone moves the origin's written pages into a new layer and
    // drops its private copies: the total stays about what was written. (One
    // run of pages: scattered ones may be joined, copying the clean pages
    // between them, by design.) Each trial writes a run no trial wrote before.
    const origin = Segment.create(SIZE);
    new Uint8Array(origin.buffer).fill(1);
    const first = origin.clone();
    const wrote = K * page;
    let run = 0;
    try {
      untilQuiet(t, () => {
        const sys: number[] = [];
        const proc: number[] = [];
        for (let trial = 0; trial < TRIALS; trial++) {
          const at = (run++ * K) % (SIZE / page - K);
          collect();
          const m0 = sample();
          new Uint8Array(origin.buffer, at * page, wrote).fill(2 + trial);
          const second = origin.clone();
          const m1 = sample();
          sys.push(m1.system - m0.system);
          proc.push(m1.process - m0.process);
          second.close();
        }
        t.diagnostic(`growth in pages, system-wide ${pages(sys)}; this process ${pages(proc)}`);
        return checkAbout('a second clone', sys, proc, wrote, wrote / 4 + 64 * page);
      });
    } finally {
      first.close();
      origin.close();
    }
  });

  it('costs nothing to read never-written memory after clone()', { skip: !zeroPage && 'this kernel has no zero page: reading untouched memory allocates it' }, (t) => {
    // Measured where the reads could allocate: the memfork memory files and
    // the anonymous memory of the two segments' own mappings. The process's
    // whole RssAnon also moves with the runtime's heap and compiler, by 1
    // MiB or more between samples on Deno.
    const growth: number[] = [];
    for (let trial = 0; trial < TRIALS; trial++) {
      const origin = Segment.create(SIZE);
      const clone = origin.clone();
      const segments = [origin, clone];
      const buffers = segments.map((s) => s.buffer);
      const own = () => layerFileBytes() + segments.reduce((n, s) => n + anonymousIn(s.address, SIZE), 0);
      const m0 = own();
      let sum = 0;
      for (const b of buffers) {
        const words = new Int32Array(b);
        for (let i = 0; i < words.length; i += page / 4) sum += words[i]!;
      }
      growth.push(own() - m0);
      assert.equal(sum, 0);
      clone.close();
      origin.close();
    }
    t.diagnostic(`growth in pages: ${pages(growth)}`);
    assert.ok(median(growth) < SIZE / 100, `reading grew memfork's memory by ${median(growth)} bytes`);
  });

  it('memoryStats() counts live segments, layers and mappings as they come and go', () => {
    const base = memoryStats();
    const a = Segment.create(4 * page);
    assert.equal(memoryStats().segments, base.segments + 1);
    const b = Segment.create(1);
    const withTwo = memoryStats().segments;
    assert.equal(withTwo, base.segments + 2);
    new Uint8Array(a.buffer).fill(1);
    const c = a.clone();
    assert.equal(memoryStats().segments, withTwo + 1);
    const mid = memoryStats();
    assert.ok(mid.layers > base.layers);
    assert.ok(mid.mappings > base.mappings);
    assert.ok(mid.layerBytes >= base.layerBytes + 4 * page);
    // Just cloned: a and c share their 4 pages, nothing private; b's one page
    // was never touched. Then c writes 2 pages: those are private to it.
    assert.equal(mid.privateBytes, base.privateBytes);
    new Uint8Array(c.buffer).fill(2, 0, 2 * page);
    new Uint8Array(b.buffer)[0] = 1;
    assert.equal(memoryStats().privateBytes, base.privateBytes + 3 * page, 'c wrote 2 pages, b 1');
    assert.equal(c.stats().privateBytes, 2 * page);
    a.close();
    // a closed: c alone uses the 2 pages it did not write.
    assert.equal(memoryStats().privateBytes, base.privateBytes + 5 * page);
    assert.equal(memoryStats().segments, withTwo);
    a.close();
    assert.equal(memoryStats().segments, withTwo, 'a second close() counts nothing');
    for (const s of [b, c]) s.close();
    const end = memoryStats();
    assert.equal(end.segments, base.segments);
    assert.equal(end.layers, base.layers);
    assert.equal(end.mappings, base.mappings);
    assert.equal(end.layerBytes, base.layerBytes);
    assert.equal(end.privateBytes, base.privateBytes);
  });

  // Last: useBackend() switches the backend of new segments away from the one
  // memoryStats() reports.
  for (const b of linuxBackends) {
    it(`stats() counts exactly the written pages as private in a clone, and none in the origin, on the ${b.name} backend`, () => {
      useBackend(b);
      const origin = Segment.create(SIZE);
      try {
        new Uint8Array(origin.buffer).fill(3);
        const fresh = origin.stats();
        assert.equal(fresh.privateBytes, SIZE, 'a fully written fresh segment is all private');
        assert.equal(fresh.sharedBytes, 0);
        const clone = origin.clone();
        try {
          const before = clone.stats();
          assert.equal(before.privateBytes, 0);
          assert.equal(before.sharedBytes, SIZE);
          touchPages(clone, K_STATS, page, 4);
          const c = clone.stats();
          const o = origin.stats();
          assert.equal(c.privateBytes, K_STATS * page);
          assert.equal(c.sharedBytes, SIZE - K_STATS * page);
          assert.equal(o.privateBytes, 0);
          assert.equal(o.sharedBytes, SIZE);
          assert.ok(c.mappings >= 1 && o.mappings >= 1);
          // The origin's writes are its own, and the clone never sees them.
          touchPages(origin, 8, page, 5);
          assert.equal(origin.stats().privateBytes, 8 * page);
          assert.equal(clone.stats().privateBytes, K_STATS * page);
          assert.equal(new Uint8Array(clone.buffer)[0], 4);
          assert.equal(new Uint8Array(origin.buffer)[0], 5);
          assert.equal(new Uint8Array(clone.buffer)[1], 3);
          // Once the clone is closed, the origin's pages are its alone.
          clone.close();
          const alone = origin.stats();
          assert.equal(alone.privateBytes, SIZE);
          assert.equal(alone.sharedBytes, 0);
        } finally {
          clone.close();
        }
      } finally {
        origin.close();
      }
    });
  }
});
