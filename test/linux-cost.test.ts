// The Linux backend's cost model (platform/linux/cost.ts), checked against
// naive models: one count per page of how many run lists use it.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { RangeList, RefCounts, RunList, SpanList, type Range, type Run } from '../src/runs.ts';
import { merge } from './helpers/runs-model.ts';
import {
  CheaperWay,
  chargeMapping,
  COMPACT_WINDOWS,
  COPIES_PER_MAPPING,
  compactionFor,
  COPY_COST,
  defersFreeze,
  duplicateLimit,
  FLATTEN_EARLY,
  fitToBudget,
  flattenPoint,
  joinToFit,
  largestLayer,
  MAP_COST,
  plan,
  privatizeWorth,
  rebasePays,
  restoreRunsTooMany,
  restoreCopyPays,
  RESTORE_COPY_SHARE,
  RETRY_EVERY,
  RETRY_RATIO,
  sharedPages,
  SHARE_BUDGET_PART,
  SHARE_MIN_SHOWN,
  shareRoom,
  shareWorth,
  TIMED_MIN_PAGES,
  TRIAL_PAGES,
  type Counted,
} from '../platform/linux/cost.ts';

/** A layer as the cost model sees it: reference counts, and a name for messages. */
interface FakeLayer extends Counted {
  readonly name: string;
}

const PAGES = 96;
const names = ['a', 'b', 'c', 'd'];

/** A run list covering [0, pages): touching runs on one layer merged, as a segment's always are. */
function runListArb(pages: number): fc.Arbitrary<{ cut: number; layer: number }[]> {
  return fc.array(fc.record({ cut: fc.integer({ min: 1, max: pages - 1 }), layer: fc.integer({ min: -1, max: names.length - 1 }) }), {
    minLength: 0,
    maxLength: 30,
  });
}

/** Builds run lists over fresh layers (index -1: anonymous) and counts every list's references, as live segments do. */
function build(lists: { cut: number; layer: number }[][], pages: number, first: number) {
  const layers: FakeLayer[] = names.map((name) => ({ name, refs: new RefCounts() }));
  const runLists = lists.map((parts) => {
    const cuts = [...new Set(parts.map((p) => p.cut))].sort((x, y) => x - y);
    const bounds = [0, ...cuts, pages];
    const runs: Run<FakeLayer | null>[] = [];
    for (let i = 0; i + 1 < bounds.length; i++) {
      const l = i === 0 ? first : (parts[i - 1]?.layer ?? first);
      runs.push({ start: bounds[i]!, end: bounds[i + 1]!, layer: l < 0 ? null : layers[l]! });
    }
    return merge(runs);
  });
  for (const runs of runLists) {
    for (const layer of layers) {
      const mine = runs.filter((r) => r.layer === layer);
      if (mine.length > 0) layer.refs.addAll(mine, 1);
    }
  }
  return { layers, runLists };
}

/** Per page of `runs`, how many run lists in `all` put the same layer there. */
function users(all: Run<FakeLayer | null>[][], runs: Run<FakeLayer | null>[], page: number): number {
  const layer = runs.find((r) => r.start <= page && page < r.end)!.layer;
  return all.filter((other) => other.some((r) => r.layer === layer && r.start <= page && page < r.end)).length;
}

const segmentsArb = fc.record({
  lists: fc.array(runListArb(PAGES), { minLength: 1, maxLength: 4 }),
  first: fc.integer({ min: -1, max: 0 }),
});

describe('sharedPages()', () => {
  it('counts, per run, the pages another run list also uses, and every anonymous page', () => {
    fc.assert(
      fc.property(segmentsArb, ({ lists, first }) => {
        const { runLists } = build(lists, PAGES, first);
        const runs = runLists[0]!;
        const got = sharedPages(RunList.from(runs));
        runs.forEach((r, i) => {
          let want = 0;
          for (let p = r.start; p < r.end; p++) if (r.layer === null || users(runLists, runs, p) > 1) want++;
          assert.equal(got[i], want, `run ${i} [${r.start}, ${r.end}) on ${r.layer?.name ?? 'anonymous'}`);
        });
      }),
    );
  });
});

