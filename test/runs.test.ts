// Run-list math, checked against a naive model: one entry per page saying
// which layer holds it (or `undefined` where nothing covers the page).
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import {
  clipSpans,
  clip,
  coalesce,
  intersect,
  intersectList,
  layerAt,
  nextAbove,
  overlayList,
  pagesOfSpans,
  Packing,
  listsUnder,
  pageCount,
  RangeList,
  RunList,
  selectIn,
  RefCounts,
  sameCounts,
  SpanList,
  subtract,
  subtractList,
  unionList,
  unionPages,
  type Range,
  type Run,
} from '../src/runs.ts';
import { differing, merge, overlay, select } from './helpers/runs-model.ts';
import { listsByLayer, rangesByLayer, type Layer as LinuxLayer } from '../platform/linux/layers.ts';

type Layer = string | null;
type Model = (Layer | undefined)[];

/** Pages [0, SPAN) are enough to reach every case; runs rarely pass it. */
const SPAN = 64;
const layers: Layer[] = [null, 'a', 'b', 'c'];

/** Sorted, disjoint ranges; neighbours may touch. */
const rangesArb: fc.Arbitrary<Range[]> = fc
  .array(fc.record({ gap: fc.nat(4), len: fc.integer({ min: 1, max: 6 }) }), { maxLength: 12 })
  .map((parts) => {
    const out: Range[] = [];
    let at = 0;
    for (const p of parts) {
      const start = at + p.gap;
      out.push({ start, end: start + p.len });
      at = start + p.len;
    }
    return out;
  });

/** Sorted, disjoint runs; touching neighbours may share a layer (not merged). */
const runsArb: fc.Arbitrary<Run<Layer>[]> = fc
  .tuple(rangesArb, fc.array(fc.constantFrom(...layers), { minLength: 12, maxLength: 12 }))
  .map(([ranges, ls]) => ranges.map((r, i) => ({ ...r, layer: ls[i]! })));

/** Runs that cover [0, n) exactly, as a segment's run list does. */
const coveringRunsArb: fc.Arbitrary<Run<Layer>[]> = fc
  .array(fc.record({ len: fc.integer({ min: 1, max: 6 }), layer: fc.constantFrom(...layers) }), { minLength: 1, maxLength: 12 })
  .map((parts) => {
    let at = 0;
    return parts.map((p) => {
      const r = { start: at, end: at + p.len, layer: p.layer };
      at += p.len;
      return r;
    });
  });

const rangeArb: fc.Arbitrary<Range> = fc
  .tuple(fc.nat(SPAN), fc.integer({ min: 1, max: SPAN }))
  .map(([start, len]) => ({ start, end: start + len }));

function modelOf(runs: readonly Run<Layer>[]): Model {
  const m: Model = new Array(2 * SPAN + 16).fill(undefined);
  for (const r of runs) for (let p = r.start; p < r.end; p++) m[p] = r.layer;
  return m;
}

function pagesOf(ranges: readonly Range[]): Set<number> {
  const s = new Set<number>();
  for (const r of ranges) for (let p = r.start; p < r.end; p++) s.add(p);
  return s;
}

function assertSortedDisjoint(ranges: readonly Range[]): void {
  for (let i = 0; i < ranges.length; i++) {
    const r = ranges[i]!;
    assert.ok(r.start < r.end, `empty range ${JSON.stringify(r)}`);
    if (i > 0) assert.ok(ranges[i - 1]!.end <= r.start, `overlap or disorder at ${i}: ${JSON.stringify(ranges)}`);
  }
}

function assertMerged(runs: readonly Run<Layer>[]): void {
  assertSortedDisjoint(runs);
  for (let i = 1; i < runs.length; i++) {
    const a = runs[i - 1]!;
    const b = runs[i]!;
    assert.ok(!(a.end === b.start && a.layer === b.layer), `unmerged neighbours at ${i}: ${JSON.stringify(runs)}`);
  }
}

const opts = { numRuns: 1000 };

describe('merge()', () => {
  it('keeps every page in its layer and joins touching runs of one layer', () => {
    fc.assert(
      fc.property(runsArb, (runs) => {
        const out = merge(runs);
        assert.deepEqual(modelOf(out), modelOf(runs));
        assertMerged(out);
      }),
      opts,
    );
  });
});

describe('overlay()', () => {
  it('puts the top ranges in the new layer and keeps every other page of the base', () => {
    fc.assert(
      fc.property(runsArb, rangesArb, fc.constantFrom(...layers), (base, top, layer) => {
        const out = overlay(base, top, layer);
        const want = modelOf(base);
        for (const p of pagesOf(top)) want[p] = layer;
        assert.deepEqual(modelOf(out), want);
        assertMerged(out);
      }),
      opts,
    );
  });

  it('keeps a covering run list covering, with the same page count', () => {
    fc.assert(
      fc.property(coveringRunsArb, rangesArb, fc.constantFrom(...layers), (base, top, layer) => {
        const n = base[base.length - 1]!.end;
        const inside = top.flatMap((r) => clip([{ ...r, layer: null }], { start: 0, end: n }));
        const out = overlay(base, inside, layer);
        assert.equal(out[0]!.start, 0);
        assert.equal(out[out.length - 1]!.end, n);
        assert.equal(pageCount(out), n);
        assertMerged(out);
      }),
      opts,
    );
  });

  it('returns the base unchanged in content for an empty top', () => {
    fc.assert(
      fc.property(runsArb, (base) => {
        assert.deepEqual(modelOf(overlay(base, [], 'z')), modelOf(base));
      }),
    );
  });
});

