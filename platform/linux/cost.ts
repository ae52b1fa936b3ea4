// The cost model of the Linux backend: when rewriting a segment's scattered
// runs into one new layer (compaction) pays for itself, and which pages it
// rewrites. Pure functions over run lists and reference counts, free of
// system calls, so they are property-tested apart from the kernel.
import { coalesce, overlapPages, pageCount, sameCounts, SpanList, type Range, type RangeList, type RefCounts, type RunList, type Span } from '../../src/runs.ts';

/** What the cost model needs of a layer: how many runs of live segments use each of its pages. */
export interface Counted {
  readonly refs: RefCounts;
}

// Cost model for compaction, in µs: mapping one run of a clone or restore,
// and copying one page into a new layer. Decisions compare the two, so their
// ratio is what matters.
export const MAP_COST = 6;
export const COPY_COST = 1.5;
/** Written runs closer than this many pages are frozen as one, copying the clean pages between. */
export const JOIN_GAP = 4;
/** Windows a cost-driven compaction leaves. */
export const COMPACT_WINDOWS = 4;
/**
 * A restore copies the pages where the source's run list differs from the
 * target's, rather than map the source's runs, where those runs would take
 * more than 1/RESTORE_COPY_SHARE of the free mapping budget and the pages
 * are at most that share of the segment (or always, where the runs would
 * not fit the budget).
 */
export const RESTORE_COPY_SHARE = 4;
/**
 * A segment too scattered for windows is flattened once its mapping debt
 * reaches 1/FLATTEN_EARLY of a whole copy's cost, less as the mapping budget
 * fills (flattenPoint): early enough that its later clones inherit one run,
 * rather than the budget forcing old snapshots flat one by one.
 */
export const FLATTEN_EARLY = 4;

/** Fewest pages a never-written hole must span to be mapped anonymously at a first clone (2 MiB of 4 KiB pages). */
export const HOLE_MIN_PAGES = 512;
/** Most holes a first clone maps anonymously: each costs up to two mappings in every clone that inherits them. */
export const MAX_HOLES = 32;

/**
 * Private copies (pages) one mapping is worth, where a segment frozen in
 * place rewrites layer pages other mapped segments show: they take private
 * copies of those pages (pinned pages), or the segment maps them from a new
 * layer instead, a run costing two mappings, in it and in every clone
 * that inherits its run list.
 */
export const COPIES_PER_MAPPING = 16;

/**
 * Of `spans` (layer pages, each with how many mapped segments show it, the
 * one writing included), those the other segments should take private
 * copies of: where the copies, one per other segment and page, come to no
 * more than the two mappings a new run would cost. Sorted, disjoint, merged.
 */
export function privatizeWorth(spans: readonly Span[]): Range[] {
  return coalesce(spans.filter((s) => (s.count - 1) * (s.end - s.start) <= 2 * COPIES_PER_MAPPING));
}

/**
 * Fewest other mapped segments that must show a layer page a segment
 * rewrites in place for them to share one history copy of its old contents,
 * each mapping it, rather than each take a private copy: with one, the
 * memory is the same and the mappings are not.
 */
export const SHARE_MIN_SHOWN = 2;

/**
 * Mapped segments share history copies only while all segments together
 * use at most 1/SHARE_BUDGET_PART of their mapping budget: the rest stays
 * free for the clones, restores and first reads that need room, which
 * would otherwise compact segments to make it.
 */
export const SHARE_BUDGET_PART = 2;

/**
 * Of layer pages a segment rewrites in place, those whose other users
 * should share one history copy of the old contents, each mapping it, where
 * they would each take a private copy (privatizeWorth): where every other
 * user maps the page and at least SHARE_MIN_SHOWN do. `users` and
 * `mapped`: the layer's counts there less the writer's own.
 */
export function shareWorth(users: SpanList, mapped: SpanList): RangeList {
  const many = new SpanList(mapped.length);
  for (let i = 0; i < mapped.length; i++) {
    if (mapped.counts[i]! >= SHARE_MIN_SHOWN) many.push(mapped.starts[i]!, mapped.ends[i]!, mapped.counts[i]!);
  }
  return sameCounts(users, many);
}

/** Mappings history sharing may still add while `used` of a budget of `limit` are in use (SHARE_BUDGET_PART). */
export function shareRoom(used: number, limit: number): number {
  return Math.max(0, Math.floor(limit / SHARE_BUDGET_PART) - used);
}

/** A compaction: the page ranges to rewrite, and how many pages another segment still holds among them. */
export interface Plan {
  windows: Range[];
  duplicated: number;
}

