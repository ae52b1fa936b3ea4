// Model-based test: random sequences of create / write / clone / restore /
// close over several segments, each checked byte for byte against a plain
// Uint8Array that holds what the segment must read.
//
// The seed is printed with every run (and by fast-check on failure); replay one
// with MEMFORK_MODEL_SEED=<seed>. MEMFORK_MODEL_RUNS=<n> runs n times as many
// sequences.
import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { Segment } from '../src/index.ts';
import { LinuxBackend } from '../platform/linux/index.ts';
import { backends, linuxBackends, useBackend, assertBytes, type BackendCase } from './backends.ts';

const MAX_LIVE = 8;

/**
 * The backends that load, plus Linux with budgets so small that freezing,
 * compaction and layer reuse run all the time.
 */
const cases: BackendCase[] = [
  ...backends,
  ...(linuxBackends.length > 0
    ? [
        {
          name: 'linux (tight budgets, restore in place, freezing through moved-aside mappings)',
          make: () => new LinuxBackend({ maxRuns: 8, mapBudget: 256, fdBudget: 6, restoreInPlace: true, windowCopy: true }),
        },
      ]
    : []),
];
const multiplier = Math.max(1, Number(process.env.MEMFORK_MODEL_RUNS ?? 1) || 1);
const fixedSeed = process.env.MEMFORK_MODEL_SEED;
/** Sequences per backend: about 70 sequences (4,000 operations) in all, however many backends load. */
const RUNS = Math.ceil(72 / cases.length) * multiplier;

type Op =
  | { kind: 'create'; size: number }
  | { kind: 'write'; seg: number; how: 'small' | 'straddle' | 'pages' | 'many' | 'view'; a: number; b: number; value: number }
  | { kind: 'clone'; seg: number }
  | { kind: 'restore'; seg: number; from: number; sameLength: boolean }
  | { kind: 'close'; seg: number };

/** Sizes in pages and extra bytes; the few fixed ones make restores between unrelated segments likely. */
function sizeArb(page: number): fc.Arbitrary<number> {
  return fc.oneof(
    { weight: 1, arbitrary: fc.constant(0) },
    { weight: 4, arbitrary: fc.constantFrom(page, 3 * page + 5, 8 * page, 16 * page - 1) },
    // Large enough for writes to many pages (copied through a pipe, not pwrite),
    // and 2 MiB and over: a first clone moves page tables aside, and pages are
    // frozen in place through that mapping.
    { weight: 1, arbitrary: fc.constantFrom(200 * page, 300 * page + 7, 2 ** 21, 2 ** 21 + 5 * page + 3) },
    {
      weight: 3,
      arbitrary: fc
        .tuple(fc.integer({ min: 1, max: 64 }), fc.integer({ min: 0, max: page - 1 }), fc.boolean())
        .map(([pages, extra, exact]) => (exact ? pages * page : (pages - 1) * page + extra + 1)),
    },
  );
}

function opArb(page: number, sizes = sizeArb(page)): fc.Arbitrary<Op> {
  const idx = fc.nat(1000);
  return fc.oneof(
    { weight: 2, arbitrary: fc.record({ kind: fc.constant('create' as const), size: sizes }) },
    {
      weight: 8,
      arbitrary: fc.record({
        kind: fc.constant('write' as const),
        seg: idx,
        how: fc.constantFrom('small' as const, 'straddle' as const, 'pages' as const, 'many' as const, 'view' as const),
        a: fc.nat(1 << 20),
        b: fc.nat(1 << 20),
        value: fc.integer({ min: 0, max: 255 }),
      }),
    },
    { weight: 3, arbitrary: fc.record({ kind: fc.constant('clone' as const), seg: idx }) },
    { weight: 3, arbitrary: fc.record({ kind: fc.constant('restore' as const), seg: idx, from: idx, sameLength: fc.boolean() }) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('close' as const), seg: idx }) },
  );
}

interface Live {
  seg: Segment;
  model: Uint8Array;
  /** The buffer read at creation: it must stay valid, and alias the segment, until close(). */
  buffer: ArrayBuffer;
  id: number;
}

let totalOps = 0;

