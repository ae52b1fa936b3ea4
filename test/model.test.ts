// Model-based test: random sequences of create / from / write (small, and bulk:
// strided, dense random, runs) / clone / restore / close / kept views / stats
// over several segments, each checked byte for byte against a plain
// Uint8Array that holds what the segment must read, and its stats() and
// memoryStats() against a model of the pages it wrote (test/helpers/model.ts).
//
// Two tiers. Small segments (up to 2 MiB), many sequences, here. Real sizes
// (hundreds of MiB), a few sequences, in a child process
// (test/fixtures/model-large.ts), so that a crash fails the test instead of
// killing the runner.
//
// Each backend's seed is printed with every run (and by fast-check on
// failure); replay one with MEMFORK_MODEL_SEED=<seed>. MEMFORK_MODEL_RUNS=<n>
// runs n times as many sequences, in both tiers.
import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import fc from 'fast-check';
import { LinuxBackend } from '../platform/linux/index.ts';
import { backends, linuxBackends, useBackend, type BackendCase } from './backends.ts';
import { opArb, runSequence, type Counts } from './helpers/model.ts';
import { projectRoot, runtime, tsCommand } from './helpers/runtime.ts';

const MAX_LIVE = 12;

type SizedCase = BackendCase & {
  sizes?: (page: number) => fc.Arbitrary<number>;
  /** The budgets are so small that a clean ENOMEM refusal can be the right answer. */
  tight?: boolean;
};

/**
 * The backends that load, plus Linux with budgets so small that freezing,
 * compaction and layer reuse run all the time (and pages written under a
 * mapped segment always go to new runs), and Linux with 2 MiB segments
 * only (first clones move page tables aside, and pages frozen in place are
 * written through the moved mapping).
 */
const cases: SizedCase[] = [
  ...backends,
  ...(linuxBackends.length > 0
    ? [
        {
          name: 'linux (tight budgets, restore in place, freezing through moved-aside mappings, no pinned pages)',
          make: () => new LinuxBackend({ maxRuns: 8, mapBudget: 256, fdBudget: 6, restoreInPlace: true, windowCopy: true, privatize: false }),
          tight: true,
        },
        {
          name: 'linux (2 MiB segments, written through moved-aside mappings)',
          make: () => new LinuxBackend({ windowCopy: true }),
          sizes: (page: number) => fc.constantFrom(2 ** 21, 2 ** 21 + 3 * page + 5),
        },
      ]
    : []),
];
const multiplier = Math.max(1, Number(process.env.MEMFORK_MODEL_RUNS ?? 1) || 1);
const fixedSeed = process.env.MEMFORK_MODEL_SEED;
/**
 * Whether this is the runtime that runs the whole model test (Node.js 20,
 * the one `npm test` runs first; MEMFORK_MODEL_LARGE=1 makes any runtime
 * one): the others run a third of the sequences, enough for what differs
 * between runtimes (views, detaching), which keeps the suite's CI time small.
 */
const mainRuntime = process.env.MEMFORK_MODEL_LARGE === '1' || (runtime === 'node' && process.versions.node.split('.')[0] === '20');
/** Sequences per backend: about 72 in all (24 off the main runtime), however many backends load. */
const RUNS = Math.ceil((mainRuntime ? 72 : 24) / cases.length) * multiplier;
/** What the operation counts are held to: a share of the sequences' length. */
const scale = (mainRuntime ? 1 : 1 / 3) * multiplier;
/** Operations, restores to an older segment and clones that must run (times `scale`), whatever the sequences drawn. */
const MIN_OPERATIONS = 2000;
const MIN_OLDER_RESTORES = 100;
const MIN_CLONES = 300;
/** Most rounds of RUNS sequences a backend runs to reach its share of those. */
const MAX_ROUNDS = 8;

/** Sizes in pages and extra bytes; the few fixed ones make restores between unrelated segments likely. */
function sizeArb(page: number): fc.Arbitrary<number> {
  return fc.oneof(
    { weight: 1, arbitrary: fc.constant(0) },
    { weight: 6, arbitrary: fc.constantFrom(page, 3 * page + 5, 8 * page, 16 * page - 1) },
    // Large enough for writes to many pages (copied through a pipe, not pwrite),
    // and 2 MiB and over: a first clone moves page tables aside.
    { weight: 2, arbitrary: fc.constantFrom(200 * page, 300 * page + 7, 2 ** 21, 2 ** 21 + 5 * page + 3) },
    {
      weight: 2,
      arbitrary: fc
        .tuple(fc.integer({ min: 1, max: 64 }), fc.integer({ min: 0, max: page - 1 }), fc.boolean())
        .map(([pages, extra, exact]) => (exact ? pages * page : (pages - 1) * page + extra + 1)),
    },
  );
}

const totals: Counts = {};