/**
 * Adds to `source`'s debt the mapping work that mapping its runs again just
 * cost beyond a compacted run list's; returns the new debt, which the segment
 * that now shares the run list takes over.
 */
export function chargeMapping(source: { debt: number; readonly runs: { readonly length: number } }): number {
  source.debt += MAP_COST * Math.max(0, source.runs.length - 2 * COMPACT_WINDOWS - 1);
  return source.debt;
}

/**
 * The mapping debt at which a segment of `pages` pages, too scattered for
 * windows, is flattened: a fraction of a whole copy's cost (FLATTEN_EARLY),
 * smaller as all segments' mappings (`used` of `budget`) fill the budget.
 * Runs spend that shared budget, and a flattened segment serves all its
 * later clones, where the budget's last resort, flattening the most
 * fragmented segments, serves only them.
 */
export function flattenPoint(pages: number, used: number, budget: number): number {
  const free = 1 - used / budget;
  return ((COPY_COST * pages) / FLATTEN_EARLY) * Math.max(0.05, free);
}

/**
 * The compaction a segment of `pages` pages with run list `runs` and mapping
 * debt `debt` should have after a freeze, as (windows, limit) for plan();
 * undefined when none pays yet. Past `maxRuns` runs it is compacted whatever
 * the cost. `budget` gives the mappings all segments use and may use; it is
 * asked only when the answer turns on them (reading the process's budget
 * can cost a system call).
 */
export function compactionFor<L extends Counted>(
  runs: RunList<L | null>,
  pages: number,
  debt: number,
  maxRuns: number,
  budget: () => { used: number; limit: number },
): { windows: number; limit: number } | undefined {
  if (runs.length > maxRuns) return { windows: maxRuns >> 2, limit: Infinity };
  if (runs.length <= 2 * COMPACT_WINDOWS + 1) return undefined;
  const limit = pages >> 3;
  const p = plan(runs, pages, COMPACT_WINDOWS, limit);
  if (p !== undefined && debt >= COPY_COST * pageCount(p.windows)) return { windows: COMPACT_WINDOWS, limit };
  // Scattered so widely that a few windows would copy too much shared
  // memory: flatten once the mapping work has cost part of a copy.
  if (p === undefined) {
    const { used, limit: most } = budget();
    if (debt >= flattenPoint(pages, used, most)) return { windows: 0, limit: pages };
  }
  return undefined;
}

/**
 * Whether mapping a restore source's `runs` runs would take too much of the
 * `free` mappings left in the budget: more than a compaction into windows
 * leaves, and more than 1/RESTORE_COPY_SHARE of what is free.
 */
export function restoreRunsTooMany(runs: number, free: number): boolean {
  return runs > Math.max(2 * COMPACT_WINDOWS + 1, free / RESTORE_COPY_SHARE);
}

/**
 * Whether a restore of a segment of `pages` pages from a fragmented source
 * should copy the `differing` pages where the run lists differ rather than
 * map the source's runs: always where the runs would not fit the mapping
 * budget (`fits` false), else while they are few (RESTORE_COPY_SHARE).
 */
export function restoreCopyPays(fits: boolean, differing: number, pages: number): boolean {
  return !fits || differing <= pages / RESTORE_COPY_SHARE;
}

/**
 * Plans a compaction of a segment of `pages` pages with run list `runs` down
 * to `windows` ranges off its main layer (0: the whole segment as one range).
 * Copying a page that another segment still holds puts it in memory twice,
 * so a plan may copy at most `limit` such pages: gaps between off-main runs
 * are joined cheapest first until the windows are few enough or the limit is
 * reached. Returns undefined when no plan within the limit reduces the runs.
 */