/** Runs one sequence; returns after closing every segment it made. */
function runSequence(ops: readonly Op[], page: number): void {
  const live: Live[] = [];
  let nextId = 0;
  const add = (seg: Segment, model: Uint8Array): void => {
    live.push({ seg, model, buffer: seg.buffer, id: nextId++ });
  };
  const check = (l: Live, step: number, op: Op): void => {
    assert.equal(l.seg.buffer, l.buffer, `segment #${l.id}: buffer is the same object`);
    assertBytes(new Uint8Array(l.buffer), l.model, `step ${step} (${JSON.stringify(op)}): segment #${l.id}`);
  };
  try {
    ops.forEach((op, step) => {
      totalOps++;
      const touched: Live[] = [];
      switch (op.kind) {
        case 'create': {
          if (live.length >= MAX_LIVE) return;
          add(Segment.create(op.size), new Uint8Array(op.size));
          touched.push(live[live.length - 1]!);
          break;
        }
        case 'write': {
          if (live.length === 0) return;
          const l = live[op.seg % live.length]!;
          const n = l.model.byteLength;
          if (n === 0) return;
          const pages = Math.ceil(n / page);
          let off: number;
          let len: number;
          if (op.how === 'many') {
            // A byte in each of up to 80 pages, one in `stride`: scattered or in runs.
            const stride = 1 + (op.b % 6);
            const at = (op.a % pages) * page + (op.b % page);
            let count = 0;
            for (let o = at; o < n && count < 80; o += stride * page, count++) {
              const v = (op.value + count) & 0xff;
              new Uint8Array(l.buffer)[o] = v;
              l.model[o] = v;
            }
            touched.push(l);
            break;
          }
          if (op.how === 'pages') {
            off = (op.a % pages) * page;
            len = Math.min((1 + (op.b % 4)) * page, n - off);
          } else if (op.how === 'straddle' && pages > 1) {
            const boundary = (1 + (op.a % (pages - 1))) * page;
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
          touched.push(l);
          break;
        }
        case 'clone': {
          if (live.length === 0 || live.length >= MAX_LIVE) return;
          const l = live[op.seg % live.length]!;
          add(l.seg.clone(), l.model.slice());
          touched.push(l, live[live.length - 1]!);
          break;
        }
        case 'restore': {
          if (live.length === 0) return;
          const target = live[op.seg % live.length]!;
          const pool = op.sameLength ? live.filter((l) => l.model.byteLength === target.model.byteLength) : live;
          const source = pool[op.from % pool.length]!;
          if (source.model.byteLength !== target.model.byteLength) {
            assert.throws(() => target.seg.restore(source.seg), RangeError);
          } else {
            target.seg.restore(source.seg);
            target.model.set(source.model);
          }
          touched.push(target, source);
          break;
        }
        case 'close': {
          if (live.length === 0) return;
          const [l] = live.splice(op.seg % live.length, 1);
          l!.seg.close();
          assert.equal(l!.buffer.byteLength, 0, 'close() detaches the buffer');
          break;
        }
      }
      const all = step % 8 === 7 || op.kind === 'close';
      for (const l of all ? live : touched) check(l, step, op);
    });
    for (const l of live) check(l, ops.length, { kind: 'close', seg: -1 });
  } finally {
    for (const l of live) l.seg.close();
  }
}

describe('segments behave like plain byte arrays through random operations', () => {
  after(() => {
    // Every CI run covers a few thousand operations across the backends.
    assert.ok(totalOps >= 2000, `only ${totalOps} operations ran`);
  });

  // Only segments of 2 MiB and more: first clones move page tables aside, and
  // pages frozen in place are written through the moved mapping.
  type SizedCase = BackendCase & { sizes?: (page: number) => fc.Arbitrary<number> };
  const large: SizedCase[] =
    linuxBackends.length > 0
      ? [
          {
            name: 'linux (2 MiB segments, written through moved-aside mappings)',
            make: () => new LinuxBackend({ windowCopy: true }),
            sizes: (page) => fc.constantFrom(2 ** 21, 2 ** 21 + 3 * page + 5),
          },
        ]
      : [];
  for (const b of [...cases, ...large] as SizedCase[]) {
    it(`on the ${b.name} backend`, (t) => {
      const backend = useBackend(b);
      const seed = fixedSeed !== undefined ? Number(fixedSeed) : (Date.now() ^ (Math.random() * 0x7fffffff)) | 0;
      t.diagnostic(`seed ${seed} (replay with MEMFORK_MODEL_SEED=${seed})`);
      const before = totalOps;
      try {
        fc.assert(
          fc.property(
            fc.array(opArb(backend.pageSize, b.sizes?.(backend.pageSize)), { minLength: 10, maxLength: 120, size: 'max' }),
            (ops) => runSequence(ops, backend.pageSize),
          ),
          { seed, numRuns: RUNS },
        );
      } catch (err) {
        // fast-check's message names the seed and the shrunk sequence too.
        (err as Error).message = `model test failed on ${b.name} with seed ${seed}:\n${(err as Error).message}`;
        throw err;
      }
      t.diagnostic(`${totalOps - before} operations`);
    });
  }
});
