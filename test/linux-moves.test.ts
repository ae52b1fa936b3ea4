// The eviction log (platform/linux/moves.ts), checked against a per-page
// model: each page's layer, each entry applied to the pages it names.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { RangeList, RunList, type Range, type Run } from '../src/runs.ts';
import { merge } from './helpers/runs-model.ts';
import { applyByPage, applyEach, byPageCheaper, Moves, type Move } from '../platform/linux/moves.ts';
import { memoryStats, Segment } from '../src/index.ts';
import { linuxOnly } from './helpers/proc.ts';
import { rng } from './helpers/model.ts';
import { withLinux } from './helpers/linux.ts';
import type { LinuxSegment } from '../platform/linux/engine.ts';
import type { LinuxBackend } from '../platform/linux/index.ts';

interface Layer {
  readonly name: string;
}
type L = Layer | null;

const PAGES = 48;
const named: Layer[] = ['a', 'b', 'c', 'd'].map((name) => ({ name }));
const layers: L[] = [null, ...named];
const opts = { numRuns: 1000 };

/** Runs covering [0, PAGES), merged, as a segment's run list is. */
const runsArb: fc.Arbitrary<RunList<L>> = fc
  .array(fc.tuple(fc.integer({ min: 1, max: 12 }), fc.constantFrom(...layers)), { minLength: 1, maxLength: 16 })
  .map((parts) => {
    const out: Run<L>[] = [];
    let at = 0;
    for (const [len, layer] of parts) {
      if (at >= PAGES) break;
      out.push({ start: at, end: Math.min(PAGES, at + len), layer });
      at += len;
    }
    if (at < PAGES) out.push({ start: at, end: PAGES, layer: parts[0]![1] });
    return RunList.from(merge(out));
  });

/** Sorted, disjoint ranges inside [0, PAGES), not empty. */
const rangesArb: fc.Arbitrary<Range[]> = fc
  .array(fc.tuple(fc.nat(5), fc.integer({ min: 1, max: 6 })), { minLength: 1, maxLength: 10 })
  .map((parts) => {
    const out: Range[] = [];
    let at = 0;
    for (const [gap, len] of parts) {
      const start = at + gap;
      if (start >= PAGES) break;
      out.push({ start, end: Math.min(PAGES, start + len) });
      at = start + len;
    }
    return out.length > 0 ? out : [{ start: 0, end: 1 }];
  });

const moveArb: fc.Arbitrary<Move<L>> = fc
  .tuple(fc.constantFrom(...layers), fc.constantFrom(...named), rangesArb)
  .filter(([from, to]) => from !== to)
  .map(([from, to, ranges]) => ({ from, to, ranges: RangeList.from(ranges), pages: ranges.reduce((n, r) => n + r.end - r.start, 0) }));

function pagesOf(runs: RunList<L>): L[] {
  const out: L[] = [];
  for (const r of runs.toArray()) for (let p = r.start; p < r.end; p++) out[p] = r.layer;
  return out;
}

function modelApply(model: L[], m: Move<L>): void {
  for (const g of m.ranges.toArray()) for (let p = g.start; p < g.end; p++) if (model[p] === m.from) model[p] = m.to;
}

function assertMerged(list: RunList<L>): void {
  const runs = list.toArray();
  for (let i = 1; i < runs.length; i++) {
    assert.equal(runs[i - 1]!.end, runs[i]!.start, 'runs cover the pages without gaps');
    assert.notEqual(runs[i - 1]!.layer, runs[i]!.layer, 'touching runs of one layer are merged');
  }
  assert.equal(list.starts.length, list.length, 'no room kept beyond its runs');
  assert.equal(list.layers.length, list.length);
}

