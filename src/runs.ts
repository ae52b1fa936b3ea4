// Run lists: which layer holds each page range of a segment. Pure functions
// over sorted arrays, free of system calls, so they can be property-tested.
// All positions are page indices; ranges are half-open [start, end).

/** A half-open page range. Invariant: `start < end`. */
export interface Range {
  readonly start: number;
  readonly end: number;
}

/** A page range and the layer that holds it (`null`: anonymous zero memory). */
export interface Run<L> extends Range {
  readonly layer: L;
}

/** A page range and a count for each of its pages (RefCounts). */
export interface Span extends Range {
  readonly count: number;
}

/**
 * Merges adjacent runs of the same layer. Page i lives at offset i of a
 * layer, or in a packed one at an offset that grows with i page by page
 * over the ranges it holds (Packing): either way, two touching runs of one
 * layer are one contiguous file range.
 */
export function merge<L>(runs: readonly Run<L>[]): Run<L>[] {
  const out: Run<L>[] = [];
  for (const r of runs) {
    const last = out[out.length - 1];
    if (last !== undefined && last.layer === r.layer && last.end === r.start) {
      out[out.length - 1] = { start: last.start, end: r.end, layer: r.layer };
    } else {
      out.push(r);
    }
  }
  return out;
}

/**
 * `base` with every range of `top` (sorted, disjoint) replaced by `layer`.
 * The result covers exactly what `base` covers plus `top`, merged.
 */
export function overlay<L>(base: readonly Run<L>[], top: readonly Range[], layer: L): Run<L>[] {
  const kept = select(base, subtract(coalesce(base), top));
  const added = top.map((r) => ({ start: r.start, end: r.end, layer }));
  return merge([...kept, ...added].sort((a, b) => a.start - b.start));
}

/** The parts of `runs` that fall inside `range`, clipped to it. */
export function clip<L>(runs: readonly Run<L>[], range: Range): Run<L>[] {
  const out: Run<L>[] = [];
  for (const r of runs) {
    if (r.end <= range.start || r.start >= range.end) continue;
    out.push({ start: Math.max(r.start, range.start), end: Math.min(r.end, range.end), layer: r.layer });
  }
  return out;
}

/** The parts of `runs` under the sorted, disjoint `ranges`. */
export function select<L>(runs: readonly Run<L>[], ranges: readonly Range[]): Run<L>[] {
  const out: Run<L>[] = [];
  let i = 0;
  for (const g of ranges) {
    while (i < runs.length && runs[i]!.end <= g.start) i++;
    for (let j = i; j < runs.length && runs[j]!.start < g.end; j++) {
      const r = runs[j]!;
      out.push({ start: Math.max(r.start, g.start), end: Math.min(r.end, g.end), layer: r.layer });
    }
  }
  return out;
}

/**
 * The pages where two run lists covering the same pages name different
 * layers: sorted, disjoint, merged. One sweep over both.
 */
export function differing<L>(a: readonly Run<L>[], b: readonly Run<L>[]): Range[] {
  const out: Range[] = [];
  let i = 0;
  let j = 0;
  while (i < a.length && j < b.length) {
    const x = a[i]!;
    const y = b[j]!;
    const start = Math.max(x.start, y.start);
    const end = Math.min(x.end, y.end);
    if (start < end && x.layer !== y.layer) appendRange(out, start, end);
    if (x.end <= y.end) i++;
    else j++;
  }
  return out;
}

/** The pages both of sorted, disjoint `a` and `b` are in: sorted, disjoint. */
export function intersect(a: readonly Range[], b: readonly Range[]): Range[] {
  if (a.length === 0 || b.length === 0) return [];
  return subtract(a, subtract(a, b));
}