describe('overlayList()', () => {
  it('gives what overlay() gives, as a sealed run list', () => {
    fc.assert(
      fc.property(runsArb, rangesArb, fc.constantFrom(...layers), (base, top, layer) => {
        const out = overlayList(RunList.from(base), RangeList.from(coalesce(top)), layer);
        assert.deepEqual(out.toArray(), overlay(base, top, layer));
        assertMerged(out.toArray());
        assert.equal(out.starts.length, out.length);
        assert.equal(out.layers.length, out.length);
      }),
      opts,
    );
  });
});

describe('overlayList() over whole runs', () => {
  it('relabels the runs a top of whole runs names, sharing the bounds, and gives what overlay() gives', () => {
    fc.assert(
      fc.property(runsArb, fc.array(fc.boolean(), { minLength: 12, maxLength: 12 }), fc.constantFrom(...layers), (runs, picked, layer) => {
        const base = RunList.from(runs);
        const before = base.toArray();
        const chosen = before.filter((_, i) => picked[i % picked.length]);
        const top = RangeList.from(coalesce(chosen));
        const out = overlayList(base, top, layer);
        assert.deepEqual(out.toArray(), overlay(before, chosen, layer));
        assertMerged(out.toArray());
        assert.equal(out.layers.length, out.length);
        // The base is left as it was, whichever way it was built.
        assert.deepEqual(base.toArray(), before);
        // Each range a whole run, none next to a run of `layer`: nothing
        // joins, so the bounds are the base's own.
        const next = (i: number, d: number) => before[i + d] !== undefined && (d < 0 ? before[i + d]!.end === before[i]!.start : before[i]!.end === before[i + d]!.start);
        const joins = before.some((r, i) => chosen.includes(r) && [-1, 1].some((d) => next(i, d) && (before[i + d]!.layer === layer || chosen.includes(before[i + d]!))));
        if (!joins) assert.equal(out.starts, base.starts);
        else assert.ok(out.length < base.length);
      }),
      opts,
    );
  });
});

describe('RunList', () => {
  it('holds what merge() gives, run by run', () => {
    fc.assert(
      fc.property(runsArb, (runs) => {
        const list = RunList.from(runs);
        assert.deepEqual(list.toArray(), merge(runs));
        for (let i = 0; i < list.length; i++) assert.deepEqual(list.at(i), merge(runs)[i]);
        for (const layer of layers) assert.equal(list.shows(layer), runs.some((r) => r.layer === layer));
      }),
      opts,
    );
    assert.deepEqual(RunList.of(2, 5, 'a').toArray(), [{ start: 2, end: 5, layer: 'a' }]);
    assert.equal(new RunList<Layer>(0).toArray().length, 0);
  });

  it('selectIn() gives what select() gives', () => {
    fc.assert(
      fc.property(runsArb, rangesArb, (runs, ranges) => {
        const merged = merge(runs);
        assert.deepEqual(selectIn(RunList.from(runs), coalesce(ranges)), select(merged, coalesce(ranges)));
      }),
      opts,
    );
  });
});

describe('clip()', () => {
  it('keeps exactly the pages inside the range, each in its layer', () => {
    fc.assert(
      fc.property(runsArb, rangeArb, (runs, range) => {
        const out = clip(runs, range);
        const want = modelOf(runs).map((l, p) => (p >= range.start && p < range.end ? l : undefined));
        assert.deepEqual(modelOf(out), want);
        assertSortedDisjoint(out);
      }),
      opts,
    );
  });
});

describe('differing() (differingList() as objects)', () => {
  it('gives exactly the pages where two covering run lists name different layers, merged', () => {
    fc.assert(
      fc.property(coveringRunsArb, coveringRunsArb, (a, b) => {
        const n = Math.min(a[a.length - 1]!.end, b[b.length - 1]!.end);
        const clipA = clip(a, { start: 0, end: n });
        const clipB = clip(b, { start: 0, end: n });
        const out = differing(clipA, clipB);
        const ma = modelOf(clipA);
        const mb = modelOf(clipB);
        const want = new Set<number>();
        for (let p = 0; p < n; p++) if (ma[p] !== mb[p]) want.add(p);
        assert.deepEqual(pagesOf(out), want);
        assertSortedDisjoint(out);
        for (let i = 1; i < out.length; i++) assert.ok(out[i - 1]!.end < out[i]!.start, 'touching ranges not merged');
      }),
      opts,
    );
  });
});

describe('select()', () => {
  it('keeps exactly the pages under the ranges, each in its layer', () => {
    fc.assert(
      fc.property(runsArb, rangesArb, (runs, ranges) => {
        const out = select(runs, ranges);
        const under = pagesOf(ranges);
        const want = modelOf(runs).map((l, p) => (under.has(p) ? l : undefined));
        assert.deepEqual(modelOf(out), want);
        assertSortedDisjoint(out);
      }),
      opts,
    );
  });
});

describe('nextAbove()', () => {
  it('is the first index from i on whose value is above x, as a walk finds it', () => {
    fc.assert(
      fc.property(fc.array(fc.integer({ min: -50, max: 50 }), { maxLength: 80 }), fc.nat(90), fc.integer({ min: -60, max: 60 }), (raw, from, x) => {
        const values = Int32Array.from(raw.sort((a, b) => a - b));
        const n = values.length;
        const i = Math.min(from, n);
        let walk = i;
        while (walk < n && values[walk]! <= x) walk++;
        assert.equal(nextAbove(values, i, n, x), walk);
      }),
      opts,
    );
  });
});