describe('eviction log', () => {
  it('re-pointing page by page gives the same run list as entry by entry, and as the per-page model', () => {
    fc.assert(
      fc.property(runsArb, fc.array(moveArb, { maxLength: 8 }), (runs, moves) => {
        const model = pagesOf(runs);
        for (const m of moves) modelApply(model, m);
        const each = applyEach(runs, moves);
        const byPage = applyByPage(runs, moves, PAGES);
        assert.deepEqual(pagesOf(each), model);
        assert.deepEqual(byPage.toArray(), each.toArray());
        assertMerged(byPage);
      }),
      opts,
    );
  });

  it('chooses one pass over the pages only for many entries over long run lists', () => {
    const one: Move<L>[] = [{ from: null, to: named[0]!, ranges: RangeList.from([{ start: 0, end: 1 }]), pages: 1 }];
    assert.equal(byPageCheaper(100_000, 1 << 20, one), false, 'one entry: select and overlay');
    const many = Array.from({ length: 50 }, () => ({ from: null, to: named[0]!, ranges: RangeList.from([{ start: 0, end: 1000 }]), pages: 1000 }));
    assert.equal(byPageCheaper(60_000, 65_536, many), true, '50 entries over 60,000 runs: by page');
    assert.equal(byPageCheaper(3, 1 << 20, many.slice(0, 2)), false, 'short run lists on large segments: entry by entry');
    // A snapshot never read, one run, behind 14 evictions of 655 scattered
    // pages each: every entry splits the run list further, so entry by
    // entry costs about the square of the entries.
    const scattered = RangeList.from(Array.from({ length: 655 }, (_, i) => ({ start: 100 * i, end: 100 * i + 1 })));
    const evictions = Array.from({ length: 14 }, () => ({ from: null, to: named[0]!, ranges: scattered, pages: 655 }));
    assert.equal(byPageCheaper(1, 65_536, evictions), true, 'a run list split further by each entry: by page');
    assert.equal(byPageCheaper(1, 65_536, evictions.slice(0, 2)), false, 'two such entries: entry by entry');
    // One entry can be enough: every 2nd page of a segment written, and a
    // run list already split at each of them.
    const everyOther = RangeList.from(Array.from({ length: 32_768 }, (_, i) => ({ start: 2 * i, end: 2 * i + 1 })));
    assert.equal(byPageCheaper(65_536, 65_536, [{ from: null, to: named[0]!, ranges: everyOther, pages: 32_768 }]), true, 'one entry of every 2nd page: by page');
    // One entry of a thousand pages over a run list of a run a page: the
    // pass over the pages builds as long a run list as the entry does.
    const thousand = RangeList.from(Array.from({ length: 1000 }, (_, i) => ({ start: 65 * i, end: 65 * i + 1 })));
    assert.equal(byPageCheaper(65_536, 65_536, [{ from: null, to: named[0]!, ranges: thousand, pages: 1000 }]), false, 'one scattered entry over a run a page: entry by entry');
  });

  it('resolves run lists read at any epoch to what they read now', () => {
    // A scenario: run lists taken at various points while entries are
    // logged; each, read later, must read as the model applied since.
    const stepArb = fc.oneof(
      fc.record({ kind: fc.constant('take' as const), runs: runsArb }),
      fc.record({ kind: fc.constant('move' as const), move: moveArb }),
      fc.record({ kind: fc.constant('read' as const), which: fc.nat() }),
    );
    fc.assert(
      fc.property(fc.array(stepArb, { maxLength: 30 }), (steps) => {
        const log = new Moves<L>();
        const pushed: Move<L>[] = [];
        const held: { runs: RunList<L>; epoch: number; model: L[] }[] = [];
        for (const s of steps) {
          if (s.kind === 'take') {
            held.push({ runs: s.runs, epoch: log.epoch, model: pagesOf(s.runs) });
          } else if (s.kind === 'move') {
            log.push(s.move.from, s.move.to, s.move.ranges);
            pushed.push(s.move);
            for (const h of held) modelApply(h.model, s.move);
          } else if (held.length > 0) {
            const h = held[s.which % held.length]!;
            // movedToSince: a layer the run list did not show and shows now
            // was moved to since it was read; a layer no entry since moved
            // to is reported as such.
            for (const layer of named) {
              const since = pushed.slice(h.epoch).some((m) => m.to === layer);
              assert.equal(log.movedToSince(layer, h.epoch), since);
              if (!h.runs.shows(layer) && h.model.includes(layer)) assert.ok(since, 'shown now, so moved to since');
            }
            const now = log.resolve(h.runs, h.epoch, PAGES);
            assert.deepEqual(pagesOf(now), h.model);
            assertMerged(now);
            assert.deepEqual(log.resolve(h.runs, h.epoch, PAGES).toArray(), now.toArray(), 'resolved again: the same run list');
            h.runs = now;
            h.epoch = log.epoch;
          }
        }
        for (const h of held) assert.deepEqual(pagesOf(log.resolve(h.runs, h.epoch, PAGES)), h.model);
        // Entries no run list needs any longer can go; the lists still read right.
        const oldest = held.reduce((m, h) => Math.min(m, h.epoch), log.epoch);
        log.trim(oldest);
        assert.equal(log.length, log.epoch - oldest);
        for (const h of held) assert.deepEqual(pagesOf(log.resolve(h.runs, h.epoch, PAGES)), h.model);
      }),
      opts,
    );
  });

  it('refuses to resolve a run list older than the entries it kept', () => {
    const log = new Moves<L>();
    const runs = RunList.of<L>(0, PAGES, named[0]!);
    log.push(named[0]!, named[1]!, RangeList.from([{ start: 0, end: 4 }]));
    log.trim(1);
    assert.throws(() => log.resolve(runs, 0, PAGES), /older than the eviction log/);
  });
});