/** Sorted, disjoint `a` minus sorted, disjoint `b`. */
export function subtract(a: readonly Range[], b: readonly Range[]): Range[] {
  const out: Range[] = [];
  let j = 0;
  for (const r of a) {
    let s = r.start;
    while (j < b.length && b[j]!.end <= s) j++;
    let k = j;
    while (s < r.end) {
      const cut = b[k];
      if (cut === undefined || cut.start >= r.end) {
        out.push({ start: s, end: r.end });
        break;
      }
      if (cut.start > s) out.push({ start: s, end: cut.start });
      s = Math.max(s, cut.end);
      k++;
    }
  }
  return out;
}

/**
 * Appends [start, end) to `out`, whose ranges end before `start` does or at it:
 * joined with the last one when they touch or overlap, or lie closer than `gap` pages.
 */
export function appendRange(out: Range[], start: number, end: number, gap = 0): void {
  const last = out[out.length - 1];
  if (last !== undefined && start - last.end <= gap) out[out.length - 1] = { start: last.start, end: Math.max(last.end, end) };
  else out.push({ start, end });
}

/** Sorted ranges with touching or overlapping ones joined, and those closer than `gap` pages too. */
export function coalesce(ranges: readonly Range[], gap = 0): Range[] {
  const out: Range[] = [];
  for (const r of ranges) appendRange(out, r.start, r.end, gap);
  return out;
}

/** Total pages in `ranges`. */
export function pageCount(ranges: readonly Range[]): number {
  let n = 0;
  for (const r of ranges) n += r.end - r.start;
  return n;
}

/**
 * Where a packed layer keeps its pages. A layer file is as long as its
 * segments and holds page i at offset i, except a packed one, which stores
 * only the pages it was given, one after another in page order from a file
 * page on: a batch of history, written in one vectored call (freeze.ts).
 * Pages that touch in page order are neighbours in the file, so a run on a
 * packed layer, all of whose pages it holds, is one contiguous range of its
 * file.
 */
export class Packing {
  readonly #starts: Int32Array;
  readonly #ends: Int32Array;
  /** The file page of each range's first page. */
  readonly #firsts: Int32Array;
  /** Pages held. */
  readonly pages: number;

  /** `ranges` (sorted and disjoint; touching ones are joined) stored from file page `at` on. */
  constructor(ranges: readonly Range[], at = 0) {
    const held = coalesce(ranges);
    this.#starts = new Int32Array(held.length);
    this.#ends = new Int32Array(held.length);
    this.#firsts = new Int32Array(held.length);
    let file = at;
    for (const [i, r] of held.entries()) {
      this.#starts[i] = r.start;
      this.#ends[i] = r.end;
      this.#firsts[i] = file;
      file += r.end - r.start;
    }
    this.pages = file - at;
  }

  /** The file page that holds page `page`; throws where the layer does not hold it (a bookkeeping fault, never a user's). */
  filePage(page: number): number {
    const starts = this.#starts;
    let lo = 0;
    let hi = starts.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (starts[mid]! <= page) lo = mid;
      else hi = mid - 1;
    }
    if (starts.length === 0 || page < starts[lo]! || page >= this.#ends[lo]!) throw new Error(`memfork internal error: page ${page} is not in this packed layer`);
    return this.#firsts[lo]! + page - starts[lo]!;
  }
}

/** Which layer holds page `page` (binary search). */
export function layerAt<L>(runs: readonly Run<L>[], page: number): L | undefined {
  let lo = 0;
  let hi = runs.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    const r = runs[mid]!;
    if (page < r.start) hi = mid - 1;
    else if (page >= r.end) lo = mid + 1;
    else return r.layer;
  }
  return undefined;
}

/** The pages where the sorted, disjoint spans `a` and `b` have the same count (above zero): sorted, disjoint, merged. One sweep. */
export function sameCounts(a: readonly Span[], b: readonly Span[]): Range[] {
  const out: Range[] = [];
  let j = 0;
  for (const x of a) {
    while (j < b.length && b[j]!.end <= x.start) j++;
    for (let k = j; k < b.length && b[k]!.start < x.end; k++) {
      const y = b[k]!;
      if (y.count === x.count) appendRange(out, Math.max(x.start, y.start), Math.min(x.end, y.end));
    }
  }
  return out;
}