describe('RangeList', () => {
  /** A list's ranges as plain objects. */
  const plain = (l: RangeList) => l.toArray().map((r) => ({ start: r.start, end: r.end }));

  it('holds sorted ranges with touching ones joined, as coalesce() gives them, and counts their pages', () => {
    fc.assert(
      fc.property(rangesArb, (ranges) => {
        const list = RangeList.from(ranges);
        assert.deepEqual(plain(list), coalesce(ranges));
        assert.equal(list.pages, pageCount(ranges));
      }),
      opts,
    );
  });

  it('splitAtPages() gives the first n pages and the rest: together the list, the head n pages (or all), every head page before every tail page', () => {
    fc.assert(
      fc.property(rangesArb, fc.nat(64), (ranges, n) => {
        const list = RangeList.from(ranges);
        const [head, tail] = list.splitAtPages(n);
        const pagesOf = (l: RangeList) => l.toArray().flatMap((r) => Array.from({ length: r.end - r.start }, (_, i) => r.start + i));
        assert.equal(head.pages, Math.min(n, list.pages));
        assert.deepEqual([...pagesOf(head), ...pagesOf(tail)], pagesOf(list));
        // Each is a list as from() makes it: sorted, no empty range.
        for (const part of [head, tail]) assert.deepEqual(plain(part), coalesce(part.toArray()));
        for (const part of [head, tail]) assert.ok(part.toArray().every((r) => r.end > r.start));
      }),
      opts,
    );
  });

  it('grows past its capacity without losing a range', () => {
    fc.assert(
      fc.property(fc.array(fc.record({ gap: fc.nat(3), len: fc.integer({ min: 1, max: 4 }) }), { maxLength: 200 }), (parts) => {
        const ranges: Range[] = [];
        let at = 0;
        for (const p of parts) {
          ranges.push({ start: at + p.gap, end: at + p.gap + p.len });
          at += p.gap + p.len;
        }
        const list = new RangeList(0);
        for (const r of ranges) list.push(r.start, r.end);
        assert.deepEqual(plain(list), coalesce(ranges));
      }),
      opts,
    );
  });

  it('append() gives what a push() of each range gives, wherever the list starts (touching, overlapping or past the last range), and slice() copies a stretch', () => {
    fc.assert(
      fc.property(rangesArb, rangesArb, fc.integer({ min: -8, max: 8 }), fc.nat(4), (a, b, shift, capacity) => {
        const head = RangeList.from(a);
        // `b` moved to start at or after the last range's start of `a`: touching, overlapping or apart.
        const lastStart = head.length > 0 ? head.starts[head.length - 1]! : 0;
        const lift = b.length > 0 ? Math.max(0, lastStart + shift - b[0]!.start) : 0;
        const tail = RangeList.from(b.map((r) => ({ start: r.start + lift, end: r.end + lift })));
        const want = new RangeList(capacity);
        const got = new RangeList(capacity);
        for (const l of [head, tail]) for (let i = 0; i < l.length; i++) want.push(l.starts[i]!, l.ends[i]!);
        got.append(head);
        got.append(tail);
        assert.deepEqual(plain(got), plain(want));
        for (let from = 0; from <= want.length; from++) {
          const to = Math.min(want.length, from + 1 + (capacity % 3));
          assert.deepEqual(plain(want.slice(from, to)), plain(want).slice(from, to));
        }
      }),
      opts,
    );
  });

  it('subtractList() gives what subtract() gives', () => {
    fc.assert(
      fc.property(rangesArb, rangesArb, (a, b) => {
        assert.deepEqual(plain(subtractList(RangeList.from(a), RangeList.from(b))), coalesce(subtract(coalesce(a), coalesce(b))));
      }),
      opts,
    );
  });

  it('unionList() gives the pages of both, joined', () => {
    fc.assert(
      fc.property(rangesArb, rangesArb, (a, b) => {
        const out = unionList(RangeList.from(a), RangeList.from(b));
        assert.deepEqual(plain(out), coalesce([...a, ...b].sort((x, y) => x.start - y.start)));
      }),
      opts,
    );
  });

  it('listsUnder() gives the pages under each layer, as select() gives them, and a run list of one run the list itself', () => {
    fc.assert(
      fc.property(coveringRunsArb, rangesArb, (runs, ranges) => {
        const end = runs[runs.length - 1]!.end;
        const inside = ranges.filter((r) => r.end <= end);
        const list = RangeList.from(inside);
        const out = listsUnder(RunList.from(runs), list);
        const want = new Map<Layer, Range[]>();
        for (const r of select(runs, coalesce(inside))) want.set(r.layer, [...(want.get(r.layer) ?? []), { start: r.start, end: r.end }]);
        assert.deepEqual([...out.keys()].sort(), [...want.keys()].sort());
        for (const [layer, l] of out) assert.deepEqual(plain(l), coalesce(want.get(layer)!));
        const one = RunList.of<Layer>(0, end, 'a');
        if (list.length > 0) assert.equal(listsUnder(one, list).get('a'), list);
      }),
      opts,
    );
  });
});