/** The backend's handle of every clone `b` makes from now on, in order. */
function cloneHandles(b: LinuxBackend): LinuxSegment[] {
  const handles: LinuxSegment[] = [];
  const clone = b.clone.bind(b);
  b.clone = (source: LinuxSegment) => {
    const h = clone(source);
    handles.push(h);
    return h;
  };
  return handles;
}

describe('kept snapshots re-pointed when read', { skip: linuxOnly }, () => {
  const PAGE = 4096;
  const pages = 256;

  it('stats() and memoryStats() of kept snapshots keep no re-pointed run list, and measure what the re-pointed one says', () => {
    withLinux({}, (b) => {
      // The backend's handle of each clone, to see whether its run list was re-pointed.
      const handles = cloneHandles(b);
      const random = rng(9);
      const seg = Segment.create(pages * PAGE);
      const bytes = new Uint8Array(seg.buffer);
      bytes.fill(1);
      const kept: Segment[] = [];
      try {
        for (let round = 0; round < 12; round++) {
          for (let i = 0; i < pages / 10; i++) bytes[Math.floor(random() * pages) * PAGE] = round + 2;
          kept.push(seg.clone());
        }
        const epochs = handles.map((h) => h.epoch);
        const measured = kept.map((k) => k.stats());
        const total = memoryStats();
        assert.deepEqual(
          handles.map((h) => h.epoch),
          epochs,
          'no run list re-pointed by measuring',
        );
        // Re-pointed now (read): the same figures.
        for (const h of handles) void h.runs;
        assert.ok(
          handles.some((h, i) => h.epoch !== epochs[i]),
          'the older snapshots had evictions to re-point past',
        );
        assert.deepEqual(
          kept.map((k) => k.stats()),
          measured,
        );
        assert.deepEqual(memoryStats(), total);
      } finally {
        for (const k of kept) k.close();
        seg.close();
      }
    });
  });

  it('a clone under read snapshots re-points only those that still show the pages it rewrites', () => {
    withLinux({}, (b) => {
      const handles = cloneHandles(b);
      const seg = Segment.create(pages * PAGE);
      const bytes = new Uint8Array(seg.buffer);
      bytes.fill(1);
      const kept: { snap: Segment; want: Uint8Array }[] = [];
      const round = (r: number) => {
        for (let p = 0; p < pages; p += 2) bytes[p * PAGE] = r + 2;
        const snap = seg.clone();
        // Read: mapped, so the next round's rewrite makes it take copies.
        void new Uint8Array(snap.buffer)[0];
        kept.push({ snap, want: bytes.slice() });
      };
      try {
        for (let r = 0; r < 10; r++) round(r);
        const epochs = handles.map((h) => h.epoch);
        round(10);
        // The newest snapshot took copies of the pages rewritten; the ones
        // before it took theirs rounds ago and were not looked at.
        assert.deepEqual(
          handles.slice(0, 8).map((h) => h.epoch),
          epochs.slice(0, 8),
        );
        for (const [i, k] of kept.entries()) assert.ok(Buffer.from(k.snap.buffer).equals(k.want), `snapshot ${i} reads what it was cloned from`);
      } finally {
        for (const k of kept) k.snap.close();
        seg.close();
      }
    });
  });

  it('run lists kept by segments hold no room beyond their runs', () => {
    withLinux({}, (b) => {
      const handles = cloneHandles(b);
      const random = rng(11);
      const seg = Segment.create(pages * PAGE);
      const bytes = new Uint8Array(seg.buffer);
      bytes.fill(1);
      const kept: Segment[] = [];
      const tight = (what: string) => {
        for (const h of handles) {
          if (h.released) continue;
          for (const list of [h.runs, h.maps]) {
            assert.equal(list.starts.length, list.length, `${what}: starts`);
            assert.equal(list.ends.length, list.length, `${what}: ends`);
            assert.equal(list.layers.length, list.length, `${what}: layers`);
          }
        }
      };
      try {
        for (let round = 0; round < 16; round++) {
          // Strided rounds then scattered ones: run lists of a run a page.
          if (round < 8) for (let p = round % 2; p < pages; p += 2) bytes[p * PAGE] = round + 2;
          else for (let i = 0; i < pages / 10; i++) bytes[Math.floor(random() * pages) * PAGE] = round + 2;
          kept.push(seg.clone());
          if (round % 4 === 3) void new Uint8Array(kept[round - 1]!.buffer)[0];
          if (round === 12) seg.restore(kept[5]!);
          tight(`round ${round}`);
        }
        assert.ok(handles.some((h) => h.runs.length > pages / 4), 'some run list is scattered');
      } finally {
        for (const k of kept) k.close();
        seg.close();
      }
    });
  });

  for (const privatize of [true, false]) {
    it(`read, cloned, restored from, measured or closed after many rounds of random writes, every snapshot reads what it was cloned from${privatize ? '' : ' (no pinned pages)'}`, () => {
      withLinux({ privatize }, (b) => {
        const random = rng(5);
        const seg = Segment.create(pages * PAGE);
        const bytes = new Uint8Array(seg.buffer);
        bytes.fill(1);
        const kept: { snap: Segment; want: Uint8Array }[] = [];
        const check = (k: { snap: Segment; want: Uint8Array }, what: string) =>
          assert.ok(Buffer.from(k.snap.buffer).equals(k.want), `${what}: reads what it was cloned from`);
        try {
          for (let round = 0; round < 40; round++) {
            for (let i = 0; i < pages / 10; i++) bytes[Math.floor(random() * pages) * PAGE + (round % PAGE)] = round + 2;
            kept.push({ snap: seg.clone(), want: bytes.slice() });
            // Now and then: an old snapshot read (mapped from then on), one
            // closed unread, one measured, one cloned, the segment restored
            // from one and written again; each long after it was made.
            const old = kept[Math.floor(random() * kept.length)]!;
            switch (round % 5) {
              case 1:
                check(old, `round ${round}, an old snapshot read`);
                break;
              case 2: {
                const i = kept.indexOf(old);
                if (i !== kept.length - 1) kept.splice(i, 1)[0]!.snap.close();
                break;
              }
              case 3:
                assert.equal(old.snap.stats().byteLength, pages * PAGE);
                break;
              case 4: {
                const copy = old.snap.clone();
                kept.push({ snap: copy, want: old.want });
                seg.restore(old.snap);
                assert.ok(Buffer.from(bytes).equals(old.want), `round ${round}: restored from an old snapshot`);
                break;
              }
            }
          }
          for (const [i, k] of kept.entries()) check(k, `snapshot ${i}`);
        } finally {
          for (const k of kept) k.snap.close();
          seg.close();
        }
        assert.equal(memoryStats().segments, 0);
        assert.equal(b.memory().layers, 0, 'every layer closed with the last segment using it');
      });
    });
  }
});
