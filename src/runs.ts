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
 * `base` with every range of `top` replaced by `layer`: the result covers
 * exactly what `base` covers plus `top`, touching runs of one layer
 * joined. One pass over both, no sorting.
 */
export function overlayList<L>(base: RunList<L>, top: RangeList, layer: L): RunList<L> {
  return relabelled(base, top, layer) ?? overlaid(base, top, layer);
}

/**
 * overlayList() where every range of `top` is a whole run of `base` and
 * none touches a run of `layer` once relabelled (so nothing joins): the
 * same runs, `base`'s bounds shared (a sealed run list is never edited)
 * and its layers copied with those runs on `layer`. A freeze that points
 * the pages it rewrote round after round at the new round's layer is this
 * case: its run list has a run a page at scattered writes, and pushing
 * each afresh cost 0.2 µs a run (1 GiB, every 2nd page: 25 ms a clone).
 * Undefined where it does not apply.
 */
function relabelled<L>(base: RunList<L>, top: RangeList, layer: L): RunList<L> | undefined {
  const { starts, ends } = base;
  const n = base.length;
  if (top.length > n || starts.length !== n) return undefined;
  let layers: L[] | undefined;
  let i = 0;
  for (let g = 0; g < top.length; g++) {
    const start = top.starts[g]!;
    while (i < n && starts[i]! < start) i++;
    if (i === n || starts[i] !== start || ends[i] !== top.ends[g]) return undefined;
    // A neighbour on `layer` (the one before as relabelled already) would join.
    if (i > 0 && ends[i - 1] === start && (layers ?? base.layers)[i - 1] === layer) return undefined;
    if (i + 1 < n && starts[i + 1] === ends[i] && base.layers[i + 1] === layer) return undefined;
    layers ??= base.layers.slice();
    layers[i] = layer;
    i++;
  }
  return RunList.sharing(base, layers ?? base.layers.slice());
}