describe('largestLayer()', () => {
  it('is a layer holding at least as many pages as any other', () => {
    fc.assert(
      fc.property(segmentsArb, ({ lists, first }) => {
        const runs = build(lists, PAGES, first).runLists[0]!;
        const total = new Map<FakeLayer | null, number>();
        for (const r of runs) total.set(r.layer, (total.get(r.layer) ?? 0) + r.end - r.start);
        const best = largestLayer(RunList.from(runs));
        for (const n of total.values()) assert.ok(total.get(best)! >= n);
      }),
    );
  });

  it('is null for no runs', () => {
    assert.equal(largestLayer(new RunList<FakeLayer | null>(0)), null);
  });
});

describe('plan()', () => {
  it('flattening (0 windows) is the whole segment, within the limit, when there is more than one run', () => {
    fc.assert(
      fc.property(segmentsArb, fc.nat(2 * PAGES), ({ lists, first }, limit) => {
        const runs = build(lists, PAGES, first).runLists[0]!;
        const dup = sharedPages(RunList.from(runs)).reduce((a, b) => a + b, 0);
        const p = plan(RunList.from(runs), PAGES, 0, limit);
        if (runs.length > 1 && dup <= limit) assert.deepEqual(p, { windows: [{ start: 0, end: PAGES }], duplicated: dup });
        else assert.equal(p, undefined);
      }),
    );
  });

  it('covers every page off the main layer with few windows, duplicating what it says and no more than the limit', () => {
    fc.assert(
      fc.property(segmentsArb, fc.integer({ min: 1, max: 6 }), fc.nat(2 * PAGES), ({ lists, first }, windows, limit) => {
        const runs = build(lists, PAGES, first).runLists[0]!;
        const p = plan(RunList.from(runs), PAGES, windows, limit);
        if (p === undefined) return;
        const base = largestLayer(RunList.from(runs));
        const shared = sharedPages(RunList.from(runs));
        // Windows are sorted, disjoint, inside the segment, and on run boundaries.
        const bounds = new Set(runs.flatMap((r) => [r.start, r.end]));
        let last = -1;
        for (const w of p.windows) {
          assert.ok(w.start > last && w.start < w.end && w.end <= PAGES);
          assert.ok(bounds.has(w.start) && bounds.has(w.end));
          last = w.end;
        }
        const inWindow = (r: Range) => p.windows.some((w) => w.start <= r.start && r.end <= w.end);
        let dup = 0;
        runs.forEach((r, i) => {
          if (r.layer !== base) assert.ok(inWindow(r), `off-main run [${r.start}, ${r.end}) outside every window`);
          if (inWindow(r)) dup += shared[i]!;
        });
        assert.equal(p.duplicated, dup);
        assert.ok(p.duplicated <= limit);
        // It pays: fewer runs after the rewrite than before.
        assert.ok(2 * p.windows.length + 1 < runs.length);
      }),
    );
  });

  it('stops joining windows only at the number asked for or at the limit', () => {
    fc.assert(
      fc.property(segmentsArb, fc.integer({ min: 1, max: 6 }), fc.nat(2 * PAGES), ({ lists, first }, windows, limit) => {
        const runs = build(lists, PAGES, first).runLists[0]!;
        const p = plan(RunList.from(runs), PAGES, windows, limit);
        if (p === undefined || p.windows.length <= windows) return;
        // Each main-layer gap left between two windows would pass the limit.
        const shared = sharedPages(RunList.from(runs));
        for (let k = 0; k + 1 < p.windows.length; k++) {
          const gap = runs.findIndex((r) => r.start === p.windows[k]!.end);
          assert.ok(p.duplicated + shared[gap]! > limit);
        }
      }),
    );
  });
});