export function plan<L extends Counted>(runs: RunList<L | null>, pages: number, windows: number, limit: number): Plan | undefined {
  const shared = sharedPages(runs);
  if (windows === 0) {
    let dup = 0;
    for (const n of shared) dup += n;
    return dup <= limit && runs.length > 1 ? { windows: [{ start: 0, end: pages }], duplicated: dup } : undefined;
  }
  // Off-main ranges, and the main-layer gaps between them with their cost.
  const base = largestLayer(runs);
  const ranges: { start: number; end: number }[] = [];
  const gaps: { at: number; cost: number; size: number }[] = [];
  let dup = 0;
  let pendingGap: { cost: number; size: number } | undefined;
  for (let i = 0; i < runs.length; i++) {
    const start = runs.starts[i]!;
    const end = runs.ends[i]!;
    if (runs.layers[i] === base) {
      if (ranges.length > 0) pendingGap = { cost: shared[i]!, size: end - start };
      continue;
    }
    dup += shared[i]!;
    const last = ranges[ranges.length - 1];
    if (last !== undefined && last.end === start) {
      last.end = end;
    } else {
      if (last !== undefined && pendingGap !== undefined) gaps.push({ at: ranges.length - 1, ...pendingGap });
      ranges.push({ start, end });
    }
    pendingGap = undefined;
  }
  if (ranges.length === 0 || dup > limit) return undefined;
  gaps.sort((a, b) => a.cost - b.cost || a.size - b.size);
  const joined = new Set<number>();
  let count = ranges.length;
  for (const g of gaps) {
    if (count <= windows || dup + g.cost > limit) break;
    dup += g.cost;
    joined.add(g.at);
    count--;
  }
  const out: Range[] = [];
  let start = ranges[0]!.start;
  for (let i = 0; i < ranges.length; i++) {
    if (joined.has(i)) continue;
    out.push({ start, end: ranges[i]!.end });
    if (i + 1 < ranges.length) start = ranges[i + 1]!.start;
  }
  return 2 * out.length + 1 < runs.length ? { windows: out, duplicated: dup } : undefined;
}

/**
 * The most pages a compaction forced by the mapping or descriptor budget may
 * copy that other segments still hold (they then exist twice): 1/64 of the
 * segment, at least 256 pages (1 MiB of 4 KiB pages). Past that, the operation fails with ENOMEM
 * rather than spend the segment's size again.
 */
export function duplicateLimit(pages: number): number {
  return Math.max(256, Math.floor(pages / 64));
}

/**
 * The holes of a first clone worth an anonymous mapping: at least
 * HOLE_MIN_PAGES long, the MAX_HOLES largest, largest first.
 */
export function worthwhileHoles(holes: readonly Range[]): Range[] {
  const big = holes.filter((h) => h.end - h.start >= HOLE_MIN_PAGES);
  big.sort((a, b) => b.end - b.start - (a.end - a.start) || a.start - b.start);
  return big.slice(0, MAX_HOLES);
}

/**
 * For each run, how many of its pages copying would duplicate: pages of a
 * layer that another run also uses, and anonymous pages (copying allocates
 * them). One sweep per layer.
 */
export function sharedPages<L extends Counted>(runs: RunList<L | null>): number[] {
  const out = new Array<number>(runs.length).fill(0);
  const byLayer = new Map<L, number[]>();
  for (let i = 0; i < runs.length; i++) {
    const layer = runs.layers[i]!;
    if (layer === null) {
      out[i] = runs.ends[i]! - runs.starts[i]!;
      continue;
    }
    const list = byLayer.get(layer);
    if (list === undefined) byLayer.set(layer, [i]);
    else list.push(i);
  }
  for (const [layer, indices] of byLayer) {
    const alone = layer.refs.countEqualEach(
      indices.map((i) => runs.at(i)),
      1,
    );
    indices.forEach((i, k) => (out[i] = runs.ends[i]! - runs.starts[i]! - alone[k]!));
  }
  return out;
}

/**
 * The layer (or anonymous memory, null) holding the most pages in `runs`
 * among those `eligible` says may (all by default); null for none.
 */
export function largestLayer<L>(runs: RunList<L | null>, eligible: (layer: L | null) => boolean = () => true): L | null {
  const sizes = new Map<L | null, number>();
  let best: L | null = null;
  let bestSize = -1;
  for (let i = 0; i < runs.length; i++) {
    const layer = runs.layers[i]!;
    if (!eligible(layer)) continue;
    const n = (sizes.get(layer) ?? 0) + runs.ends[i]! - runs.starts[i]!;
    sizes.set(layer, n);
    if (n > bestSize) {
      bestSize = n;
      best = layer;
    }
  }
  return best;
}

/**
 * The sorted, disjoint `ranges` joined across their smallest gaps until at
 * most `most` (at least 1) remain: a freeze that needs two mappings per run
 * fits a short mapping budget by copying the clean pages between written
 * ones too. Ranges that already fit come back as they are.
 */
export function joinToFit(ranges: readonly Range[], most: number): Range[] {
  const keep = Math.max(1, most);
  if (ranges.length <= keep) return ranges.slice();
  // Join the (length - keep) smallest gaps, the earlier of equal ones first.
  const order = Array.from({ length: ranges.length - 1 }, (_, i) => i);
  const gap = (i: number): number => ranges[i + 1]!.start - ranges[i]!.end;
  order.sort((a, b) => gap(a) - gap(b) || a - b);
  const joined = new Uint8Array(ranges.length - 1);
  for (let k = 0; k < ranges.length - keep; k++) joined[order[k]!] = 1;
  const out: Range[] = [];
  let start = ranges[0]!.start;
  for (let i = 0; i < ranges.length; i++) {
    if (i < ranges.length - 1 && joined[i] === 1) continue;
    out.push({ start, end: ranges[i]!.end });
    if (i + 1 < ranges.length) start = ranges[i + 1]!.start;
  }
  return out;
}