/**
 * One step of a sweep over reference counts: [at, to) had `before` and now
 * has `after`. Appends it to the new spans `next` (merging with the last
 * where the count is the same), or to `freed` where it fell to zero.
 */
function sweep(next: { start: number; end: number; count: number }[], freed: Range[], at: number, to: number, before: number, after: number): void {
  if (after > 0) {
    const last = next[next.length - 1];
    if (last !== undefined && last.end === at && last.count === after) last.end = to;
    else next.push({ start: at, end: to, count: after });
  } else if (before > 0) {
    const last = freed[freed.length - 1];
    if (last !== undefined && last.end === at) freed[freed.length - 1] = { start: last.start, end: to };
    else freed.push({ start: at, end: to });
  }
}

/**
 * Reference counts over page ranges: how many runs of live segments use each
 * page of one layer. Invariant: `spans` is sorted, disjoint, every count > 0,
 * and touching spans have different counts.
 */
export class RefCounts {
  private spans: { start: number; end: number; count: number }[] = [];

  /** Pages with a count above zero. */
  get pages(): number {
    let n = 0;
    for (const s of this.spans) n += s.end - s.start;
    return n;
  }

  get empty(): boolean {
    return this.spans.length === 0;
  }

  /** Adds `delta` over [start, end); returns the ranges whose count fell to zero. */
  add(start: number, end: number, delta: number): Range[] {
    return this.addAll([{ start, end }], delta);
  }

  /**
   * Adds `delta` over each of `ranges` (which may overlap and come in any
   * order); returns the ranges whose count fell to zero. One sweep over
   * the old spans and the new ranges together.
   */
  addAll(ranges: readonly Range[], delta: number): Range[] {
    // Four sorted streams of positions, swept together without building
    // events: the spans' starts and ends, and the ranges' starts and ends
    // (each already sorted when the ranges are sorted and disjoint, the
    // usual case; sorted apart otherwise, which overlapping ranges allow).
    let m = 0;
    let sorted = true;
    const starts = new Float64Array(ranges.length);
    const ends = new Float64Array(ranges.length);
    for (const r of ranges) {
      if (r.start >= r.end) continue;
      if (m > 0 && (r.start < starts[m - 1]! || r.end < ends[m - 1]!)) sorted = false;
      starts[m] = r.start;
      ends[m] = r.end;
      m++;
    }
    const rs = sorted ? starts.subarray(0, m) : starts.subarray(0, m).sort();
    const re = sorted ? ends.subarray(0, m) : ends.subarray(0, m).sort();
    const spans = this.spans;
    const next: { start: number; end: number; count: number }[] = [];
    const freed: Range[] = [];
    let si = 0; // next span whose start is to come
    let ei = 0; // next span whose end is to come
    let a = 0;
    let b = 0;
    let oldCount = 0;
    let newCount = 0;
    const nextAt = (): number =>
      Math.min(
        si < spans.length ? spans[si]!.start : Infinity,
        ei < spans.length ? spans[ei]!.end : Infinity,
        a < m ? rs[a]! : Infinity,
        b < m ? re[b]! : Infinity,
      );
    for (let at = nextAt(); at !== Infinity; ) {
      for (; ei < spans.length && spans[ei]!.end === at; ei++) {
        oldCount -= spans[ei]!.count;
        newCount -= spans[ei]!.count;
      }
      for (; si < spans.length && spans[si]!.start === at; si++) {
        oldCount += spans[si]!.count;
        newCount += spans[si]!.count;
      }
      for (; b < m && re[b] === at; b++) newCount -= delta;
      for (; a < m && rs[a] === at; a++) newCount += delta;
      if (newCount < 0) throw new Error('reference count below zero');
      const to = nextAt();
      if (to === Infinity) break;
      sweep(next, freed, at, to, oldCount, newCount);
      at = to;
    }
    this.spans = next;
    return freed;
  }