describe('subtract()', () => {
  it('gives the pages of a that are not in b, as sorted disjoint ranges', () => {
    fc.assert(
      fc.property(rangesArb, rangesArb, (a, b) => {
        const out = subtract(a, b);
        const bp = pagesOf(b);
        const want = [...pagesOf(a)].filter((p) => !bp.has(p)).sort((x, y) => x - y);
        assert.deepEqual([...pagesOf(out)].sort((x, y) => x - y), want);
        assertSortedDisjoint(out);
        assert.equal(pageCount(out), want.length);
      }),
      opts,
    );
  });

  it('gives a back for an empty b and nothing for b covering a', () => {
    fc.assert(
      fc.property(rangesArb, (a) => {
        assert.deepEqual(pagesOf(subtract(a, [])), pagesOf(a));
        assert.deepEqual(subtract(a, [{ start: 0, end: 10 * SPAN }]), []);
        assert.deepEqual(subtract(a, a), []);
      }),
    );
  });
});

describe('intersect()', () => {
  it('gives the pages in both a and b, as sorted disjoint ranges', () => {
    fc.assert(
      fc.property(rangesArb, rangesArb, (a, b) => {
        const out = intersect(a, b);
        const bp = pagesOf(b);
        const want = [...pagesOf(a)].filter((p) => bp.has(p)).sort((x, y) => x - y);
        assert.deepEqual([...pagesOf(out)].sort((x, y) => x - y), want);
        assertSortedDisjoint(out);
        assert.equal(pageCount(out), want.length);
      }),
      opts,
    );
  });

  it('as lists (intersectList), gives the same pages, touching ranges joined', () => {
    fc.assert(
      fc.property(rangesArb, rangesArb, (a, b) => {
        const out = intersectList(RangeList.from(coalesce(a)), RangeList.from(coalesce(b)));
        const want = coalesce(intersect(a, b)).map((r) => ({ start: r.start, end: r.end }));
        assert.deepEqual(out.toArray().map((r) => ({ start: r.start, end: r.end })), want);
      }),
      opts,
    );
  });
});

describe('coalesce()', () => {
  /** Sorted by start; may overlap and touch. */
  const sortedRangesArb = fc
    .array(rangeArb, { maxLength: 12 })
    .map((rs) => rs.sort((x, y) => x.start - y.start));

  /** Model: maximal runs of covered pages, then runs closer than `gap` joined. */
  function naive(ranges: readonly Range[], gap: number): Range[] {
    const covered = pagesOf(ranges);
    const runs: Range[] = [];
    for (let p = 0; p < 4 * SPAN; p++) {
      if (!covered.has(p)) continue;
      const last = runs[runs.length - 1];
      if (last !== undefined && last.end === p) runs[runs.length - 1] = { start: last.start, end: p + 1 };
      else runs.push({ start: p, end: p + 1 });
    }
    const out: Range[] = [];
    for (const r of runs) {
      const last = out[out.length - 1];
      if (last !== undefined && r.start - last.end <= gap) out[out.length - 1] = { start: last.start, end: r.end };
      else out.push(r);
    }
    return out;
  }

  it('joins touching and overlapping ranges into maximal ones', () => {
    fc.assert(
      fc.property(sortedRangesArb, (ranges) => {
        assert.deepEqual(coalesce(ranges), naive(ranges, 0));
      }),
      opts,
    );
  });

  it('also joins ranges closer than the gap', () => {
    fc.assert(
      fc.property(sortedRangesArb, fc.nat(6), (ranges, gap) => {
        const out = coalesce(ranges, gap);
        assert.deepEqual(out, naive(ranges, gap));
        for (let i = 1; i < out.length; i++) assert.ok(out[i]!.start - out[i - 1]!.end > gap);
      }),
      opts,
    );
  });
});

describe('pageCount()', () => {
  it('sums the pages of disjoint ranges', () => {
    fc.assert(
      fc.property(rangesArb, (ranges) => {
        assert.equal(pageCount(ranges), pagesOf(ranges).size);
      }),
    );
    assert.equal(pageCount([]), 0);
  });
});

describe('unionPages()', () => {
  it('counts the pages in any of several lists, once each', () => {
    fc.assert(
      fc.property(fc.array(rangesArb, { maxLength: 6 }), (lists) => {
        const all = new Set<number>();
        for (const l of lists) for (const p of pagesOf(l)) all.add(p);
        assert.equal(unionPages(lists), all.size);
      }),
      opts,
    );
    assert.equal(unionPages([]), 0);
    assert.equal(unionPages([[{ start: 0, end: 4 }], [{ start: 4, end: 6 }], [{ start: 2, end: 5 }]]), 6);
  });
});

describe('layerAt()', () => {
  it('finds the layer of every page, and undefined where no run covers it', () => {
    fc.assert(
      fc.property(runsArb, (runs) => {
        const m = modelOf(runs);
        for (let p = 0; p < m.length; p++) assert.equal(layerAt(runs, p), m[p], `page ${p}`);
        assert.equal(layerAt(runs, -1), undefined);
      }),
      opts,
    );
  });
});