describe('compactionFor()', () => {
  it('compacts past maxRuns whatever the cost, and never a run list of a few windows', () => {
    fc.assert(
      fc.property(segmentsArb, fc.integer({ min: 8, max: 40 }), ({ lists, first }, maxRuns) => {
        const runs = build(lists, PAGES, first).runLists[0]!;
        const c = compactionFor(RunList.from(runs), PAGES, 0, maxRuns, () => ({ used: 0, limit: 1000 }));
        if (runs.length > maxRuns) assert.deepEqual(c, { windows: maxRuns >> 2, limit: Infinity });
        else assert.equal(c, undefined, 'no debt, no compaction');
        if (runs.length <= 2 * COMPACT_WINDOWS + 1) {
          assert.equal(compactionFor(RunList.from(runs), PAGES, Infinity, Math.max(runs.length, 8), () => ({ used: 0, limit: 1000 })), undefined);
        }
      }),
    );
  });

  it('once a compaction pays at some debt, it pays at every higher debt', () => {
    fc.assert(
      fc.property(segmentsArb, fc.nat(2000), fc.nat(2000), fc.nat(999), ({ lists, first }, d1, extra, used) => {
        const runs = build(lists, PAGES, first).runLists[0]!;
        const at = compactionFor(RunList.from(runs), PAGES, d1, 1000, () => ({ used, limit: 1000 }));
        if (at !== undefined) assert.deepEqual(compactionFor(RunList.from(runs), PAGES, d1 + extra, 1000, () => ({ used, limit: 1000 })), at);
      }),
    );
  });

  it('rewrites into windows only what the debt already paid for', () => {
    fc.assert(
      fc.property(segmentsArb, fc.nat(2000), ({ lists, first }, debt) => {
        const runs = build(lists, PAGES, first).runLists[0]!;
        const c = compactionFor(RunList.from(runs), PAGES, debt, 1000, () => ({ used: 0, limit: 1000 }));
        if (c === undefined || c.windows === 0) return;
        const p = plan(RunList.from(runs), PAGES, c.windows, c.limit)!;
        const copied = p.windows.reduce((n, w) => n + w.end - w.start, 0);
        assert.ok(debt >= COPY_COST * copied);
      }),
    );
  });
});

describe('flattenPoint()', () => {
  it('is a fraction of a whole copy, falling as the budget fills, never below a twentieth of that fraction', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 1 << 20 }), fc.nat(1000), fc.nat(1000), (pages, u1, u2) => {
        const budget = 1000;
        const full = (COPY_COST * pages) / FLATTEN_EARLY;
        const [lo, hi] = u1 <= u2 ? [u1, u2] : [u2, u1];
        assert.ok(flattenPoint(pages, lo, budget) >= flattenPoint(pages, hi, budget));
        assert.equal(flattenPoint(pages, 0, budget), full);
        assert.ok(flattenPoint(pages, hi, budget) >= full * 0.05 - 1e-9);
      }),
    );
  });
});

describe('chargeMapping()', () => {
  it('adds the mapping cost of the runs beyond a compacted run list, and returns the new debt', () => {
    fc.assert(
      fc.property(fc.nat(100), fc.nat(1000), (runs, debt) => {
        const source = { debt, runs: Array.from({ length: runs }, (_, i) => ({ start: i, end: i + 1 })) };
        const got = chargeMapping(source);
        assert.equal(got, source.debt);
        assert.equal(got - debt, runs <= 2 * COMPACT_WINDOWS + 1 ? 0 : MAP_COST * (runs - 2 * COMPACT_WINDOWS - 1));
      }),
    );
  });
});

describe('duplicateLimit()', () => {
  it('is at least 256 pages and 1/64 of the segment, and grows with it', () => {
    fc.assert(
      fc.property(fc.nat(1 << 30), fc.nat(1 << 20), (pages, more) => {
        const d = duplicateLimit(pages);
        assert.ok(d >= 256 && d >= Math.floor(pages / 64));
        assert.ok(duplicateLimit(pages + more) >= d);
      }),
    );
  });
});

describe('restoreCopyPays()', () => {
  it('copies always where the runs would not fit, else while few pages differ, fewer the more', () => {
    fc.assert(
      fc.property(fc.boolean(), fc.nat(1 << 20), fc.nat(1 << 20), fc.integer({ min: 1, max: 1 << 20 }), (fits, d1, d2, pages) => {
        if (!fits) assert.equal(restoreCopyPays(fits, d1, pages), true);
        const [lo, hi] = d1 <= d2 ? [d1, d2] : [d2, d1];
        if (restoreCopyPays(fits, hi, pages)) assert.ok(restoreCopyPays(fits, lo, pages));
        assert.equal(restoreCopyPays(true, Math.floor(pages / RESTORE_COPY_SHARE), pages), true);
        assert.equal(restoreCopyPays(true, pages, pages), pages <= pages / RESTORE_COPY_SHARE);
      }),
    );
  });
});

