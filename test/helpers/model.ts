// The model behind the model-based tests: random sequences of operations on
// several segments, each segment checked against a plain Uint8Array that holds
// what it must read, its kept views against the same bytes, and its stats()
// against a model of which pages it wrote and which segments share a run list.
//
// Used by test/model.test.ts (small segments, many sequences, in the test
// process) and test/fixtures/model-large.ts (hundreds of MiB, a few sequences,
// in a child process so that a crash fails a test instead of the runner).
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import fc from 'fast-check';
import { Segment, SegmentError } from '../../src/index.ts';
import { liveSegments } from '../../src/segment.ts';
import type { Backend } from '../../src/backend.ts';
import { LinuxBackend } from '../../platform/linux/index.ts';
import { assertBytes } from '../backends.ts';

/** How one bulk write spreads over a segment. */
export type BulkHow = 'stride' | 'random' | 'run';

export type Op =
  | { kind: 'create'; size: number }
  | { kind: 'from'; seg: number; size: number; copyOf: boolean; value: number }
  | { kind: 'write'; seg: number; how: 'small' | 'straddle' | 'pages' | 'view'; a: number; b: number; value: number }
  | { kind: 'bulk'; seg: number; how: BulkHow; a: number; b: number; value: number }
  | { kind: 'clone'; seg: number }
  | { kind: 'restore'; seg: number; from: number; pick: 'other' | 'oldest' | 'self' | 'any' }
  | { kind: 'close'; seg: number }
  | { kind: 'keepView'; seg: number; a: number; b: number }
  | { kind: 'stats'; seg: number };

/** Whether memory files (shmem) may be given huge pages here, which rounds their allocation up to 2 MiB. */
const shmemHuge = ((): boolean => {
  try {
    const mode = /\[(\w+)\]/.exec(readFileSync('/sys/kernel/mm/transparent_hugepage/shmem_enabled', 'utf8'))?.[1];
    return mode !== undefined && mode !== 'never' && mode !== 'deny' && mode !== 'advise';
  } catch {
    return false;
  }
})();

/** Every 2nd, 3rd or 8th page: the strides a bulk 'stride' write uses. */
export const STRIDES = [2, 3, 8] as const;

/** A short readable form of an operation, for fast-check's counterexamples. */
export function describeOp(op: Op): string {
  switch (op.kind) {
    case 'create':
      return `create(${op.size})`;
    case 'from':
      return op.copyOf ? `from(copy of s[${op.seg}])` : `from(${op.size} bytes of ${op.value})`;
    case 'write':
      return `write(s[${op.seg}], ${op.how}, a=${op.a}, b=${op.b}, value=${op.value})`;
    case 'bulk':
      return op.how === 'stride'
        ? `bulk(s[${op.seg}], stride ${STRIDES[op.b % STRIDES.length]} pages from ${op.a}, value=${op.value})`
        : op.how === 'random'
          ? `bulk(s[${op.seg}], random ${1 + (op.b % 7)}/8 of pages, seed ${op.a}, value=${op.value})`
          : `bulk(s[${op.seg}], run a=${op.a}, b=${op.b}, value=${op.value})`;
    case 'clone':
      return `clone(s[${op.seg}])`;
    case 'restore':
      return `restore(s[${op.seg}], ${op.pick} s[${op.from}])`;
    case 'close':
      return `close(s[${op.seg}])`;
    case 'keepView':
      return `keepView(s[${op.seg}], a=${op.a}, b=${op.b})`;
    case 'stats':
      return `stats(s[${op.seg}])`;
  }
}

function withName(op: Op): Op {
  Object.defineProperty(op, fc.toStringMethod, { value: () => describeOp(op), enumerable: false });
  return op;
}