describe('segments behave like plain byte arrays through random operations', () => {
  after(() => {
    // Counted after each operation ran: early returns (nothing to write to,
    // and the like) are not counted.
    assert.ok((totals.operations ?? 0) >= MIN_OPERATIONS * scale, `only ${totals.operations} operations ran`);
    assert.ok(
      (totals['restore to an older segment'] ?? 0) >= MIN_OLDER_RESTORES * scale,
      `only ${totals['restore to an older segment']} restores to an older segment`,
    );
    assert.ok((totals.clone ?? 0) >= MIN_CLONES * scale, `only ${totals.clone} clones ran`);
  });

  for (const b of cases) {
    it(`on the ${b.name} backend`, (t) => {
      const backend = useBackend(b);
      const base = fixedSeed !== undefined ? Number(fixedSeed) : (Date.now() ^ (Math.random() * 0x7fffffff)) | 0;
      t.diagnostic(`seed ${base} (replay with MEMFORK_MODEL_SEED=${base})`);
      const counts: Counts = {};
      // Sequences are random in length and mix: more rounds of RUNS
      // sequences (seed + 1, + 2, ...) run until this backend's share of
      // every minimum below is met, so the totals never depend on luck.
      const share = (total: number): number => (total * scale) / cases.length;
      const short = (): boolean =>
        (counts.operations ?? 0) < share(MIN_OPERATIONS) ||
        (counts['restore to an older segment'] ?? 0) < share(MIN_OLDER_RESTORES) ||
        (counts.clone ?? 0) < share(MIN_CLONES);
      for (let round = 0; round === 0 || (short() && round < MAX_ROUNDS); round++) {
        const seed = base + round;
        try {
          fc.assert(
            fc.property(
              fc.array(opArb((b.sizes ?? sizeArb)(backend.pageSize)), { minLength: 10, maxLength: 120, size: 'max' }),
              (ops) => runSequence(ops, { backend, maxLive: MAX_LIVE, fullCheckEvery: 8, allowBudgetRefusal: b.tight, counts }),
            ),
            { seed, numRuns: RUNS },
          );
        } catch (err) {
          // fast-check's message names the seed and the shrunk sequence too.
          // The shrunk sequence's own failure, with the steps that ran, is the cause.
          const cause = (err as Error).cause;
          (err as Error).message =
            `model test failed on ${b.name} with seed ${seed} (round ${round} of base seed ${base}):\n${(err as Error).message}` +
            (cause instanceof Error ? `\n${cause.message}` : '');
          throw err;
        }
      }
      for (const [k, v] of Object.entries(counts)) totals[k] = (totals[k] ?? 0) + v;
      t.diagnostic(
        Object.entries(counts)
          .sort()
          .map(([k, v]) => `${k}: ${v}`)
          .join(', '),
      );
    });
  }
});

/**
 * The second tier runs on one runtime: it exercises the engine at sizes
 * users have, not the runtime, and costs most of a minute; Node.js 20 is the
 * one `npm test` runs first. MEMFORK_MODEL_LARGE=1 runs it on any runtime.
 */
const largeSkip =
  linuxBackends.length === 0
    ? 'Linux only: the tier checks the Linux engine at real sizes'
    : !mainRuntime
      ? 'the large tier runs once per CI run, on Node.js 20 (MEMFORK_MODEL_LARGE=1 runs it here)'
      : false;

// The skip is the test's, not the suite's: Bun drops a skipped describe()
// without counting or naming it.
describe('segments of hundreds of MiB behave like plain byte arrays through random operations', () => {
  it('in a child process, a few sequences per run (more with MEMFORK_MODEL_RUNS)', { skip: largeSkip }, (t) => {
    const seed = fixedSeed !== undefined ? Number(fixedSeed) : (Date.now() ^ (Math.random() * 0x7fffffff)) | 0;
    t.diagnostic(`seed ${seed} (replay with MEMFORK_MODEL_SEED=${seed})`);
    const { command, args } = tsCommand(join(projectRoot, 'test', 'fixtures', 'model-large.ts'), [String(2 * multiplier), String(seed)]);
    const child = spawnSync(command, args, { cwd: projectRoot, encoding: 'utf8', maxBuffer: 1 << 24 });
    assert.equal(child.signal, null, `the child was killed by ${child.signal}: ${child.stderr}`);
    assert.equal(child.status, 0, `seed ${seed}:\n${child.stderr}${child.stdout}`);
    const line = /^model-large (.*)$/m.exec(child.stdout)?.[1];
    assert.ok(line !== undefined, `no summary from the child: ${child.stdout}`);
    const { counts } = JSON.parse(line) as { counts: Counts };
    t.diagnostic(
      Object.entries(counts)
        .sort()
        .map(([k, v]) => `${k}: ${v}`)
        .join(', '),
    );
    assert.ok((counts.operations ?? 0) >= 10 * multiplier, `only ${counts.operations} operations ran`);
    assert.ok((counts.clone ?? 0) + (counts['budget refusals (ENOMEM)'] ?? 0) >= 1, 'no clone was tried');
  });
});