describe('restoreRunsTooMany()', () => {
  it('never for a run list a compaction into windows leaves; for more, once they pass a share of the free budget, and at more runs or less room', () => {
    fc.assert(
      fc.property(fc.nat(1000), fc.nat(1000), fc.nat(100), fc.nat(100), (runs, free, moreRuns, lessFree) => {
        if (runs <= 2 * COMPACT_WINDOWS + 1) assert.equal(restoreRunsTooMany(runs, free), false);
        if (runs > 2 * COMPACT_WINDOWS + 1 && runs > free) assert.equal(restoreRunsTooMany(runs, free), true, 'runs that do not fit');
        if (restoreRunsTooMany(runs, free)) assert.ok(restoreRunsTooMany(runs + moreRuns, Math.max(0, free - lessFree)));
        assert.equal(restoreRunsTooMany(runs, free * RESTORE_COPY_SHARE), runs > Math.max(2 * COMPACT_WINDOWS + 1, free));
      }),
    );
  });
});

/** Sorted, disjoint page ranges with gaps between them. */
const rangesArb = fc
  .array(fc.record({ gap: fc.integer({ min: 1, max: 20 }), len: fc.integer({ min: 1, max: 5 }) }), { maxLength: 60 })
  .map((parts) => {
    let at = 0;
    return parts.map(({ gap, len }) => {
      const r = { start: at + gap, end: at + gap + len };
      at = r.end;
      return r;
    });
  });

/** The pages of `ranges`, one number each. */
const pagesOf = (ranges: readonly Range[]): Set<number> => {
  const out = new Set<number>();
  for (const r of ranges) for (let p = r.start; p < r.end; p++) out.add(p);
  return out;
};

describe('joinToFit()', () => {
  it('keeps at most the runs asked for, covers every input page, and copies only the smallest gaps between them', () => {
    fc.assert(
      fc.property(rangesArb, fc.integer({ min: 0, max: 70 }), (ranges, most) => {
        const out = joinToFit(ranges, most);
        if (ranges.length <= Math.max(1, most)) {
          assert.deepEqual(out, ranges);
          return;
        }
        assert.equal(out.length, Math.max(1, most));
        // Sorted and disjoint; each begins and ends where an input range does.
        const starts = new Set(ranges.map((r) => r.start));
        const ends = new Set(ranges.map((r) => r.end));
        out.forEach((r, i) => {
          assert.ok(starts.has(r.start) && ends.has(r.end), `${r.start}-${r.end} cuts an input range`);
          if (i > 0) assert.ok(out[i - 1]!.end < r.start, 'overlapping or touching output ranges');
        });
        for (const r of ranges) assert.ok(out.some((o) => o.start <= r.start && r.end <= o.end), `${r.start}-${r.end} not covered`);
        // The pages added are the smallest gaps there are to join.
        const added = out.reduce((n, r) => n + r.end - r.start, 0) - ranges.reduce((n, r) => n + r.end - r.start, 0);
        const gaps = ranges.slice(1).map((r, i) => r.start - ranges[i]!.end).sort((a, b) => a - b);
        const least = gaps.slice(0, ranges.length - Math.max(1, most)).reduce((n, g) => n + g, 0);
        assert.equal(added, least);
      }),
    );
  });
});

describe('fitToBudget()', () => {
  const PAGE = 4096;
  it('keeps the written runs where two mappings each take at most half the free budget', () => {
    fc.assert(
      fc.property(rangesArb, fc.integer({ min: 0, max: 400 }), (dirty, free) => {
        let asked = 0;
        const out = fitToBudget(dirty, free, PAGE, () => (asked++, 0));
        if (4 * dirty.length <= free) {
          assert.equal(out, dirty);
          // The machine's free memory is not asked for then (a read of /proc/meminfo).
          assert.equal(asked, 0);
        }
      }),
    );
  });

  it('joins beyond that down to an eighth of the free budget, covering every written page, where the copy takes at most a quarter of the free memory; else keeps them', () => {
    fc.assert(
      fc.property(rangesArb, fc.integer({ min: 0, max: 400 }), fc.integer({ min: 0, max: 4000 }), (dirty, free, availablePages) => {
        const out = fitToBudget(dirty, free, PAGE, () => availablePages * PAGE);
        if (4 * dirty.length <= free) return;
        const joined = joinToFit(dirty, Math.floor(free / 8));
        const extra = pagesOf(joined).size - pagesOf(dirty).size;
        if (4 * extra <= availablePages) {
          assert.deepEqual(out, joined);
          assert.ok(out.length <= Math.max(1, Math.floor(free / 8)));
          for (const p of pagesOf(dirty)) assert.ok(pagesOf(out).has(p), `page ${p} left out`);
        } else {
          assert.equal(out, dirty);
        }
      }),
    );
  });
});