/** Operation weights; bulk writes and restores between segments are where users are. */
export function opArb(sizes: fc.Arbitrary<number>): fc.Arbitrary<Op> {
  const idx = fc.nat(1000);
  const value = fc.integer({ min: 0, max: 255 });
  const arbs: { weight: number; arbitrary: fc.Arbitrary<Op> }[] = [
    { weight: 2, arbitrary: fc.record({ kind: fc.constant('create' as const), size: sizes }) },
    {
      weight: 1,
      arbitrary: fc.record({ kind: fc.constant('from' as const), seg: idx, size: sizes, copyOf: fc.boolean(), value }),
    },
    {
      weight: 6,
      arbitrary: fc.record({
        kind: fc.constant('write' as const),
        seg: idx,
        how: fc.constantFrom('small' as const, 'straddle' as const, 'pages' as const, 'view' as const),
        a: fc.nat(1 << 20),
        b: fc.nat(1 << 20),
        value,
      }),
    },
    {
      weight: 4,
      arbitrary: fc.record({
        kind: fc.constant('bulk' as const),
        seg: idx,
        how: fc.constantFrom('stride' as const, 'random' as const, 'run' as const),
        a: fc.nat(1 << 20),
        b: fc.nat(1 << 20),
        value,
      }),
    },
    { weight: 4, arbitrary: fc.record({ kind: fc.constant('clone' as const), seg: idx }) },
    {
      weight: 5,
      arbitrary: fc.record({
        kind: fc.constant('restore' as const),
        seg: idx,
        from: idx,
        // Mostly between two segments; to the oldest one of the same length
        // (an old snapshot, across layers); now and then itself, or any length.
        pick: fc.constantFrom('other' as const, 'other' as const, 'oldest' as const, 'oldest' as const, 'self' as const, 'any' as const),
      }),
    },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('close' as const), seg: idx }) },
    { weight: 2, arbitrary: fc.record({ kind: fc.constant('keepView' as const), seg: idx, a: fc.nat(1 << 20), b: fc.nat(1 << 20) }) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('stats' as const), seg: idx }) },
  ];
  return fc.oneof(...arbs).map(withName);
}

interface KeptView {
  view: ArrayBuffer;
  offset: number;
}

interface Live {
  seg: Segment;
  model: Uint8Array;
  /** The buffer read at creation: it must stay valid, and alias the segment, until close(). */
  buffer: ArrayBuffer;
  id: number;
  views: KeptView[];
  /** Never cloned nor restored: still its own shared layer (Linux). */
  fresh: boolean;
  /** Pages (of the backend's page size) written since the segment last took part in a clone or restore. */
  written: Uint8Array;
  writtenCount: number;
  /**
   * Segments in one group have the same run list (Linux): set by a clone
   * (source and clone) or a restore (source and target). Membership may be
   * under-approximated, never over.
   */
  group: number;
}

/** What a run of sequences did, counted after each operation ran. */
export interface Counts {
  [what: string]: number;
}

export interface RunnerOptions {
  backend: Backend;
  /** Most live segments; at the cap, a create/clone first closes another segment. */
  maxLive: number;
  /** Check every live segment's bytes every this many steps (touched ones after every step). */
  fullCheckEvery: number;
  /** A clean budget refusal (SegmentError ENOMEM) is an allowed, counted outcome. */
  allowBudgetRefusal?: boolean;
  counts: Counts;
}

const count = (counts: Counts, what: string, n = 1): void => {
  counts[what] = (counts[what] ?? 0) + n;
};

/** xorshift32, for bulk writes that must be the same when replayed. */
export function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 2 ** 32;
  };
}

/**
 * Runs one sequence and closes every segment it made. Throws on the first
 * difference, with the steps that ran so far (most recent last).
 */