  /**
   * Adds `sign` times each part's own `count` over it (`parts` sorted and
   * disjoint, as spansIn gives them); returns the ranges whose count fell
   * to zero. One sweep over the old spans and the parts together.
   */
  addEach(parts: readonly Span[], sign: 1 | -1): Range[] {
    const spans = this.spans;
    const next: { start: number; end: number; count: number }[] = [];
    const freed: Range[] = [];
    let i = 0;
    let j = 0;
    let at = Math.min(spans[0]?.start ?? Infinity, parts[0]?.start ?? Infinity);
    while (at !== Infinity) {
      while (i < spans.length && spans[i]!.end <= at) i++;
      while (j < parts.length && parts[j]!.end <= at) j++;
      const s = spans[i];
      const p = parts[j];
      const inSpan = s !== undefined && s.start <= at;
      const inPart = p !== undefined && p.start <= at;
      let to = Infinity;
      if (s !== undefined) to = inSpan ? s.end : s.start;
      if (p !== undefined) to = Math.min(to, inPart ? p.end : p.start);
      const old = inSpan ? s.count : 0;
      const count = old + (inPart ? sign * p.count : 0);
      if (count < 0) throw new Error('reference count below zero');
      sweep(next, freed, at, to, old, count);
      at = to;
    }
    this.spans = next;
    return freed;
  }

  /** Whether any page of the sorted, disjoint `ranges` has a count above zero. */
  overlaps(ranges: readonly Range[]): boolean {
    let i = 0;
    for (const r of ranges) {
      while (i < this.spans.length && this.spans[i]!.end <= r.start) i++;
      if (i < this.spans.length && this.spans[i]!.start < r.end) return true;
    }
    return false;
  }

  /** The counts over sorted, disjoint `ranges`: their parts with a count above zero, clipped to them, in order. One sweep. */
  spansIn(ranges: readonly Range[]): Span[] {
    const out: Span[] = [];
    let i = 0;
    for (const r of ranges) {
      while (i < this.spans.length && this.spans[i]!.end <= r.start) i++;
      for (let j = i; j < this.spans.length && this.spans[j]!.start < r.end; j++) {
        const sp = this.spans[j]!;
        out.push({ start: Math.max(sp.start, r.start), end: Math.min(sp.end, r.end), count: sp.count });
      }
    }
    return out;
  }

  /** For each of the sorted, disjoint `ranges`: its pages whose count is exactly `count`. One sweep. */
  countEqualEach(ranges: readonly Range[], count: number): number[] {
    const out: number[] = [];
    let i = 0;
    for (const r of ranges) {
      while (i < this.spans.length && this.spans[i]!.end <= r.start) i++;
      let n = 0;
      for (let j = i; j < this.spans.length && this.spans[j]!.start < r.end; j++) {
        const sp = this.spans[j]!;
        if (sp.count === count) n += Math.min(sp.end, r.end) - Math.max(sp.start, r.start);
      }
      out.push(n);
    }
    return out;
  }

  /** The parts of the sorted, disjoint `ranges` whose pages have a count of exactly `count` (above zero). One sweep. */
  rangesWithCount(ranges: readonly Range[], count: number): Range[] {
    const out: Range[] = [];
    let i = 0;
    for (const r of ranges) {
      while (i < this.spans.length && this.spans[i]!.end <= r.start) i++;
      for (let j = i; j < this.spans.length && this.spans[j]!.start < r.end; j++) {
        const sp = this.spans[j]!;
        if (sp.count !== count) continue;
        appendRange(out, Math.max(sp.start, r.start), Math.min(sp.end, r.end));
      }
    }
    return out;
  }
}