describe('rebasePays()', () => {
  it('moves once the redundant copies made and to be made reach the segment, with memory for it, never for no copies', () => {
    fc.assert(
      fc.property(fc.nat(500), fc.nat(500), fc.integer({ min: 1, max: 500 }), fc.boolean(), (privatized, copies, pages, memory) => {
        let asked = 0;
        const affordable = () => (asked++, memory);
        const pays = copies > 0 && privatized + copies >= pages;
        assert.equal(rebasePays(privatized, copies, pages, affordable), memory && pays);
        // The free memory is read only where the copies would pay for the move.
        assert.equal(asked, pays ? 1 : 0);
        // More copies made or to be made never turn a move into none.
        if (rebasePays(privatized, copies, pages, affordable)) {
          assert.ok(rebasePays(privatized + 1, copies, pages, affordable));
          assert.ok(rebasePays(privatized, copies + 1, pages, affordable));
        }
      }),
    );
  });
});

describe('defersFreeze()', () => {
  it('defers where at least half the pages written were written the round before too, never before a first freeze', () => {
    fc.assert(
      fc.property(rangesArb, rangesArb, fc.boolean(), (now, before, first) => {
        const written = RangeList.from(now);
        const last = first ? null : RangeList.from(before);
        const mine = pagesOf(now);
        const again = [...mine].filter((p) => pagesOf(before).has(p)).length;
        assert.equal(defersFreeze(written, last), !first && 2 * again >= mine.size);
      }),
    );
  });
});

describe('privatizeWorth()', () => {
  /** Sorted, disjoint spans with counts (the writer among them: at least 2 where anyone else shows the page). */
  const spansArb = fc
    .array(fc.record({ gap: fc.nat(3), len: fc.integer({ min: 1, max: 40 }), count: fc.integer({ min: 2, max: 40 }) }), { maxLength: 16 })
    .map((parts) => {
      const out: { start: number; end: number; count: number }[] = [];
      let at = 0;
      for (const p of parts) {
        const start = at + p.gap;
        out.push({ start, end: start + p.len, count: p.count });
        at = start + p.len;
      }
      return out;
    });

  it('takes exactly the pages whose private copies cost no more than the two mappings of a new run, merged', () => {
    fc.assert(
      fc.property(spansArb, (spans) => {
        const out = privatizeWorth(spans);
        const taken = new Set<number>();
        for (const r of out) for (let p = r.start; p < r.end; p++) taken.add(p);
        for (const s of spans) {
          const worth = (s.count - 1) * (s.end - s.start) <= 2 * COPIES_PER_MAPPING;
          for (let p = s.start; p < s.end; p++) assert.equal(taken.has(p), worth, `page ${p} of a span of ${s.end - s.start} shown by ${s.count}`);
        }
        let covered = 0;
        for (const s of spans) covered += s.end - s.start;
        assert.ok(taken.size <= covered);
        for (let i = 1; i < out.length; i++) assert.ok(out[i - 1]!.end < out[i]!.start, 'sorted, disjoint, touching ranges merged');
      }),
    );
  });

  it('privatizes a single page shown by one other segment, and never a long run shown by many', () => {
    assert.deepEqual(privatizeWorth([{ start: 5, end: 6, count: 2 }]), [{ start: 5, end: 6 }]);
    assert.deepEqual(privatizeWorth([{ start: 0, end: 512, count: 3 }]), []);
  });
});