/** overlayList() by pushing every run afresh. */
function overlaid<L>(base: RunList<L>, top: RangeList, layer: L): RunList<L> {
  const out = new RunList<L>(base.length + 2 * top.length);
  const { starts, ends, layers } = base;
  const n = base.length;
  let i = 0;
  // Pages of `base` before `cut` are covered by a range of `top` already emitted.
  let cut = -1;
  for (let g = 0; g <= top.length; g++) {
    const limit = g < top.length ? top.starts[g]! : Infinity;
    for (; i < n && starts[i]! < limit; i++) {
      const end = Math.min(ends[i]!, limit);
      const from = Math.max(starts[i]!, cut);
      if (from < end) out.push(from, end, layers[i]!);
      if (ends[i]! > limit) break;
    }
    if (g === top.length) break;
    const end = top.ends[g]!;
    out.push(limit, end, layer);
    cut = end;
    while (i < n && ends[i]! <= end) i++;
  }
  return out.seal();
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

/**
 * The pages where two run lists covering the same pages name different
 * layers: sorted, disjoint, joined. One sweep over both.
 */
export function differingList<L>(a: RunList<L>, b: RunList<L>): RangeList {
  const out = new RangeList();
  let i = 0;
  let j = 0;
  while (i < a.length && j < b.length) {
    const xe = a.ends[i]!;
    const ye = b.ends[j]!;
    const start = Math.max(a.starts[i]!, b.starts[j]!);
    const end = Math.min(xe, ye);
    if (start < end && a.layers[i] !== b.layers[j]) out.push(start, end);
    if (xe <= ye) i++;
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
  if (b.length === 0) return a.slice();
  const out: Range[] = [];
  let j = 0;
  for (const r of a) {
    let s = r.start;
    while (j < b.length && b[j]!.end <= s) j++;
    let k = j;
    while (s < r.end) {
      const cut = b[k];
      if (cut === undefined || cut.start >= r.end) {
        out.push(s === r.start ? r : { start: s, end: r.end });
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

/** `a`'s elements in an array twice as long: room for a list to grow (RangeList, RunList, SpanList). */
function doubled(a: Int32Array): Int32Array {
  const b = new Int32Array(2 * a.length);
  b.set(a);
  return b;
}

/** Doubles the room of `list`'s starts and ends until `length` fit (RangeList, RunList). */
function roomFor(list: { starts: Int32Array; ends: Int32Array }, length: number): void {
  while (length > list.starts.length) {
    list.starts = doubled(list.starts);
    list.ends = doubled(list.ends);
  }
}

/**
 * A run list in two Int32Arrays and an array of layers: 16 bytes a run,
 * where a Run object each took 56 (48 the object, 8 its slot), most of
 * them made afresh by every clone of a scattered run list, so the young
 * generation grew to hold them. Built with push(), then sealed, and
 * treated as immutable from then on: replaced, never edited, so that two
 * segments holding the same RunList object hold the same contents.
 */
export class RunList<L> {
  starts: Int32Array;
  ends: Int32Array;
  layers: L[] = [];
  length = 0;

  constructor(capacity = 16) {
    this.starts = new Int32Array(Math.max(1, capacity));
    this.ends = new Int32Array(Math.max(1, capacity));
  }

  /** One run. */
  static of<L>(start: number, end: number, layer: L): RunList<L> {
    const out = new RunList<L>(1);
    out.push(start, end, layer);
    return out;
  }

  /** `runs` (sorted, disjoint) as a list, touching runs of one layer joined. */
  static from<L>(runs: readonly Run<L>[]): RunList<L> {
    const out = new RunList<L>(runs.length);
    for (const r of runs) out.push(r.start, r.end, r.layer);
    return out.seal();
  }

  /**
   * The runs of sealed `bounds` on `layers` (as many, touching ones on one
   * layer never alike): its starts and ends shared, not copied, as neither
   * list is edited once sealed.
   */
  static sharing<L>(bounds: RunList<unknown>, layers: L[]): RunList<L> {
    const out = new RunList<L>(0);
    out.starts = bounds.starts;
    out.ends = bounds.ends;
    out.layers = layers;
    out.length = bounds.length;
    return out;
  }

  /** Appends [start, end) on `layer`, at or after the last run's end: joined with it where they touch on the same layer. */
  push(start: number, end: number, layer: L): void {
    const n = this.length;
    if (n > 0 && this.ends[n - 1] === start && this.layers[n - 1] === layer) {
      this.ends[n - 1] = end;
      return;
    }
    roomFor(this, n + 1);
    this.starts[n] = start;
    this.ends[n] = end;
    this.layers[n] = layer;
    this.length = n + 1;
  }

  /** Gives back the room beyond its length (a list kept takes what it holds: an array grown by push keeps up to half again); returns itself. */
  seal(): this {
    const n = this.length;
    if (this.starts.length !== n) {
      this.starts = this.starts.slice(0, n);
      this.ends = this.ends.slice(0, n);
    }
    this.layers = this.layers.slice(0, n);
    return this;
  }

  /** Run `i` as an object. */
  at(i: number): Run<L> {
    return { start: this.starts[i]!, end: this.ends[i]!, layer: this.layers[i]! };
  }

  /** The runs as objects. */
  toArray(): Run<L>[] {
    const out: Run<L>[] = new Array(this.length);
    for (let i = 0; i < this.length; i++) out[i] = this.at(i);
    return out;
  }

  /** Whether some run is on `layer`. */
  shows(layer: L): boolean {
    return this.layers.includes(layer);
  }
}

/**
 * Sorted, disjoint page ranges in two Int32Arrays, touching ones joined:
 * the form a freeze carries the pages a segment wrote in. A strided write
 * gives a range per page, and an object per range costs more than that
 * page's copy: allocating it, and the garbage collector moving it while
 * the freeze holds it.
 */
export class RangeList {
  starts: Int32Array;
  ends: Int32Array;
  length = 0;

  constructor(capacity = 16) {
    this.starts = new Int32Array(Math.max(4, capacity));
    this.ends = new Int32Array(Math.max(4, capacity));
  }

  /** `ranges` (sorted, disjoint) as a list. */
  static from(ranges: readonly Range[]): RangeList {
    const out = new RangeList(ranges.length);
    for (const r of ranges) out.push(r.start, r.end);
    return out;
  }

  /** Appends [start, end), which starts at or after the last range's start: joined with it where they touch or overlap. */
  push(start: number, end: number): void {
    const n = this.length;
    if (n > 0 && start <= this.ends[n - 1]!) {
      if (end > this.ends[n - 1]!) this.ends[n - 1] = end;
      return;
    }
    roomFor(this, n + 1);
    this.starts[n] = start;
    this.ends[n] = end;
    this.length = n + 1;
  }

  /** Appends every range of `list`, the first at or after this one's last start: what push() of each does, the ranges past the last one's end copied at once. */
  append(list: RangeList): void {
    // Those that touch or overlap the last range join it, one by one.
    let k = 0;
    while (k < list.length && (k === 0 || list.starts[k]! <= this.ends[this.length - 1]!)) {
      this.push(list.starts[k]!, list.ends[k]!);
      k++;
    }
    const n = this.length;
    const more = list.length - k;
    if (more === 0) return;
    roomFor(this, n + more);
    this.starts.set(list.starts.subarray(k, list.length), n);
    this.ends.set(list.ends.subarray(k, list.length), n);
    this.length = n + more;
  }

  /** Ranges `from` to `to` (exclusive) of this list, as a list of their own. */
  slice(from: number, to: number): RangeList {
    const out = new RangeList(to - from);
    out.starts.set(this.starts.subarray(from, to));
    out.ends.set(this.ends.subarray(from, to));
    out.length = to - from;
    return out;
  }

  /**
   * The first `pages` pages of this list and the rest, as two lists of
   * their own (a range split where the count falls inside it).
   */
  splitAtPages(pages: number): [RangeList, RangeList] {
    let left = pages;
    for (let i = 0; i < this.length; i++) {
      const length = this.ends[i]! - this.starts[i]!;
      if (left >= length) {
        left -= length;
        continue;
      }
      const head = this.slice(0, left > 0 ? i + 1 : i);
      const tail = this.slice(i, this.length);
      if (left > 0) {
        head.ends[i] = this.starts[i]! + left;
        tail.starts[0] = this.starts[i]! + left;
      }
      return [head, tail];
    }
    return [this.slice(0, this.length), new RangeList(0)];
  }

  /** Total pages. */
  get pages(): number {
    let n = 0;
    for (let i = 0; i < this.length; i++) n += this.ends[i]! - this.starts[i]!;
    return n;
  }

  /** The ranges as objects. */
  toArray(): Range[] {
    const out: Range[] = new Array(this.length);
    for (let i = 0; i < this.length; i++) out[i] = { start: this.starts[i]!, end: this.ends[i]! };
    return out;
  }
}

/** Pages in both list `a` and list `b`. One sweep. */
export function overlapPages(a: RangeList, b: RangeList): number {
  let n = 0;
  let j = 0;
  for (let i = 0; i < a.length; i++) {
    const s = a.starts[i]!;
    const e = a.ends[i]!;
    while (j < b.length && b.ends[j]! <= s) j++;
    for (let k = j; k < b.length && b.starts[k]! < e; k++) n += Math.min(e, b.ends[k]!) - Math.max(s, b.starts[k]!);
  }
  return n;
}

/** List `a` minus list `b`. One sweep. */
export function subtractList(a: RangeList, b: RangeList): RangeList {
  const out = new RangeList(a.length);
  let j = 0;
  for (let i = 0; i < a.length; i++) {
    let s = a.starts[i]!;
    const end = a.ends[i]!;
    while (j < b.length && b.ends[j]! <= s) j++;
    for (let k = j; s < end; k++) {
      if (k === b.length || b.starts[k]! >= end) {
        out.push(s, end);
        break;
      }
      if (b.starts[k]! > s) out.push(s, b.starts[k]!);
      s = Math.max(s, b.ends[k]!);
    }
  }
  return out;
}

/** The pages both lists `a` and `b` hold. One sweep. */
export function intersectList(a: RangeList, b: RangeList): RangeList {
  const out = new RangeList(Math.min(a.length, b.length));
  let i = 0;
  let j = 0;
  while (i < a.length && j < b.length) {
    const start = Math.max(a.starts[i]!, b.starts[j]!);
    const end = Math.min(a.ends[i]!, b.ends[j]!);
    if (start < end) out.push(start, end);
    if (a.ends[i]! <= b.ends[j]!) i++;
    else j++;
  }
  return out;
}

/**
 * The parts of `list` under each layer of `runs` (sorted, disjoint, covering
 * them), in order, clipped to the runs, grouped by layer. A run list of
 * one run gives `list` itself.
 */
export function listsUnder<L>(runs: RunList<L>, list: RangeList): Map<L, RangeList> {
  const out = new Map<L, RangeList>();
  if (list.length === 0) return out;
  const { starts, ends, layers } = runs;
  const n = runs.length;
  const first = list.starts[0]!;
  const last = list.ends[list.length - 1]!;
  if (n === 1 && starts[0]! <= first && ends[0]! >= last) return out.set(layers[0]!, list);
  let i = 0;
  let lastLayer: L | undefined;
  let to: RangeList | undefined;
  for (let g = 0; g < list.length; g++) {
    const gs = list.starts[g]!;
    const ge = list.ends[g]!;
    while (i < n && ends[i]! <= gs) i++;
    for (let j = i; j < n && starts[j]! < ge; j++) {
      const layer = layers[j]!;
      if (to === undefined || layer !== lastLayer) {
        lastLayer = layer;
        to = out.get(layer);
        if (to === undefined) out.set(layer, (to = new RangeList()));
      }
      to.push(Math.max(starts[j]!, gs), Math.min(ends[j]!, ge));
    }
  }
  return out;
}

/** The parts of `runs` under the sorted, disjoint `ranges`, clipped to them, in order. */
export function selectIn<L>(runs: RunList<L>, ranges: readonly Range[]): Run<L>[] {
  const out: Run<L>[] = [];
  const { starts, ends, layers } = runs;
  let i = 0;
  for (const g of ranges) {
    while (i < runs.length && ends[i]! <= g.start) i++;
    for (let j = i; j < runs.length && starts[j]! < g.end; j++) {
      out.push({ start: Math.max(starts[j]!, g.start), end: Math.min(ends[j]!, g.end), layer: layers[j]! });
    }
  }
  return out;
}

/** Total pages in `ranges`. */
export function pageCount(ranges: readonly Range[]): number {
  let n = 0;
  for (const r of ranges) n += r.end - r.start;
  return n;
}

/**
 * Pages in at least one of `lists` (each of ranges sorted and disjoint;
 * the lists may overlap one another): the starts and the ends sorted apart
 * and swept together, no list built.
 */
export function unionPages(lists: readonly (readonly Range[])[]): number {
  let total = 0;
  for (const l of lists) total += l.length;
  const starts = new Int32Array(total);
  const ends = new Int32Array(total);
  let k = 0;
  for (const l of lists) {
    for (const r of l) {
      starts[k] = r.start;
      ends[k] = r.end;
      k++;
    }
  }
  starts.sort();
  ends.sort();
  // Every start comes before its own end, so `open` never goes below 0.
  let pages = 0;
  let open = 0;
  let from = 0;
  let j = 0;
  for (let i = 0; i < total; i++) {
    const s = starts[i]!;
    for (; j < total && ends[j]! <= s; j++) if (--open === 0) pages += ends[j]! - from;
    if (open++ === 0) from = s;
  }
  for (; j < total; j++) if (--open === 0) pages += ends[j]! - from;
  return pages;
}

/**
 * Where a packed layer keeps its pages. A layer file is as long as its
 * segments and holds page i at offset i, except a packed one, which stores
 * only the pages it was given, one after another in page order from a file
 * page on: a batch of history, written in one vectored call (history.ts).
 * Pages that touch in page order are neighbours in the file, so a run on a
 * packed layer, all of whose pages it holds, is one contiguous range of its
 * file.
 */
export class Packing {
  readonly #starts: Int32Array;
  /**
   * The file page of each range's first page, and one past the last
   * range's last page: range i holds firsts[i + 1] - firsts[i] pages (its
   * end is not kept, a third of the memory).
   */
  readonly #firsts: Int32Array;
  /** Pages held. */
  readonly pages: number;

  /** The pages of `ranges` stored from file page `at` on. */
  constructor(ranges: RangeList, at = 0) {
    const n = ranges.length;
    const firsts = new Int32Array(n + 1);
    let file = at;
    for (let i = 0; i < n; i++) {
      firsts[i] = file;
      file += ranges.ends[i]! - ranges.starts[i]!;
    }
    firsts[n] = file;
    this.#starts = ranges.starts.slice(0, n);
    this.#firsts = firsts;
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
    const offset = page - starts[lo]!;
    if (starts.length === 0 || offset < 0 || offset >= this.#firsts[lo + 1]! - this.#firsts[lo]!) throw new Error(`memfork internal error: page ${page} is not in this packed layer`);
    return this.#firsts[lo]! + offset;
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

/** The pages where spans `a` and `b` have the same count (above zero). One sweep. */
export function sameCounts(a: SpanList, b: SpanList): RangeList {
  const out = new RangeList();
  let j = 0;
  for (let i = 0; i < a.length; i++) {
    const xs = a.starts[i]!;
    const xe = a.ends[i]!;
    while (j < b.length && b.ends[j]! <= xs) j++;
    for (let k = j; k < b.length && b.starts[k]! < xe; k++) {
      if (b.counts[k] === a.counts[i]) out.push(Math.max(xs, b.starts[k]!), Math.min(xe, b.ends[k]!));
    }
  }
  return out;
}

/** The parts of `spans` inside `ranges`, with their counts. One sweep. */
export function clipSpans(spans: SpanList, ranges: RangeList): SpanList {
  const out = new SpanList(spans.length);
  let j = 0;
  for (let i = 0; i < spans.length; i++) {
    const ss = spans.starts[i]!;
    const se = spans.ends[i]!;
    while (j < ranges.length && ranges.ends[j]! <= ss) j++;
    for (let k = j; k < ranges.length && ranges.starts[k]! < se; k++) {
      out.push(Math.max(ss, ranges.starts[k]!), Math.min(se, ranges.ends[k]!), spans.counts[i]!);
    }
  }
  return out;
}

/** The pages of `spans`, whatever their counts: touching spans joined. */
export function pagesOfSpans(spans: SpanList): RangeList {
  const out = new RangeList(spans.length);
  for (let i = 0; i < spans.length; i++) out.push(spans.starts[i]!, spans.ends[i]!);
  return out;
}

/** The pages of lists `a` and `b` together. One sweep. */
export function unionList(a: RangeList, b: RangeList): RangeList {
  if (b.length === 0) return a;
  if (a.length === 0) return b;
  const out = new RangeList(a.length + b.length);
  let i = 0;
  let j = 0;
  while (i < a.length || j < b.length) {
    if (j === b.length || (i < a.length && a.starts[i]! <= b.starts[j]!)) {
      out.push(a.starts[i]!, a.ends[i]!);
      i++;
    } else {
      out.push(b.starts[j]!, b.ends[j]!);
      j++;
    }
  }
  return out;
}

/**
 * Spans: sorted, disjoint, each count > 0, touching spans with different
 * counts. Three typed arrays, not an object per span: a layer under a
 * strided write has a span for every page written, and the counts are
 * rebuilt on every change.
 */
export class SpanList {
  starts: Int32Array;
  ends: Int32Array;
  counts: Int32Array;
  length = 0;

  constructor(capacity: number) {
    const n = Math.max(4, capacity);
    this.starts = new Int32Array(n);
    this.ends = new Int32Array(n);
    this.counts = new Int32Array(n);
  }

  /** Appends [start, end) with `count`, merging with the last span where they touch with the same count. */
  push(start: number, end: number, count: number): void {
    const n = this.length;
    if (n > 0 && this.ends[n - 1] === start && this.counts[n - 1] === count) {
      this.ends[n - 1] = end;
      return;
    }
    if (n === this.starts.length) this.#grow();
    this.starts[n] = start;
    this.ends[n] = end;
    this.counts[n] = count;
    this.length = n + 1;
  }

  /** `spans` (sorted, disjoint, counts above zero) as a list. */
  static from(spans: readonly Span[]): SpanList {
    const out = new SpanList(spans.length);
    for (const sp of spans) out.push(sp.start, sp.end, sp.count);
    return out;
  }

  /** The spans as objects. */
  toArray(): Span[] {
    const out: Span[] = new Array(this.length);
    for (let i = 0; i < this.length; i++) out[i] = { start: this.starts[i]!, end: this.ends[i]!, count: this.counts[i]! };
    return out;
  }

  /**
   * Appends spans `from` to `to` (exclusive) of `list`, which satisfy the
   * invariant among themselves: the first joins the last span here where
   * they touch with the same count (push), the rest are copied at once.
   */
  appendFrom(list: SpanList, from: number, to: number): void {
    if (from >= to) return;
    this.push(list.starts[from]!, list.ends[from]!, list.counts[from]!);
    const n = this.length;
    const more = to - from - 1;
    if (more === 0) return;
    while (n + more > this.starts.length) this.#grow();
    this.starts.set(list.starts.subarray(from + 1, to), n);
    this.ends.set(list.ends.subarray(from + 1, to), n);
    this.counts.set(list.counts.subarray(from + 1, to), n);
    this.length = n + more;
  }

  /** Replaces the spans from index `from` to `to` (exclusive) with those of `list`, in place (grown first where they do not fit). */
  splice(from: number, to: number, list: SpanList): void {
    const n = this.length;
    const length = n - (to - from) + list.length;
    while (length > this.starts.length) this.#grow();
    const { starts, ends, counts } = this;
    const tail = from + list.length;
    if (tail !== to) {
      starts.copyWithin(tail, to, n);
      ends.copyWithin(tail, to, n);
      counts.copyWithin(tail, to, n);
    }
    starts.set(list.starts.subarray(0, list.length), from);
    ends.set(list.ends.subarray(0, list.length), from);
    counts.set(list.counts.subarray(0, list.length), from);
    this.length = length;
    // A quarter full: half the room given back (a layer's counts shrink as
    // its run lists move off it, and keep no room for what they held).
    if (length <= this.starts.length >> 2 && this.starts.length > 64) this.#resize(Math.max(4, 2 * length));
  }

  #grow(): void {
    this.starts = doubled(this.starts);
    this.ends = doubled(this.ends);
    this.counts = doubled(this.counts);
  }

  #resize(capacity: number): void {
    this.starts = this.starts.slice(0, capacity);
    this.ends = this.ends.slice(0, capacity);
    this.counts = this.counts.slice(0, capacity);
  }
}

/**
 * One step of a sweep over reference counts: [at, to) had `before` and now
 * has `after`. Appends it to the new spans `next` (merging with the last
 * where the count is the same), or to `freed` where it fell to zero.
 */
function sweep(next: SpanList, freed: Range[], at: number, to: number, before: number, after: number): void {
  if (after > 0) {
    next.push(at, to, after);
  } else if (before > 0) {
    const last = freed[freed.length - 1];
    if (last !== undefined && last.end === at) freed[freed.length - 1] = { start: last.start, end: to };
    else freed.push({ start: at, end: to });
  }
}

/** Working arrays of RefCounts.addAll and addEach (nothing keeps them past a call). */
const scratch = { rs: new Int32Array(64), re: new Int32Array(64), firsts: new Int32Array(64), lasts: new Int32Array(64), spans: new SpanList(64) };

/** The first index below `n` whose value in sorted `values` is above `x` (`n` if none). */
function firstAbove(values: Int32Array, n: number, x: number): number {
  let lo = 0;
  let hi = n;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (values[mid]! > x) hi = mid;
    else lo = mid + 1;
  }
  return lo;
}

/** The first index below `n` whose value in sorted `values` is at least `x` (`n` if none). */
function firstAtOrAbove(values: Int32Array, n: number, x: number): number {
  return firstAbove(values, n, x - 1);
}

/**
 * The first index from `i` on, below `n`, whose value in sorted `values` is
 * above `x` (`n` if none): `i` itself in one compare where it is, else by
 * steps doubling from `i`, then halving. A sweep of scattered ranges over
 * many spans steps over the spans between them in a few compares, not one
 * each (a layer under scattered writes kept through many rounds has two
 * spans a page ever rewritten, and a clone sweeps its counts several times).
 */
export function nextAbove(values: Int32Array, i: number, n: number, x: number): number {
  if (i >= n || values[i]! > x) return i;
  // values[lo] <= x throughout; the answer is in (lo, hi].
  let lo = i;
  let step = 1;
  let hi = i + 1;
  while (hi < n && values[hi]! <= x) {
    lo = hi;
    step *= 2;
    hi = lo + step;
  }
  if (hi > n) hi = n;
  lo++;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (values[mid]! > x) hi = mid;
    else lo = mid + 1;
  }
  return lo;
}

/** Page positions above this are refused: counts are kept in 32-bit arrays. */
const MAX_PAGE = 2 ** 31 - 1;

/**
 * Reference counts over page ranges: how many runs of live segments use each
 * page of one layer. Invariant: the spans are sorted, disjoint, every count
 * > 0, and touching spans have different counts.
 */
export class RefCounts {
  #spans = new SpanList(0);

  /** Pages with a count above zero. */
  get pages(): number {
    const { starts, ends, length } = this.#spans;
    let n = 0;
    for (let i = 0; i < length; i++) n += ends[i]! - starts[i]!;
    return n;
  }

  get empty(): boolean {
    return this.#spans.length === 0;
  }

  /** The highest count of any page (0 when empty). */
  get max(): number {
    const { counts, length } = this.#spans;
    let m = 0;
    for (let i = 0; i < length; i++) if (counts[i]! > m) m = counts[i]!;
    return m;
  }

  /** Every span, in order. */
  all(): Span[] {
    const { starts, ends, counts, length } = this.#spans;
    const out: Span[] = new Array(length);
    for (let i = 0; i < length; i++) out[i] = { start: starts[i]!, end: ends[i]!, count: counts[i]! };
    return out;
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
    // Scratch shared by every call (nothing keeps it past the call): a
    // clone makes several of these calls, and typed arrays allocated for
    // each one bring on garbage collections where segments' buffers already
    // count as much external memory.
    if (scratch.rs.length < ranges.length) {
      scratch.rs = new Int32Array(Math.max(ranges.length, 2 * scratch.rs.length));
      scratch.re = new Int32Array(scratch.rs.length);
    }
    const { rs, re } = scratch;
    for (const r of ranges) {
      if (r.start >= r.end) continue;
      if (r.start < 0 || r.end > MAX_PAGE) throw new Error(`memfork internal error: page range [${r.start}, ${r.end}) out of reach of the counts`);
      if (m > 0 && (r.start < rs[m - 1]! || r.end < re[m - 1]!)) sorted = false;
      rs[m] = r.start;
      re[m] = r.end;
      m++;
    }
    if (!sorted) {
      rs.subarray(0, m).sort();
      re.subarray(0, m).sort();
    }
    return this.#addSorted(rs, re, m, delta);
  }

  /**
   * addAll() for a list of ranges (sorted and disjoint, as a RangeList is),
   * without a Range object for each; the ranges freed come back as a list
   * too (`list` itself where it frees them all: a deferred freeze takes a
   * run a page off its last packed layer's mapped counts each round).
   */
  addList(list: RangeList, delta: number): RangeList {
    const m = list.length;
    if (m === 0) return new RangeList(0);
    if (list.starts[0]! < 0 || list.ends[m - 1]! > MAX_PAGE) throw new Error('memfork internal error: page range out of reach of the counts');
    const spans = this.#spans;
    if (spans.length === 0 && delta > 0) {
      // Counts of a layer no run list used yet: the ranges themselves (a
      // RangeList's ranges never touch, so no two spans merge).
      if (spans.starts.length < m) this.#spans = new SpanList(m);
      const fresh = this.#spans;
      fresh.starts.set(list.starts.subarray(0, m));
      fresh.ends.set(list.ends.subarray(0, m));
      fresh.counts.fill(delta, 0, m);
      fresh.length = m;
      return new RangeList(0);
    }
    if (this.#addOverList(list, m, delta)) return new RangeList(0);
    if (this.#clearsAll(list, m, delta)) {
      this.#spans = new SpanList(0);
      return list;
    }
    return RangeList.from(this.#addSorted(list.starts, list.ends, m, delta));
  }

  /**
   * Whether adding `delta` over the first `m` ranges of `list` brings every
   * count to zero: the ranges are the spans themselves, each counted
   * `-delta` (a segment whose run list was the only one on a layer moving
   * off all of it, as a deferred freeze does to its last packed layer's
   * mapped counts each round).
   */
  #clearsAll(list: RangeList, m: number, delta: number): boolean {
    const { starts, ends, counts, length: n } = this.#spans;
    if (n !== m || delta >= 0) return false;
    for (let i = 0; i < n; i++) if (starts[i] !== list.starts[i] || ends[i] !== list.ends[i] || counts[i] !== -delta) return false;
    return true;
  }

  /**
   * Adds `delta` over the first `m` ranges of `list` in place, where that
   * changes no span's bounds: each range is exactly a run of touching
   * spans, none falls to zero, and no neighbour it touches comes to the same
   * count. One walk (a run list scattered into a run a page, counted over a
   * layer whose spans are those same pages, costs its length, not a sweep
   * and a splice). False, changing nothing, otherwise. Neighbours never
   * change: the ranges never touch (a RangeList's, or a single one).
   */
  #addOverList(list: { readonly starts: Int32Array; readonly ends: Int32Array }, m: number, delta: number): boolean {
    const { starts, ends, counts, length: n } = this.#spans;
    // First and last span of each range, found in one walk, kept in scratch
    // of their own (the ranges may be in scratch.rs and scratch.re).
    if (scratch.firsts.length < m) {
      scratch.firsts = new Int32Array(Math.max(m, 2 * scratch.firsts.length));
      scratch.lasts = new Int32Array(scratch.firsts.length);
    }
    const { firsts, lasts } = scratch;
    let i = firstAbove(ends, n, list.starts[0]!);
    for (let g = 0; g < m; g++) {
      const start = list.starts[g]!;
      const end = list.ends[g]!;
      while (i < n && ends[i]! <= start) i++;
      if (i >= n || starts[i] !== start) return false;
      let j = i;
      for (;;) {
        if (counts[j]! + delta <= 0) return false;
        if (ends[j] === end) break;
        if (ends[j]! > end || j + 1 >= n || starts[j + 1] !== ends[j]) return false;
        j++;
      }
      if (i > 0 && ends[i - 1] === start && counts[i - 1] === counts[i]! + delta) return false;
      if (j + 1 < n && starts[j + 1] === end && counts[j + 1] === counts[j]! + delta) return false;
      firsts[g] = i;
      lasts[g] = j;
      i = j + 1;
    }
    for (let g = 0; g < m; g++) for (let k = firsts[g]!; k <= lasts[g]!; k++) counts[k]! += delta;
    return true;
  }

  /** The sweep of addAll over the first `m` ranges given as sorted starts `rs` and sorted ends `re`. */
  #addSorted(rs: Int32Array, re: Int32Array, m: number, delta: number): Range[] {
    const spans = this.#spans;
    const { starts, ends, counts } = spans;
    if (m === 0) return [];
    // A clone adds its source's run list, often one run over a layer whose
    // counts are split into many spans: walked once, not swept and spliced.
    if (m === 1 && this.#addOverList({ starts: rs, ends: re }, 1, delta)) return [];
    // Only the spans the ranges touch (#window) are swept, and the result
    // spliced in: a clone's few ranges over a layer with many spans cost
    // their own size and one move of the spans after them, not a new list
    // of all of them. rs and re are each sorted here: the first start and
    // the last end bound them.
    const { from: i0, to: i1 } = this.#window(rs[0]!, re[m - 1]!);
    const next = scratch.spans;
    next.length = 0;
    const freed: Range[] = [];
    let si = i0; // next span whose start is to come
    let ei = i0; // next span whose end is to come
    let a = 0;
    let b = 0;
    let oldCount = 0;
    let newCount = 0;
    const INF = Infinity;
    let at = Math.min(i0 < i1 ? starts[i0]! : INF, rs[0]!);
    while (at !== INF) {
      for (; ei < i1 && ends[ei] === at; ei++) {
        oldCount -= counts[ei]!;
        newCount -= counts[ei]!;
      }
      for (; si < i1 && starts[si] === at; si++) {
        oldCount += counts[si]!;
        newCount += counts[si]!;
      }
      for (; b < m && re[b] === at; b++) newCount -= delta;
      for (; a < m && rs[a] === at; a++) newCount += delta;
      if (newCount < 0) throw new Error('reference count below zero');
      let to = INF;
      if (si < i1 && starts[si]! < to) to = starts[si]!;
      if (ei < i1 && ends[ei]! < to) to = ends[ei]!;
      if (a < m && rs[a]! < to) to = rs[a]!;
      if (b < m && re[b]! < to) to = re[b]!;
      if (to === INF) break;
      sweep(next, freed, at, to, oldCount, newCount);
      at = to;
    }
    spans.splice(i0, i1, next);
    return freed;
  }

  /**
   * Adds `sign` times each part's own `count` over it (`parts` sorted and
   * disjoint, as spansIn gives them); returns the ranges whose count fell
   * to zero. One sweep over the parts and the spans they touch.
   */
  addEach(parts: SpanList, sign: 1 | -1): Range[] {
    const spans = this.#spans;
    const { starts, ends, counts } = spans;
    const m = parts.length;
    if (m === 0) return [];
    // Only the spans the parts touch, swept into the shared scratch and spliced in, as in addAll.
    const { from: i0, to: i1 } = this.#window(parts.starts[0]!, parts.ends[m - 1]!);
    const next = scratch.spans;
    next.length = 0;
    const freed: Range[] = [];
    let i = i0;
    let j = 0;
    let at = Math.min(i < i1 ? starts[i]! : Infinity, parts.starts[0]!);
    while (at !== Infinity) {
      while (i < i1 && ends[i]! <= at) i++;
      while (j < m && parts.ends[j]! <= at) j++;
      if (j < m && parts.starts[j]! > at && i < i1 && starts[i]! >= at) {
        // Between two parts, not inside a span: the spans that end before
        // the next part begins are unchanged, copied at once (scattered
        // parts over a layer of many spans cost their own number, not the
        // spans').
        const k = nextAbove(ends, i, i1, parts.starts[j]!);
        if (k > i) {
          next.appendFrom(spans, i, k);
          i = k;
          at = Math.min(i < i1 ? starts[i]! : Infinity, parts.starts[j]!);
          continue;
        }
      }
      const inSpan = i < i1 && starts[i]! <= at;
      const inPart = j < m && parts.starts[j]! <= at;
      let to = Infinity;
      if (i < i1) to = inSpan ? ends[i]! : starts[i]!;
      if (j < m) to = Math.min(to, inPart ? parts.ends[j]! : parts.starts[j]!);
      if (to === Infinity) break;
      const old = inSpan ? counts[i]! : 0;
      const count = old + (inPart ? sign * parts.counts[j]! : 0);
      if (count < 0) throw new Error('reference count below zero');
      sweep(next, freed, at, to, old, count);
      at = to;
    }
    spans.splice(i0, i1, next);
    return freed;
  }

  /** The first span whose end is past `page` (binary search): where a sweep from `page` starts. */
  #from(page: number): number {
    return firstAbove(this.#spans.ends, this.#spans.length, page);
  }

  /**
   * The spans a change over pages [first, last) is swept over: from the
   * one before the first it touches to the one after the last (the two at
   * the edges come out unchanged, so the spans beside them stay apart from
   * them as they were), as [from, to) indices.
   */
  #window(first: number, last: number): { from: number; to: number } {
    const { starts, ends, length: n } = this.#spans;
    return { from: Math.max(0, firstAbove(ends, n, first) - 1), to: Math.min(n, firstAtOrAbove(starts, n, last) + 1) };
  }

  /** Whether any page of the sorted, disjoint `ranges` has a count above zero. */
  overlaps(ranges: readonly Range[]): boolean {
    const { starts, ends, length } = this.#spans;
    let i = ranges.length > 0 ? this.#from(ranges[0]!.start) : 0;
    for (const r of ranges) {
      i = nextAbove(ends, i, length, r.start);
      if (i < length && starts[i]! < r.end) return true;
    }
    return false;
  }

  /**
   * The counts over `ranges`, less `less`: their parts with a count above
   * `less`, clipped to them, in order, each with its count less `less`
   * (touching parts of one count joined). One sweep.
   */
  spansIn(ranges: RangeList, less = 0): SpanList {
    const { starts, ends, counts, length } = this.#spans;
    const out = new SpanList(ranges.length);
    let i = ranges.length > 0 ? this.#from(ranges.starts[0]!) : 0;
    for (let g = 0; g < ranges.length; g++) {
      const gs = ranges.starts[g]!;
      const ge = ranges.ends[g]!;
      i = nextAbove(ends, i, length, gs);
      for (let j = i; j < length && starts[j]! < ge; j++) {
        if (counts[j]! <= less) continue;
        out.push(Math.max(starts[j]!, gs), Math.min(ends[j]!, ge), counts[j]! - less);
      }
    }
    return out;
  }

  /** For each of the sorted, disjoint `ranges`: its pages whose count is exactly `count`. One sweep. */
  countEqualEach(ranges: readonly Range[], count: number): number[] {
    const { starts, ends, counts, length } = this.#spans;
    const out: number[] = [];
    let i = ranges.length > 0 ? this.#from(ranges[0]!.start) : 0;
    for (const r of ranges) {
      i = nextAbove(ends, i, length, r.start);
      let k = 0;
      for (let j = i; j < length && starts[j]! < r.end; j++) {
        if (counts[j] === count) k += Math.min(ends[j]!, r.end) - Math.max(starts[j]!, r.start);
      }
      out.push(k);
    }
    return out;
  }

  /** The pages of `list` (sorted, disjoint) no run list uses (count zero): sorted, disjoint. */
  unusedIn(list: RangeList): RangeList {
    return subtractList(list, pagesOfSpans(this.spansIn(list, 0)));
  }

  /**
   * The parts of `list` whose pages have a count of exactly `count` (above
   * zero): `list` itself where every page of it has that count. One sweep.
   */
  listWithCount(list: RangeList, count: number): RangeList {
    const { starts, ends, counts, length } = this.#spans;
    const out = new RangeList(list.length);
    let whole = true;
    let i = list.length > 0 ? this.#from(list.starts[0]!) : 0;
    for (let g = 0; g < list.length; g++) {
      const gs = list.starts[g]!;
      const ge = list.ends[g]!;
      i = nextAbove(ends, i, length, gs);
      let at = gs;
      for (let j = i; j < length && starts[j]! < ge; j++) {
        const start = Math.max(starts[j]!, gs);
        if (counts[j] !== count) continue;
        if (start > at) whole = false;
        const end = Math.min(ends[j]!, ge);
        out.push(start, end);
        at = end;
      }
      if (at < ge) whole = false;
    }
    return whole ? list : out;
  }
}