/**
 * Whether a freeze that found `written` (pages written since the last one)
 * defers (freezeInPlace): the segment rewrote mostly the pages it wrote
 * the round before (`last`, null before its first freeze), so it will
 * likely rewrite them again, and a copy of each round's contents for the
 * clone is then the only one. At least half of them, counted in pages.
 */
export function defersFreeze(written: RangeList, last: RangeList | null): boolean {
  return last !== null && 2 * overlapPages(written, last) >= written.pages;
}

/**
 * What a freeze maps, given the written runs `dirty` left after freezing
 * in place (two mappings each) and `free` mappings of the budget: `dirty`
 * itself where its runs take at most half of that; else joined across
 * their smallest gaps down to an eighth of it (joinToFit), copying the
 * clean pages between them too, where that copy, `extraBytes(joined)`
 * bytes, is at most a quarter of the memory the machine has free
 * (`available` bytes, which leaves room for the next rounds of writes and
 * reads). Else `dirty`: the budget then refuses the freeze (ENOMEM), where
 * the copy could run the machine out of memory (the kernel's OOM killer
 * ends the process).
 */
export function fitToBudget(dirty: readonly Range[], free: number, pageSize: number, available: () => number): readonly Range[] {
  if (2 * dirty.length <= free / 2) return dirty;
  const joined = joinToFit(dirty, Math.floor(free / 8));
  const extra = (pageCount(joined) - pageCount(dirty)) * pageSize;
  return extra <= available() / 4 ? joined : dirty;
}

/**
 * Whether a segment whose in-place rewrites have made other mapped
 * segments (snapshots that were read) take `privatized` redundant private
 * copies since it last moved to a new layer (a copy of a page beyond the
 * first of it: `fork()` keeps one old copy for all its children), and
 * would now make them take `copies` more, moves to a new layer instead: a
 * copy of its `pages` pages, after which the old layer is never rewritten
 * again and the snapshots that show it need no more copies. Where each
 * round rewrites new pages at random, every older read snapshot copies
 * them (n snapshots: about n/2 copies of each, kept), and moving bounds
 * that; where the same pages are rewritten each round, only the newest
 * copies them, none is redundant, and a move would gain nothing. It moves
 * once the redundant copies reach its size: they are a rent that grows
 * with the snapshots reading the layer, and a move, costing the segment's
 * size, brings it back to nothing, so moving when the rent paid since the
 * last move would reach that cost spends as much on rent as on moves, the
 * cheapest split for a rent that grows steadily. Simulated (the model of
 * copies the engine makes, checked against the bench: 2.98, 2.61 and 2.04
 * times fork()'s memory at 1%, 10% and 30% over six rounds), against
 * moving at twice its size: 30% at random, six rounds 2.04 to 1.84 times
 * fork()'s memory, 100 rounds 2.24 to 2.04; 10%, 100 rounds 4.06 to 3.80;
 * 1%, 100 rounds 13.5 to 12.8 (a move every 14 rounds or so, not 20);
 * never more at 6, 20 or 100 rounds of 1%, 10% or 30% (moving at half its
 * size: 28% more at 10% over six rounds). `affordable()`:
 * whether the machine has the memory for the move, asked only when the
 * copies would pay for it (it may read /proc/meminfo).
 */
export function rebasePays(privatized: number, copies: number, pages: number, affordable: () => boolean): boolean {
  return copies > 0 && privatized + copies >= pages && affordable();
}

/** Fewest pages a copy must move for its time to say what a page costs that way (CheaperWay). */
export const TIMED_MIN_PAGES = 64;
/** At most one timed copy in this many goes the way that looked dearer, so a change of costs is seen (CheaperWay). */
export const RETRY_EVERY = 16;
/**
 * A way that looked dearer is taken again only once the cheaper has spent
 * this many times what the trial should cost beyond it (CheaperWay): the
 * trials then cost at most about 1/RETRY_RATIO of the time copies take,
 * however far apart the ways are. (History read through a layer's window
 * on the bench's VM: pwritev 7.5 µs a page, the pipe 1.5; trials of 1,024
 * pages every 16 copies of up to 1,024 took 7% of a clone at 1 GiB, 30% of
 * pages at random, kept.)
 */