describe('shareWorth() and shareRoom()', () => {
  /** Per page of [0, 48): how many other segments use it, and how many of those map it. */
  const countsArb = fc.array(
    fc.record({ users: fc.nat(5), unmapped: fc.nat(2) }).map(({ users, unmapped }) => ({ users, mapped: Math.max(0, users - unmapped) })),
    { minLength: 48, maxLength: 48 },
  );
  /** Page counts as the spans RefCounts.spansIn gives (above zero, touching equal counts joined). */
  const spansOf = (counts: number[]): SpanList => {
    const spans: { start: number; end: number; count: number }[] = [];
    counts.forEach((c, p) => {
      if (c === 0) return;
      const last = spans[spans.length - 1];
      if (last !== undefined && last.end === p && last.count === c) last.end++;
      else spans.push({ start: p, end: p + 1, count: c });
    });
    return SpanList.from(spans);
  };

  it('takes exactly the pages every other user maps, at least SHARE_MIN_SHOWN of them', () => {
    fc.assert(
      fc.property(countsArb, (pages) => {
        const out = shareWorth(spansOf(pages.map((p) => p.users)), spansOf(pages.map((p) => p.mapped)));
        const taken = new Set<number>();
        for (const r of out.toArray()) for (let p = r.start; p < r.end; p++) taken.add(p);
        pages.forEach((c, p) => {
          assert.equal(taken.has(p), c.users === c.mapped && c.mapped >= SHARE_MIN_SHOWN, `page ${p}: ${c.users} users, ${c.mapped} mapped`);
        });
      }),
    );
  });

  it('leaves room for history sharing up to 1/SHARE_BUDGET_PART of the budget, none past it', () => {
    fc.assert(
      fc.property(fc.integer({ min: 16, max: 1 << 20 }), fc.nat(1 << 20), (limit, used) => {
        const part = Math.floor(limit / SHARE_BUDGET_PART);
        const room = shareRoom(used, limit);
        if (used >= part) assert.equal(room, 0, 'none past the part');
        else assert.equal(used + room, part, 'up to the part');
      }),
    );
  });
});

