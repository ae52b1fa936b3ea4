// The log of evictions (history.ts): pages whose old contents were copied from
// one layer to another, so that a segment could rewrite them in place. Every
// other run list on the first layer at those pages now reads the second. The
// reference counts move at once; run lists are re-pointed when next read
// (LinuxSegment.runs), so a clone costs the same with 100 kept snapshots as
// with one, and a snapshot dropped unread is never re-pointed at all. A run
// list many entries behind is re-pointed in one pass over its pages.
//
// Pure: no system calls; property-tested against applying entries one by one.
import { listsUnder, overlayList, RunList, type RangeList } from '../../src/runs.ts';

/** One eviction: every run list on `from` under `ranges` (sorted, disjoint) reads `to` there from then on. */
export interface Move<L> {
  readonly from: L;
  readonly to: L;
  readonly ranges: RangeList;
  /** Pages under `ranges`. */
  readonly pages: number;
}

/**
 * `runs` with `moves` applied in order, one at a time: the pages of each
 * entry on its layer found (listsUnder) and overlaid, per entry that finds
 * its layer. Cost: the run list's length per entry.
 */
export function applyEach<L>(runs: RunList<L>, moves: readonly Move<L>[]): RunList<L> {
  const layers = new Set<L>(runs.layers);
  for (const m of moves) {
    if (!layers.has(m.from)) continue;
    const on = listsUnder(runs, m.ranges).get(m.from);
    if (on === undefined) continue;
    runs = overlayList(runs, on, m.to);
    layers.add(m.to);
  }
  return runs;
}

/**
 * The same result as applyEach, in one pass over the pages: the run list
 * spread into a layer index per page, each entry applied to its pages, and
 * the pages gathered back into runs. Cost: the page count, plus the pages
 * of the entries; for many entries far less than applyEach.
 */
export function applyByPage<L>(runs: RunList<L>, moves: readonly Move<L>[], pages: number): RunList<L> {
  if (runs.length === 0) return runs;
  const table: L[] = [];
  const index = new Map<L, number>();
  const indexOf = (layer: L): number => {
    let i = index.get(layer);
    if (i === undefined) {
      i = table.length;
      table.push(layer);
      index.set(layer, i);
    }
    return i;
  };
  const at = new Uint32Array(pages);
  for (let i = 0; i < runs.length; i++) at.fill(indexOf(runs.layers[i]!), runs.starts[i]!, runs.ends[i]!);
  for (const m of moves) {
    const from = index.get(m.from);
    if (from === undefined) continue;
    const to = indexOf(m.to);
    const { starts, ends } = m.ranges;
    for (let g = 0; g < m.ranges.length; g++) {
      for (let p = starts[g]!, end = ends[g]!; p < end; p++) if (at[p] === from) at[p] = to;
    }
  }
  const out = new RunList<L>(runs.length);
  const first = runs.starts[0]!;
  const last = runs.ends[runs.length - 1]!;
  let start = first;
  for (let p = first + 1; p <= last; p++) {
    if (p < last && at[p] === at[start]) continue;
    out.push(start, p, table[at[start]!]!);
    start = p;
  }
  return out.seal();
}

/**
 * Which of the two ways costs less for `moves` over a run list of `length`
 * runs on `pages` pages: one pass over the pages, or an entry at a time,
 * each over the run list as the entries before it left it (an entry of r
 * ranges can split it into up to 2r more runs). Both build the run list
 * they end with; entry by entry builds one per entry. Weights measured
 * with run lists in typed arrays (a driver, 65,536 to 262,144 pages): a
 * run or range handled costs about 45 ns, a page spread and gathered 3,
 * so a page weighs a sixteenth of a run.
 */
export function byPageCheaper(length: number, pages: number, moves: readonly Move<unknown>[]): boolean {
  let each = 0;
  let runs = length;
  let spread = pages;
  for (const m of moves) {
    each += runs + m.ranges.length;
    runs = Math.min(pages, runs + 2 * m.ranges.length);
    spread += m.pages;
  }
  return spread / 16 + runs < each;
}

/** The evictions of one backend, and the run lists re-pointed from them. */
export class Moves<L extends object | null> {
  /** Entries from epoch `#base` on. */
  #entries: Move<L>[] = [];
  #base = 0;
  /** For each layer entries moved pages to, the epoch of the last such entry. */
  #lastTo = new WeakMap<object, number>();

  /** The epoch now: the number of entries ever made. A run list read now is current at it. */
  get epoch(): number {
    return this.#base + this.#entries.length;
  }

  /** Entries kept (those some run list may still need). */
  get length(): number {
    return this.#entries.length;
  }

  /** Logs an eviction. */
  push(from: L, to: L, ranges: RangeList): void {
    if (to !== null) this.#lastTo.set(to, this.epoch);
    this.#entries.push({ from, to, ranges, pages: ranges.pages });
  }

  /**
   * Whether a run list read at `epoch` may, resolved now, show `layer`
   * where it did not: whether an entry since then moved pages to it (by
   * itself or at the end of a chain of entries). Cheaper than resolving.
   */
  movedToSince(layer: L, epoch: number): boolean {
    return layer !== null && (this.#lastTo.get(layer) ?? -1) >= epoch;
  }

  /** Forgets the entries before `epoch`, the oldest any run list still needs. */
  trim(epoch: number): void {
    const n = Math.min(epoch - this.#base, this.#entries.length);
    if (n <= 0) return;
    this.#entries.splice(0, n);
    this.#base += n;
  }

  /**
   * `runs`, read at `epoch`, as it reads now. Not cached: two segments that
   * shared a run list may resolve to two equal lists, which only costs a
   * restore between them its fast path (restore.ts), where a cache keyed by
   * run list would keep every version of a mapped segment's run list alive
   * through its `maps`.
   */
  resolve(runs: RunList<L>, epoch: number, pages: number): RunList<L> {
    const now = this.epoch;
    if (epoch === now) return runs;
    if (epoch < this.#base) throw new Error('run list older than the eviction log');
    const moves = this.#entries.slice(epoch - this.#base);
    return byPageCheaper(runs.length, pages, moves) ? applyByPage(runs, moves, pages) : applyEach(runs, moves);
  }
}