describe('Packing', () => {
  it('stores the pages it holds one after another in page order, each once, and refuses the others', () => {
    fc.assert(
      fc.property(rangesArb, (ranges) => {
        const packing = new Packing(RangeList.from(ranges));
        const held = [...pagesOf(ranges)].sort((a, b) => a - b);
        assert.equal(packing.pages, held.length);
        // The k-th page held, in page order, is at file page k: every file page used once, none past the end.
        held.forEach((p, k) => assert.equal(packing.filePage(p), k, `page ${p}`));
        for (let p = -1; p < 2 * SPAN + 16; p++) {
          if (!held.includes(p)) assert.throws(() => packing.filePage(p), /not in this packed layer/, `page ${p} is not held`);
        }
      }),
      opts,
    );
  });

  it('stores them from any file page on', () => {
    fc.assert(
      fc.property(rangesArb, fc.nat(1000), (ranges, at) => {
        const packing = new Packing(RangeList.from(ranges), at);
        [...pagesOf(ranges)].sort((a, b) => a - b).forEach((p, k) => assert.equal(packing.filePage(p), at + k, `page ${p}`));
      }),
      opts,
    );
  });

  it('keeps every run of held pages one contiguous range of the file, however its ranges touch', () => {
    fc.assert(
      fc.property(rangesArb, rangeArb, (ranges, r) => {
        const packing = new Packing(RangeList.from(ranges));
        // A run lies inside what the layer holds: here, any stretch of one coalesced range.
        for (const c of coalesce(ranges)) {
          const start = Math.max(c.start, r.start);
          const end = Math.min(c.end, r.end);
          for (let p = start; p < end; p++) assert.equal(packing.filePage(p), packing.filePage(start) + p - start);
        }
      }),
      opts,
    );
  });
});

describe('SpanList.splice()', () => {
  it('replaces spans in place as an array splice does, and gives back room once a quarter full', () => {
    const spanArb = fc.array(fc.tuple(fc.integer({ min: 1, max: 4 }), fc.integer({ min: 1, max: 3 }), fc.integer({ min: 1, max: 5 })), { maxLength: 400, size: 'max' });
    const toList = (spans: readonly [number, number, number][]) => {
      const out: { start: number; end: number; count: number }[] = [];
      let at = 0;
      for (const [gap, len, count] of spans) {
        out.push({ start: at + gap, end: at + gap + len, count });
        at += gap + len;
      }
      return out;
    };
    fc.assert(
      fc.property(spanArb, fc.nat(), fc.nat(), fc.integer({ min: 0, max: 3 }), (spans, a, b, k) => {
        const model = toList(spans);
        const list = SpanList.from(model);
        const from = model.length === 0 ? 0 : a % (model.length + 1);
        const to = from + (model.length === from ? 0 : b % (model.length - from + 1));
        // Replacements that fit between the spans kept either side.
        const lo = from > 0 ? model[from - 1]!.end : 0;
        const hi = to < model.length ? model[to]!.start : lo + 100;
        const repl: { start: number; end: number; count: number }[] = [];
        for (let i = 0; i < k && lo + 2 * i + 2 <= hi; i++) repl.push({ start: lo + 2 * i + 1, end: lo + 2 * i + 2, count: 7 });
        list.splice(from, to, SpanList.from(repl));
        model.splice(from, to - from, ...repl);
        assert.deepEqual(list.toArray(), model);
        assert.ok(list.starts.length <= 64 || list.starts.length < 4 * list.length, `room ${list.starts.length} for ${list.length}`);
        assert.equal(list.ends.length, list.starts.length);
        assert.equal(list.counts.length, list.starts.length);
      }),
      opts,
    );
  });
});