export function runSequence(ops: readonly Op[], opts: RunnerOptions): void {
  const { backend, counts } = opts;
  const page = backend.pageSize;
  // Write patterns work in pages of at least 4 KiB (the copy backend's page may be 1 byte).
  const wpage = Math.max(page, 4096);
  const linux = backend instanceof LinuxBackend ? backend : undefined;
  // memoryStats() as the public function computes it, for the backend under
  // test (the public one reports the backend chosen at load time).
  const memoryStats = () => ({ segments: liveSegments(), ...backend.memory() });
  const live: Live[] = [];
  const closedViews: ArrayBuffer[] = [];
  const log: string[] = [];
  let nextId = 0;
  let nextGroup = 0;

  const pagesOf = (n: number): number => Math.ceil(n / page);
  const add = (seg: Segment, model: Uint8Array, fresh: boolean): Live => {
    const l: Live = {
      seg,
      model,
      buffer: seg.buffer,
      id: nextId++,
      views: [],
      fresh,
      written: new Uint8Array(pagesOf(model.byteLength)),
      writtenCount: 0,
      group: nextGroup++,
    };
    live.push(l);
    return l;
  };
  const markWritten = (l: Live, from: number, to: number): void => {
    for (let p = Math.floor(from / page); p <= Math.floor((to - 1) / page); p++) {
      if (l.written[p] === 0) {
        l.written[p] = 1;
        l.writtenCount++;
      }
    }
  };
  const reset = (l: Live): void => {
    l.written.fill(0);
    l.writtenCount = 0;
  };
  /** The live segment a write or bulk operation picks, with its length and write pages; undefined when there is none to write to. */
  const pickWritable = (index: number): { l: Live; n: number; pages: number } | undefined => {
    const l = live.length > 0 ? live[index % live.length]! : undefined;
    const n = l?.model.byteLength ?? 0;
    return l === undefined || n === 0 ? undefined : { l, n, pages: Math.ceil(n / wpage) };
  };
  const closeLive = (i: number): void => {
    const [l] = live.splice(i, 1);
    l!.seg.close();
    assert.equal(l!.buffer.byteLength, 0, `close() detaches segment #${l!.id}'s buffer`);
    for (const v of l!.views) {
      assert.equal(v.view.byteLength, 0, `close() detaches segment #${l!.id}'s view at ${v.offset}`);
      closedViews.push(v.view);
    }
    closedViews.push(l!.buffer);
    count(counts, 'close');
  };
  const pickOther = (l: Live): number => {
    // At the cap: close a segment other than `l` (the one a clone copies).
    const i = live.findIndex((x) => x !== l);
    return i;
  };

  const checkBytes = (l: Live, what: string): void => {
    assert.equal(l.seg.buffer, l.buffer, `${what}: segment #${l.id}: buffer is the same object`);
    assertBytes(new Uint8Array(l.buffer), l.model, `${what}: segment #${l.id}`);
  };
  const checkViews = (what: string): void => {
    for (const l of live) {
      for (const v of l.views) {
        assertBytes(
          new Uint8Array(v.view),
          l.model.subarray(v.offset, v.offset + v.view.byteLength),
          `${what}: segment #${l.id}'s view at ${v.offset}`,
        );
      }
    }
    for (const v of closedViews) assert.equal(v.byteLength, 0, `${what}: a closed segment's buffer or view is attached again`);
  };

  // Budget compaction (only near a budget) rewrites segments other than the
  // ones an operation names, so groups then say nothing: reset them.
  const nearBudget = (): boolean => {
    if (linux === undefined) return false;
    const m = memoryStats();
    let most = 0;
    for (const l of live) most = Math.max(most, pagesOf(l.model.byteLength));
    return m.layers + 8 >= linux.fdBudget || m.mappings + 3 * (2 * most + 1) + 16 >= linux.mapBudget;
  };

  /**
   * stats() against the model. Linux: a fresh segment is its own memfd, and
   * every page of it has been read by a check, which allocates memfd pages:
   * all private. Otherwise a page is private when the segment wrote it since
   * its run list was set (a private copy), or when no other live segment
   * maps its layer page; shared when another does. Every page of every
   * segment here is in some layer or written (all were read while fresh, so
   * no range became anonymous memory at the first clone), so private +
   * shared is the whole segment. Two segments with the same run list (one
   * group) hold the same layer pages, and their private pages are at least
   * the ones written (a segment also holds
   * private copies of pages another rewrote in place under it: pinned
   * pages, platform/linux/engine.ts). Alone in its group, a segment may share some of
   * its pages with segments whose run lists differ from its own, through
   * layers both still use; which ones depends on how the engine froze and
   * compacted (written pages a few apart are frozen as one run with the clean
   * pages between, which moves those into a layer of their own), so only the
   * bounds are asserted: at least the written pages private.
   */
  const checkStats = (l: Live, what: string): void => {
    const s = l.seg.stats();
    const n = l.model.byteLength;
    const rounded = pagesOf(n) * page;
    const w = `${what}: segment #${l.id} stats ${JSON.stringify(s)}`;
    assert.equal(s.byteLength, n, w);
    if (n === 0) {
      assert.deepEqual(s, { byteLength: 0, privateBytes: 0, sharedBytes: 0, mappings: 0 }, w);
      return;
    }
    if (backend.name === 'copy') {
      assert.deepEqual(s, { byteLength: n, privateBytes: rounded, sharedBytes: 0, mappings: 0 }, w);
      return;
    }
    if (backend.name === 'darwin') {
      // VM_REGION_TOP_INFO counts resident pages by the object that holds
      // them; the simulation on Linux notices a write only when it changes a
      // byte (writing a 0 over a 0 leaves the page uncounted): only bounds.
      assert.ok(s.privateBytes + s.sharedBytes <= rounded, `${w}: more than the segment`);
      assert.ok(s.mappings >= 1, w);
      return;
    }
    if (l.fresh) {
      assert.deepEqual(s, { byteLength: n, privateBytes: rounded, sharedBytes: 0, mappings: 1 }, w);
      return;
    }
    assert.equal(s.privateBytes + s.sharedBytes, rounded, `${w}: private + shared is not the whole segment`);
    assert.ok(s.mappings >= 1 && s.mappings <= 2 * pagesOf(n) + 1, `${w}: mappings`);
    const twin = live.find((x) => x !== l && x.group === l.group);
    if (twin !== undefined) {
      // Beyond the pages it wrote, a mapped segment holds private copies of
      // pages another segment rewrote in place under it (pinned pages).
      assert.ok(s.privateBytes >= l.writtenCount * page, `${w}: fewer private bytes than the ${l.writtenCount} pages written (same run list as #${twin.id})`);
      // Their mappings may differ: one that keeps private copies where its
      // run list moved on (pinned pages, frozen deferred: freeze.ts) maps
      // the layer it showed before, its twin the run list.
    } else {
      assert.ok(s.privateBytes >= l.writtenCount * page, `${w}: fewer private bytes than the ${l.writtenCount} pages written`);
    }
  };

  /** memoryStats() against the segments' own stats and the model. */
  const checkMemory = (what: string): void => {
    const m = memoryStats();
    const w = `${what}: memoryStats() ${JSON.stringify(m)}`;
    // Empty segments hold no memory and are not counted.
    assert.equal(m.segments, live.filter((l) => l.model.byteLength > 0).length, w);
    let priv = 0;
    let maps = 0;
    let all = 0;
    let freshBytes = 0;
    let mostClean = 0;
    for (const l of live) {
      const s = l.seg.stats();
      priv += s.privateBytes;
      maps += s.mappings;
      const rounded = pagesOf(l.model.byteLength) * page;
      all += rounded;
      if (l.fresh) freshBytes += rounded;
      // A page rewritten in place under a segment is copied into it (pinned):
      // it counts in its private bytes, and the layer need not hold it.
      else mostClean = Math.max(mostClean, rounded - Math.max(l.writtenCount * page, s.privateBytes));
    }
    assert.equal(m.privateBytes, priv, `${w}: privateBytes is not the sum of the segments' (${priv})`);
    if (backend.name === 'copy') {
      assert.equal(m.mappings, 0, w);
      assert.equal(m.layers, live.filter((l) => l.model.byteLength > 0).length, w);
      return;
    }
    // Moved-aside mappings of layers count too, on Linux.
    assert.ok(m.mappings >= maps, `${w}: fewer mappings than the segments use (${maps})`);
    if (linux !== undefined) {
      assert.ok(m.mappings <= linux.mapBudget, `${w}: over the mapping budget ${linux.mapBudget}`);
      // Layers hold each fresh segment's pages, and every page a non-fresh
      // segment reads from them: neither written since its last clone or
      // restore nor pinned; a page no live segment maps is punched out.
      assert.ok(m.layerBytes >= freshBytes + mostClean, `${w}: layers hold less than the segments read from them (${freshBytes + mostClean})`);
      // (Unless memory files get huge pages: a few pages written then take 2 MiB.)
      if (!shmemHuge) assert.ok(m.layerBytes <= all, `${w}: layers hold more than all live segments together (${all})`);
    }
  };

  /** After a clean refusal: every segment reads as before and takes a write. */
  const checkIntactAndUsable = (what: string): void => {
    for (const l of live) {
      checkBytes(l, `${what} (after a refusal)`);
      if (l.model.byteLength === 0) continue;
      const v = (l.model[0]! + 1) & 0xff;
      new Uint8Array(l.buffer)[0] = v;
      l.model[0] = v;
      markWritten(l, 0, 1);
      assert.equal(new Uint8Array(l.seg.view(0, 1))[0], v, `${what}: segment #${l.id} takes a write after a refusal`);
      l.seg.stats();
    }
    checkViews(`${what} (after a refusal)`);
  };

  try {
    ops.forEach((op, step) => {
      const what = `step ${step} (${describeOp(op)})`;
      if (nearBudget()) for (const l of live) l.group = nextGroup++;
      const touched: Live[] = [];
      let ran: string | undefined = op.kind;
      let entry = '';
      try {
        switch (op.kind) {
          case 'create': {
            if (live.length >= opts.maxLive) closeLive(op.size % live.length);
            const l = add(Segment.create(op.size), new Uint8Array(op.size), true);
            touched.push(l);
            entry = `#${l.id} = create(${op.size})`;
            break;
          }
          case 'from': {
            const src = op.copyOf && live.length > 0 ? live[op.seg % live.length]! : undefined;
            if (live.length >= opts.maxLive) {
              const i = src === undefined ? op.seg % live.length : pickOther(src);
              closeLive(i);
            }
            let bytes: Uint8Array;
            let seg: Segment;
            if (src !== undefined) {
              seg = Segment.from(src.buffer);
              bytes = src.model.slice();
            } else {
              bytes = new Uint8Array(op.size);
              for (let i = 0; i < bytes.length; i += 61) bytes[i] = (op.value + i) & 0xff;
              seg = Segment.from(bytes);
            }
            const l = add(seg, bytes, true);
            touched.push(l);
            if (src !== undefined) touched.push(src);
            entry = `#${l.id} = from(${src === undefined ? `${op.size} bytes` : `#${src.id}`})`;
            break;
          }
          case 'write': {
            const target = pickWritable(op.seg);
            if (target === undefined) {
              ran = undefined;
              break;
            }
            const { l, n, pages } = target;
            let off: number;
            let len: number;
            if (op.how === 'pages') {
              off = (op.a % pages) * wpage;
              len = Math.min((1 + (op.b % 4)) * wpage, n - off);
            } else if (op.how === 'straddle' && pages > 1) {
              const boundary = (1 + (op.a % (pages - 1))) * wpage;
              off = boundary - 1 - (op.b % 16);
              len = Math.min(2 + (op.b % 31), n - off);
            } else {
              off = op.a % n;
              len = 1 + (op.b % Math.min(64, n - off));
            }
            const bytes = new Uint8Array(len);
            for (let i = 0; i < len; i++) bytes[i] = (op.value + i * 7) & 0xff;
            if (op.how === 'view') new Uint8Array(l.seg.view(off, len)).set(bytes);
            else new Uint8Array(l.buffer, off, len).set(bytes);
            l.model.set(bytes, off);
            markWritten(l, off, off + len);
            touched.push(l);
            entry = `#${l.id}[${off}..${off + len}) = ${op.value}+7i`;
            break;
          }
          case 'bulk': {
            const target = pickWritable(op.seg);
            if (target === undefined) {
              ran = undefined;
              break;
            }
            const { l, n, pages } = target;
            const mem = new Uint8Array(l.buffer);
            // One byte in each chosen page (a different one per page), or whole pages for runs.
            const touch = (p: number, v: number): void => {
              const at = Math.min(p * wpage + ((p * 131 + op.a) % wpage), n - 1);
              mem[at] = v;
              l.model[at] = v;
              markWritten(l, at, at + 1);
            };
            let written = 0;
            if (op.how === 'stride') {
              const stride = STRIDES[op.b % STRIDES.length]!;
              for (let p = op.a % stride; p < pages; p += stride, written++) touch(p, (op.value + p) & 0xff);
              entry = `#${l.id}: one page in ${stride}, ${written} pages`;
            } else if (op.how === 'random') {
              const r = rng(op.a + 1);
              const density = (1 + (op.b % 7)) / 8;
              for (let p = 0; p < pages; p++) if (r() < density) (touch(p, (op.value + p) & 0xff), written++);
              entry = `#${l.id}: ${written} of ${pages} pages at random`;
            } else {
              const start = (op.a % pages) * wpage;
              const end = Math.min(n, start + (1 + (op.b % pages)) * wpage);
              mem.fill(op.value, start, end);
              l.model.fill(op.value, start, end);
              markWritten(l, start, end);
              written = Math.ceil((end - start) / wpage);
              entry = `#${l.id}[${start}..${end}) = ${op.value}`;
            }
            count(counts, `pages written in bulk`, written);
            ran = `bulk ${op.how}`;
            touched.push(l);
            break;
          }
          case 'clone': {
            if (live.length === 0) {
              ran = undefined;
              break;
            }
            const l = live[op.seg % live.length]!;
            if (live.length >= opts.maxLive) closeLive(pickOther(l));
            const c = add(l.seg.clone(), l.model.slice(), false);
            l.fresh = false;
            reset(l);
            l.group = c.group;
            touched.push(l, c);
            entry = `#${c.id} = clone(#${l.id})`;
            break;
          }
          case 'restore': {
            if (live.length === 0) {
              ran = undefined;
              break;
            }
            const target = live[op.seg % live.length]!;
            const same = live.filter((x) => x.model.byteLength === target.model.byteLength);
            const others = same.filter((x) => x !== target);
            let source: Live;
            if (op.pick === 'self') source = target;
            else if (op.pick === 'any') source = live[op.from % live.length]!;
            else if (others.length === 0) source = target;
            else if (op.pick === 'oldest') source = others[0]!;
            else source = others[op.from % others.length]!;
            touched.push(target, source);
            entry = `restore(#${target.id}, #${source.id})`;
            if (source.model.byteLength !== target.model.byteLength) {
              assert.throws(() => target.seg.restore(source.seg), RangeError, what);
              ran = 'restore refused (length)';
            } else if (source === target) {
              target.seg.restore(source.seg);
              ran = 'restore(self)';
            } else {
              target.seg.restore(source.seg);
              target.model.set(source.model);
              for (const x of [target, source]) {
                x.fresh = false;
                reset(x);
              }
              target.group = source.group = nextGroup++;
              ran = source.id < target.id ? 'restore to an older segment' : 'restore to a newer segment';
            }
            break;
          }
          case 'close': {
            if (live.length === 0) {
              ran = undefined;
              break;
            }
            const i = op.seg % live.length;
            entry = `close(#${live[i]!.id})`;
            closeLive(i);
            ran = undefined; // counted by closeLive
            break;
          }
          case 'keepView': {
            const l = live.length > 0 ? live[op.seg % live.length]! : undefined;
            const n = l?.model.byteLength ?? 0;
            if (l === undefined || n === 0) {
              ran = undefined;
              break;
            }
            const off = op.a % n;
            const len = Math.min(n - off, op.b % (3 * wpage));
            l.views.push({ view: l.seg.view(off, len), offset: off });
            entry = `#${l.id}: keep view(${off}, ${len})`;
            break;
          }
          case 'stats': {
            const l = live.length > 0 ? live[op.seg % live.length]! : undefined;
            if (l === undefined) {
              ran = undefined;
              break;
            }
            checkStats(l, what);
            checkMemory(what);
            entry = `stats(#${l.id})`;
            break;
          }
        }
      } catch (err) {
        if (!(opts.allowBudgetRefusal === true && err instanceof SegmentError && err.code === 'ENOMEM')) throw err;
        // A clean refusal: the operation did nothing, every segment is intact.
        count(counts, 'budget refusals (ENOMEM)');
        log.push(`${step}: ${describeOp(op)} refused: ${err.message}`);
        // The restore target and clone source may have been frozen before
        // the refusal: their run lists changed.
        for (const l of live) l.group = nextGroup++;
        checkIntactAndUsable(what);
        return;
      }
      if (ran === undefined) {
        if (entry !== '') log.push(`${step}: ${entry}`);
        return;
      }
      count(counts, ran);
      count(counts, 'operations');
      log.push(`${step}: ${entry}`);
      const all = step % opts.fullCheckEvery === opts.fullCheckEvery - 1;
      for (const l of all ? live : touched) {
        if (!live.includes(l)) continue;
        checkBytes(l, what);
        checkStats(l, what);
      }
      checkViews(what);
      // memoryStats() walks every segment: on full checks (and stats steps).
      if (all) checkMemory(what);
    });
    for (const l of live) {
      checkBytes(l, 'at the end');
      checkStats(l, 'at the end');
    }
    checkViews('at the end');
    checkMemory('at the end');
  } catch (err) {
    const e = err as Error;
    e.message = `${e.message}\nsteps that ran (last 30): \n  ${log.slice(-30).join('\n  ')}`;
    throw e;
  } finally {
    for (const l of live) l.seg.close();
    for (const l of live) for (const v of l.views) assert.equal(v.view.byteLength, 0);
  }
}