describe('CheaperWay', () => {
  // Copies of `pages` pages, each way costing its own µs a page (with noise
  // of at most a tenth either side): the ways taken.
  const run = (costs: (copy: number) => [number, number], copies: readonly number[], noise: readonly number[], spent?: number[]) => {
    const ways = new CheaperWay();
    return copies.map((pages, i) => {
      const way = ways.choose(pages);
      const perPage = costs(i)[way] * (1 + (noise[i % noise.length]! - 0.5) / 5);
      ways.record(way, pages, (perPage * pages) / 1000);
      spent?.push((perPage * pages) / 1000);
      return way;
    });
  };
  const timed = fc.array(fc.integer({ min: TIMED_MIN_PAGES, max: 5000 }), { minLength: 2 * RETRY_EVERY, maxLength: 200 });
  const noise = fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { minLength: 1, maxLength: 20 });
  // Costs a page at least twice apart, either way round.
  const apart = fc.tuple(fc.double({ min: 0.1, max: 20, noNaN: true }), fc.double({ min: 2, max: 10, noNaN: true }), fc.boolean());

  it('tries each way once, then takes the cheaper, the other at most once in RETRY_EVERY timed copies, its trials costing about 1/RETRY_RATIO of the time beyond the cheaper', () => {
    fc.assert(
      fc.property(timed, noise, apart, (copies, ns, [low, factor, firstCheaper]) => {
        const costs: [number, number] = firstCheaper ? [low, low * factor] : [low * factor, low];
        const cheaper = firstCheaper ? 0 : 1;
        const ms: number[] = [];
        const ways = run(() => costs, copies, ns, ms);
        assert.deepEqual(ways.slice(0, 2), [0, 1]);
        const rest = ways.slice(2);
        const dearer = rest.filter((w) => w !== cheaper).length;
        assert.ok(dearer <= Math.ceil(rest.length / RETRY_EVERY), `${dearer} dearer of ${rest.length}`);
        // Never two dearer in a row once both are timed.
        for (let i = 1; i < rest.length; i++) assert.ok(rest[i] === cheaper || rest[i - 1] === cheaper);
        // A trial takes at most TRIAL_PAGES (part()): what it costs beyond
        // the cheaper way, against the time the cheaper way took. (Timings
        // a tenth either side of the costs, at least twice apart: the
        // estimated gap is at least 0.7 of the true one.)
        let spent = 0;
        let extra = 0;
        rest.forEach((w, i) => {
          if (w === cheaper) spent += ms[i + 2]!;
          else extra += (Math.min(copies[i + 2]!, TRIAL_PAGES) * (costs[w] - costs[cheaper])) / 1000;
        });
        assert.ok(extra <= (1.5 * spent) / RETRY_RATIO, `trials cost ${extra} ms beyond ${spent} ms`);
      }),
    );
  });

  it('follows the costs where they change places', () => {
    fc.assert(
      fc.property(timed, noise, apart, (copies, ns, [low, factor]) => {
        const half = copies.length >> 1;
        // Way 0 cheaper for the first half, way 1 after.
        const ways = run((i) => (i < half ? [low, low * factor] : [low * factor, low]), copies, ns);
        // Within a few retries of the change (each moves the average 30% of the way), way 1 is taken for good.
        const settle = half + 8 * RETRY_EVERY;
        if (settle + RETRY_EVERY < copies.length) {
          const after = ways.slice(settle);
          assert.ok(after.filter((w) => w === 0).length <= Math.ceil(after.length / RETRY_EVERY), `after the change: ${after.join('')}`);
        }
      }),
    );
  });

  it('copies too small to time take the cheaper way so far and teach nothing', () => {
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 0, max: TIMED_MIN_PAGES - 1 }), { maxLength: 50 }), fc.double({ min: 0, max: 1e3, noNaN: true }), (small, ms) => {
        const ways = new CheaperWay();
        for (const pages of small) {
          assert.equal(ways.choose(pages), 0);
          ways.record(0, pages, ms);
          ways.record(1, pages, ms);
        }
        assert.ok(ways.perPage.every(Number.isNaN));
        // Timed: the pipe (1) once cheaper, small copies take it.
        ways.record(0, TIMED_MIN_PAGES, 1);
        ways.record(1, TIMED_MIN_PAGES, 0.5);
        assert.equal(ways.choose(TIMED_MIN_PAGES - 1), 1);
      }),
    );
  });

  it('part(): a way being tried takes at most TRIAL_PAGES of a copy, the rest goes the way found cheaper, and every page goes some way once', () => {
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 0, max: 20 * TRIAL_PAGES }), { minLength: 1, maxLength: 60 }), noise, apart, (copies, ns, [low, factor, firstCheaper]) => {
        const costs: [number, number] = firstCheaper ? [low, low * factor] : [low * factor, low];
        const ways = new CheaperWay();
        let k = 0;
        for (const pages of copies) {
          let left = pages;
          const parts: { way: 0 | 1; pages: number; tried: boolean }[] = [];
          while (left > 0) {
            const [a, b] = ways.perPage;
            const cheaperKnown = !Number.isNaN(a) && !Number.isNaN(b) ? (b < a ? 1 : 0) : undefined;
            const { way, pages: n } = ways.part(left);
            assert.ok(n >= 1 && n <= left, `${n} of ${left} pages`);
            const tried = left >= TIMED_MIN_PAGES && (Number.isNaN(ways.perPage[way]) || (cheaperKnown !== undefined && way !== cheaperKnown));
            if (tried) assert.ok(n <= TRIAL_PAGES, `a way tried takes ${n} pages`);
            else assert.equal(n, left, 'a way known cheaper (or a copy too small to time) takes the rest');
            parts.push({ way, pages: n, tried });
            ways.record(way, n, (costs[way] * (1 + (ns[k++ % ns.length]! - 0.5) / 5) * n) / 1000);
            left -= n;
          }
          // At most two samples (one a way) before the rest.
          assert.ok(parts.length <= 3, `${parts.length} parts`);
        }
        // Both timed once any copy had room for two samples.
        if (copies.some((c) => c >= 2 * TRIAL_PAGES + TIMED_MIN_PAGES)) assert.ok(ways.perPage.every((x) => !Number.isNaN(x)));
      }),
    );
  });

  it('ignores timings that are not a duration', () => {
    const ways = new CheaperWay();
    for (const ms of [Number.NaN, -1, Number.POSITIVE_INFINITY]) ways.record(0, 1000, ms);
    assert.ok(Number.isNaN(ways.perPage[0]));
    assert.equal(ways.choose(1000), 0);
  });
});