describe('RefCounts', () => {
  type Op =
    | { kind: 'add'; start: number; end: number; delta: number }
    | { kind: 'release'; pick: number; cut: number }
    | { kind: 'wild'; start: number; end: number; delta: number };

  const opArb: fc.Arbitrary<Op> = fc.oneof(
    { weight: 4, arbitrary: fc.record({ kind: fc.constant('add' as const), start: fc.nat(SPAN), end: fc.nat(SPAN), delta: fc.integer({ min: 1, max: 3 }) }) },
    { weight: 4, arbitrary: fc.record({ kind: fc.constant('release' as const), pick: fc.nat(), cut: fc.nat(8) }) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('wild' as const), start: fc.nat(SPAN), end: fc.nat(SPAN), delta: fc.integer({ min: -3, max: -1 }) }) },
  );

  /** Up to `maxLength` adds ([x, y, delta]: delta over the pages between x and y), for countsOf(). */
  const addsArb = (maxLength: number) => fc.array(fc.tuple(fc.nat(SPAN), fc.nat(SPAN), fc.integer({ min: 1, max: 3 })), { maxLength });

  function spansOf(rc: RefCounts): { start: number; end: number; count: number }[] {
    return rc.all();
  }

  /** Counts made by `adds` ([x, y, delta]: delta over the pages between x and y), and the same per page. */
  function countsOf(adds: readonly [number, number, number][]): { rc: RefCounts; model: number[] } {
    const rc = new RefCounts();
    const model: number[] = new Array(2 * SPAN + 16).fill(0);
    for (const [x, y, delta] of adds) {
      const start = Math.min(x, y);
      const end = Math.max(x, y);
      rc.add(start, end, delta);
      for (let p = start; p < end; p++) model[p]! += delta;
    }
    return { rc, model };
  }

  function zeroRuns(before: number[], after: number[]): Range[] {
    const out: Range[] = [];
    for (let p = 0; p < after.length; p++) {
      if (!(before[p]! > 0 && after[p] === 0)) continue;
      const last = out[out.length - 1];
      if (last !== undefined && last.end === p) out[out.length - 1] = { start: last.start, end: p + 1 };
      else out.push({ start: p, end: p + 1 });
    }
    return out;
  }

  it('spansIn() gives each page of the ranges with a count above zero once, with its count, in order', () => {
    fc.assert(
      fc.property(addsArb(12), rangesArb, (adds, ranges) => {
        const { rc, model } = countsOf(adds);
        const seen: [number, number][] = [];
        let last = -1;
        for (const sp of rc.spansIn(RangeList.from(ranges)).toArray()) {
          assert.ok(sp.start < sp.end && sp.start >= last, 'in order, not empty, not overlapping');
          last = sp.end;
          for (let p = sp.start; p < sp.end; p++) seen.push([p, sp.count]);
        }
        const want: [number, number][] = [];
        for (const p of [...pagesOf(ranges)].sort((x, y) => x - y)) if (model[p]! > 0) want.push([p, model[p]!]);
        assert.deepEqual(seen, want);
      }),
      opts,
    );
  });

  it('listWithCount() gives exactly the pages of the list with that count, joined, and the list itself where all of it has it', () => {
    fc.assert(
      fc.property(
        addsArb(8),
        rangesArb,
        fc.integer({ min: 1, max: 4 }),
        (adds, ranges, count) => {
          const { rc, model } = countsOf(adds);
          const list = RangeList.from(ranges);
          const out = rc.listWithCount(list, count);
          const under = pagesOf(ranges);
          const want = model.flatMap((c, p) => (c === count && under.has(p) ? [p] : []));
          const got = out.toArray();
          assert.deepEqual([...pagesOf(got)].sort((a, b) => a - b), want);
          assertSortedDisjoint(got);
          for (let i = 1; i < got.length; i++) assert.ok(got[i]!.start > got[i - 1]!.end, 'touching ranges not joined');
          assert.equal(out === list, want.length === list.pages, 'the list itself exactly when all of it has the count');
        },
      ),
      opts,
    );
  });

  it('unusedIn() gives exactly the pages of the list no range counts, joined', () => {
    fc.assert(
      fc.property(addsArb(8), rangesArb, (adds, ranges) => {
        const { rc, model } = countsOf(adds);
        const under = pagesOf(ranges);
        const got = rc.unusedIn(RangeList.from(ranges)).toArray();
        const want = [...under].filter((p) => !((model[p] ?? 0) > 0)).sort((a, b) => a - b);
        assert.deepEqual([...pagesOf(got)].sort((a, b) => a - b), want);
        assertSortedDisjoint(got);
        for (let i = 1; i < got.length; i++) assert.ok(got[i]!.start > got[i - 1]!.end, 'touching ranges not joined');
      }),
      opts,
    );
  });

  it('spansIn(ranges, less) gives the pages counted above `less`, each with its count less `less`', () => {
    fc.assert(
      fc.property(
        addsArb(12),
        rangesArb,
        fc.integer({ min: 0, max: 4 }),
        (adds, ranges, less) => {
          const { rc, model } = countsOf(adds);
          const seen: [number, number][] = [];
          for (const sp of rc.spansIn(RangeList.from(ranges), less).toArray()) for (let p = sp.start; p < sp.end; p++) seen.push([p, sp.count]);
          const want: [number, number][] = [];
          for (const p of [...pagesOf(ranges)].sort((x, y) => x - y)) if (model[p]! > less) want.push([p, model[p]! - less]);
          assert.deepEqual(seen, want);
        },
      ),
      opts,
    );
  });

  it('clipSpans() keeps each page of the spans inside the ranges, with its count, in order, and no other', () => {
    fc.assert(
      fc.property(addsArb(12), rangesArb, (adds, ranges) => {
        const { rc, model } = countsOf(adds);
        const spans = rc.all();
        const clipped = clipSpans(SpanList.from(spans), RangeList.from(ranges)).toArray();
        let last = -1;
        const seen: [number, number][] = [];
        for (const sp of clipped) {
          assert.ok(sp.start < sp.end && sp.start >= last, 'in order, not empty, not overlapping');
          last = sp.end;
          for (let p = sp.start; p < sp.end; p++) seen.push([p, sp.count]);
        }
        const inside = pagesOf(ranges);
        const want: [number, number][] = [];
        for (let p = 0; p < model.length; p++) if (model[p]! > 0 && inside.has(p)) want.push([p, model[p]!]);
        assert.deepEqual(seen, want);
      }),
      opts,
    );
  });

  it('sameCounts() gives the pages two count lists agree on (above zero), and pagesOfSpans() every page counted', () => {
    // Counts of 1 and 2 only, so that two lists often agree.
    const lowArb = fc.array(fc.tuple(fc.nat(SPAN), fc.nat(SPAN), fc.integer({ min: 1, max: 2 })), { maxLength: 8 });
    fc.assert(
      fc.property(lowArb, lowArb, (x, y) => {
        const a = countsOf(x);
        const b = countsOf(y);
        const same = sameCounts(SpanList.from(a.rc.all()), SpanList.from(b.rc.all()));
        assert.deepEqual(
          [...pagesOf(same.toArray())].sort((p, q) => p - q),
          a.model.flatMap((c, p) => (c > 0 && c === b.model[p] ? [p] : [])),
        );
        const counted = pagesOfSpans(SpanList.from(a.rc.all()));
        assert.deepEqual(counted.toArray(), coalesce(a.rc.all().map((sp) => ({ start: sp.start, end: sp.end }))));
      }),
      opts,
    );
  });

  it('addEach() moves each part by its own count, as spansIn() gives them, and reports the pages that fall to zero', () => {
    fc.assert(
      fc.property(
        addsArb(12),
        rangesArb,
        fc.integer({ min: 0, max: 3 }),
        fc.boolean(),
        (adds, ranges, keep, up) => {
          const { rc, model } = countsOf(adds);
          // What evict() does: every count under the ranges but `keep` moves
          // away (down), or the same parts arrive elsewhere (up).
          const parts = rc.spansIn(RangeList.from(ranges), keep).toArray();
          const before = [...model];
          for (const sp of parts) for (let p = sp.start; p < sp.end; p++) model[p]! += up ? sp.count : -sp.count;
          const freed = rc.addEach(SpanList.from(parts), up ? 1 : -1);
          const after: number[] = new Array(model.length).fill(0);
          for (const sp of spansOf(rc)) {
            assert.ok(sp.count > 0 && sp.start < sp.end);
            for (let p = sp.start; p < sp.end; p++) after[p] = sp.count;
          }
          assert.deepEqual(after, model);
          assert.deepEqual(freed, zeroRuns(before, model));
          const spans = spansOf(rc);
          for (let k = 1; k < spans.length; k++) {
            const a = spans[k - 1]!;
            const b = spans[k]!;
            assert.ok(a.end <= b.start && !(a.end === b.start && a.count === b.count), 'spans sorted, disjoint and merged');
          }
        },
      ),
      opts,
    );
  });

  it('addAll() adds over many ranges at once (overlapping, in any order) as per-page counts do, splicing only what changes', () => {
    fc.assert(
      fc.property(
        addsArb(30),
        fc.array(fc.tuple(fc.nat(SPAN), fc.nat(SPAN)), { maxLength: 8 }),
        fc.integer({ min: -2, max: 3 }),
        (adds, pairs, delta) => {
          const { rc, model } = countsOf(adds);
          const ranges = pairs.map(([x, y]) => ({ start: Math.min(x, y), end: Math.max(x, y) }));
          const after = model.slice();
          for (const r of ranges) for (let p = r.start; p < r.end; p++) after[p]! += delta;
          if (after.some((c) => c < 0)) {
            const spans = JSON.stringify(rc.all());
            assert.throws(() => rc.addAll(ranges, delta), /below zero/);
            assert.equal(JSON.stringify(rc.all()), spans, 'a refused add leaves the counts as they were');
            return;
          }
          const freed = rc.addAll(ranges, delta);
          assert.deepEqual(freed, zeroRuns(model, after));
          const spans = rc.all();
          for (let i = 0; i < spans.length; i++) {
            const sp = spans[i]!;
            assert.ok(sp.start < sp.end && sp.count > 0);
            if (i > 0) assert.ok(spans[i - 1]!.end < sp.start || spans[i - 1]!.count !== sp.count, 'sorted, apart, touching spans differ');
          }
          const got = new Array(after.length).fill(0);
          for (const sp of spans) for (let p = sp.start; p < sp.end; p++) got[p] = sp.count;
          assert.deepEqual(got, after);
        },
      ),
      opts,
    );
  });

  it('addList() gives what addAll() gives, over spans it matches exactly (counted in place) or not, and over no counts yet', () => {
    fc.assert(
      fc.property(
        addsArb(30),
        fc.array(fc.tuple(fc.nat(SPAN), fc.nat(SPAN)), { maxLength: 8 }),
        fc.boolean(),
        fc.boolean(),
        fc.integer({ min: -2, max: 3 }),
        (adds, pairs, onSpans, empty, delta) => {
          const a = empty ? new RefCounts() : countsOf(adds).rc;
          const b = empty ? new RefCounts() : countsOf(adds).rc;
          // Either some of the spans themselves (apart, as a RangeList keeps them), or any ranges.
          const spans = a.all();
          const picked = onSpans
            ? spans.filter((sp, i) => i % 2 === 0 && (i === 0 || spans[i - 1]!.end < sp.start)).filter((sp, i, all) => i === 0 || all[i - 1]!.end < sp.start)
            : coalesce(pairs.map(([x, y]) => ({ start: Math.min(x, y), end: Math.max(x, y) })).filter((r) => r.start < r.end).sort((x, y) => x.start - y.start));
          const list = RangeList.from(picked.map((r) => ({ start: r.start, end: r.end })));
          let want: unknown;
          try {
            want = b.addAll(list.toArray(), delta);
          } catch (err) {
            assert.throws(() => a.addList(list, delta), (err as Error).constructor as new () => Error);
            return;
          }
          assert.deepEqual(a.addList(list, delta).toArray(), want);
          assert.deepEqual(a.all(), b.all());
        },
      ),
      opts,
    );
  });

  it('addList() taking away every count at once frees what addAll() frees, and leaves no counts', () => {
    fc.assert(
      fc.property(rangesArb, fc.integer({ min: 1, max: 3 }), fc.integer({ min: 0, max: 1 }), (ranges, count, extra) => {
        const list = RangeList.from(coalesce(ranges));
        if (list.length === 0) return;
        const a = new RefCounts();
        const b = new RefCounts();
        a.addList(list, count);
        b.addAll(list.toArray(), count);
        // With `extra`, one more count on the first range: not all fall to zero.
        if (extra) {
          a.add(list.starts[0]!, list.ends[0]!, 1);
          b.add(list.starts[0]!, list.ends[0]!, 1);
        }
        const want = b.addAll(list.toArray(), -count).map((r) => ({ start: r.start, end: r.end }));
        assert.deepEqual(a.addList(list, -count).toArray(), want);
        assert.deepEqual(a.all(), b.all());
        assert.equal(a.empty, extra === 0);
      }),
      opts,
    );
  });

  it('agrees with per-page counts through any sequence of adds and releases', () => {
    fc.assert(
      fc.property(fc.array(opArb, { maxLength: 40 }), fc.array(fc.tuple(fc.nat(SPAN), fc.nat(SPAN), fc.integer({ min: 1, max: 4 })), { minLength: 3, maxLength: 3 }), (ops, probes) => {
        const rc = new RefCounts();
        const model: number[] = new Array(SPAN + 1).fill(0);
        const held: { start: number; end: number; delta: number }[] = [];
        for (const op of ops) {
          let start: number;
          let end: number;
          let delta: number;
          if (op.kind === 'release') {
            if (held.length === 0) continue;
            const h = held.splice(op.pick % held.length, 1)[0]!;
            // Release all of it, or keep a piece of it held.
            const cut = Math.min(op.cut, h.end - h.start);
            start = h.start + (cut > 0 && cut < h.end - h.start ? cut : 0);
            end = h.end;
            if (start > h.start) held.push({ start: h.start, end: start, delta: h.delta });
            delta = -h.delta;
          } else {
            start = Math.min(op.start, op.end);
            end = Math.max(op.start, op.end);
            delta = op.delta;
          }
          const before = model.slice();
          const after = model.slice();
          for (let p = start; p < end; p++) after[p]! += delta;
          const goesNegative = after.some((c) => c < 0);
          if (goesNegative) {
            const spans = JSON.stringify(spansOf(rc));
            assert.throws(() => rc.add(start, end, delta), /below zero/);
            assert.equal(JSON.stringify(spansOf(rc)), spans, 'a refused add leaves the counts as they were');
            continue;
          }
          const freed = rc.add(start, end, delta);
          for (let p = 0; p < model.length; p++) model[p] = after[p]!;
          if (op.kind === 'add' && start < end) held.push({ start, end, delta });
          if (op.kind === 'wild') {
            // A successful wild release takes its pages back from what is held:
            // simplest is to forget the held list and rebuild it from the model.
            held.length = 0;
            for (let p = 0; p < model.length; p++) if (model[p]! > 0) held.push({ start: p, end: p + 1, delta: model[p]! });
          }
          assert.deepEqual(freed, zeroRuns(before, after), `freed by add(${start}, ${end}, ${delta})`);
          // Invariants of the spans.
          const spans = spansOf(rc);
          for (let i = 0; i < spans.length; i++) {
            const s = spans[i]!;
            assert.ok(s.start < s.end && s.count > 0);
            if (i > 0) {
              const prev = spans[i - 1]!;
              assert.ok(prev.end <= s.start);
              assert.ok(prev.end < s.start || prev.count !== s.count, 'touching spans have different counts');
            }
          }
          for (let p = 0; p < model.length; p++) {
            const sp = spans.find((s) => s.start <= p && p < s.end);
            assert.equal(sp?.count ?? 0, model[p], `count of page ${p}`);
          }
          assert.equal(rc.pages, model.filter((c) => c > 0).length);
          assert.equal(rc.empty, model.every((c) => c === 0));
          assert.equal(rc.max, Math.max(0, ...model));
          for (const [a, b, c] of probes) {
            const s = Math.min(a, b);
            const e = Math.max(a, b);
            assert.deepEqual(rc.countEqualEach([{ start: s, end: e }], c), [model.slice(s, e).filter((x) => x === c).length], `countEqualEach(${s}, ${e}, ${c})`);
          }
        }
      }),
      { numRuns: 500 },
    );
  });

  it('frees a range when its last reference goes, and is empty again', () => {
    const rc = new RefCounts();
    assert.equal(rc.empty, true);
    assert.deepEqual(rc.add(0, 10, 1), []);
    assert.deepEqual(rc.add(4, 6, 1), []);
    assert.deepEqual(rc.add(0, 10, -1), [{ start: 0, end: 4 }, { start: 6, end: 10 }]);
    assert.equal(rc.pages, 2);
    assert.deepEqual(rc.add(4, 6, -1), [{ start: 4, end: 6 }]);
    assert.equal(rc.empty, true);
    assert.deepEqual(rc.add(3, 3, 1), []);
    assert.equal(rc.empty, true);
  });

  it('refuses to count below zero', () => {
    const rc = new RefCounts();
    rc.add(2, 4, 1);
    assert.throws(() => rc.add(0, 4, -1), /below zero/);
    assert.throws(() => rc.add(2, 4, -2), /below zero/);
    assert.equal(rc.pages, 2);
  });
});

describe('listsByLayer()', () => {
  it('gives each layer the pages rangesByLayer() gives it, as a list (touching runs joined)', () => {
    const objects = new Map<string, LinuxLayer>();
    const layerOf = (name: Layer): LinuxLayer | null => {
      if (name === null) return null;
      if (!objects.has(name)) objects.set(name, { name } as unknown as LinuxLayer);
      return objects.get(name)!;
    };
    fc.assert(
      fc.property(runsArb, (runs) => {
        const linux = runs.map((r) => ({ start: r.start, end: r.end, layer: layerOf(r.layer) }));
        const want = rangesByLayer(linux);
        const got = listsByLayer(RunList.from(linux));
        assert.deepEqual([...got.keys()], [...want.keys()]);
        for (const [layer, ranges] of want) {
          assert.deepEqual(
            got.get(layer)!.toArray().map((r) => ({ start: r.start, end: r.end })),
            coalesce(ranges).map((r) => ({ start: r.start, end: r.end })),
          );
          // Made at its size: no room beyond its ranges (or the smallest list's).
          const list = got.get(layer)!;
          assert.equal(list.starts.length, Math.max(4, list.length));
        }
      }),
      opts,
    );
  });
});