export const RETRY_RATIO = 32;
/**
 * Most pages of one copy a way takes while it is being tried (not timed
 * yet, or the dearer taken again to see whether costs changed); the rest of
 * the copy goes the way found cheaper (CheaperWay.part). At 4 GiB, a first
 * pwritev of a segment's 131,072 own pages took 1.6–2.4 s where the pipe
 * took about 1.4: a trial is a sample, not a whole copy.
 */
export const TRIAL_PAGES = 1024;
/** Weight of the newest timing in a way's cost a page (an exponential average). */
const NEWEST_WEIGHT = 0.3;

/**
 * Which of two ways of making the same copy is cheaper here, learned from
 * their timings, where that depends on the machine more than on the copy.
 * History read from a layer's moved-aside mapping goes by pwritev, which
 * reads through the process's page tables, or through a pipe, whose
 * vmsplice walks them in software: 655 pages at random of 256 MiB, 1.1 ms
 * against 1.5 on one VM, 6.3 against 2.0 on another, where every first
 * access from the kernel to a page through a moved mapping traps into a
 * hypervisor that shadows the page tables (8 µs a page, measured in C).
 * Each way is tried once, then the cheaper is taken, the other again once
 * the cheaper has spent RETRY_RATIO times what that trial should cost
 * beyond it, and never in fewer than RETRY_EVERY timed copies; a way being
 * tried takes at most TRIAL_PAGES of a copy (part()). Copies under
 * TIMED_MIN_PAGES take the cheaper way and teach nothing (a call's fixed
 * cost would dominate). Either way gives the same bytes: only time depends
 * on the choice.
 */
export class CheaperWay {
  /** Cost a page of each way, µs; NaN until timed. */
  readonly perPage: [number, number] = [Number.NaN, Number.NaN];
  /** Timed copies since the dearer way was last taken. */
  #sinceOther = 0;
  /** Milliseconds the cheaper way took since the dearer was last taken. */
  #spentSince = 0;

  /** The way (0 or 1) to copy `pages` pages. */
  choose(pages: number): 0 | 1 {
    const [a, b] = this.perPage;
    if (pages < TIMED_MIN_PAGES) return b < a ? 1 : 0;
    const cheaper = this.#cheaper();
    // Not both timed: the one not timed yet, way 0 first.
    if (cheaper === undefined) return Number.isNaN(a) ? 0 : 1;
    const other = cheaper === 0 ? 1 : 0;
    if (this.#sinceOther + 1 < RETRY_EVERY) return cheaper;
    // What a trial (part()) should cost beyond the cheaper way, in ms.
    const extra = ((this.perPage[other] - this.perPage[cheaper]) * Math.min(pages, TRIAL_PAGES)) / 1000;
    return this.#spentSince >= RETRY_RATIO * extra ? other : cheaper;
  }

  /**
   * The way for the next part of a copy with `left` pages to go, and how
   * many of them it takes: all of them, unless the way is being tried
   * (choose() took a way not timed yet, or the dearer one), which takes at
   * most TRIAL_PAGES. Each part is timed and recorded apart, so one large
   * copy can try both ways and go the cheaper for the rest.
   */
  part(left: number): { way: 0 | 1; pages: number } {
    const way = this.choose(left);
    if (left < TIMED_MIN_PAGES) return { way, pages: left };
    // Until both are timed, choose() takes one not timed yet: a trial.
    const cheaper = this.#cheaper();
    return { way, pages: cheaper === undefined || way !== cheaper ? Math.min(left, TRIAL_PAGES) : left };
  }

  /** Records that `way` copied `pages` pages in `ms` milliseconds. */
  record(way: 0 | 1, pages: number, ms: number): void {
    if (pages < TIMED_MIN_PAGES || !(ms >= 0) || !Number.isFinite(ms)) return;
    const cheaper = this.#cheaper();
    if (cheaper !== undefined && way !== cheaper) {
      this.#sinceOther = 0;
      this.#spentSince = 0;
    } else {
      this.#sinceOther++;
      // Only the way known cheaper pays for the next trial.
      if (cheaper !== undefined) this.#spentSince += ms;
    }
    const x = (ms * 1000) / pages;
    const old = this.perPage[way];
    this.perPage[way] = Number.isNaN(old) ? x : old + (x - old) * NEWEST_WEIGHT;
  }

  /** The way that has been cheaper, once both are timed. */
  #cheaper(): 0 | 1 | undefined {
    const [a, b] = this.perPage;
    if (Number.isNaN(a) || Number.isNaN(b)) return undefined;
    return b < a ? 1 : 0;
  }
}
