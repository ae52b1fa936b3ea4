// The state the Linux backend's operations share: a segment's handle, the
// parts every operation uses (wired together by LinuxBackend), and the
// bookkeeping that keeps run lists, reference counts and the mapping count
// consistent.
import { differingList, listsUnder, overlayList, RangeList, RunList, unionList, type Range } from '../../src/runs.ts';
import type { MapBudget } from './budget.ts';
import type { Dropper } from './drop.ts';
import type { Features } from './features.ts';
import type { Layer, LayerStore, Runs } from './layers.ts';
import type { Moves } from './moves.ts';
import type { Windows } from './move-aside.ts';
import type { Scanner } from './scan.ts';
import type { WriteTracker } from './track.ts';
import type { Writer } from './writer.ts';

/** The run list of no pages (a segment's before its first, and after release). */
export const EMPTY: Runs = new RunList<Layer | null>(0);

/** The Linux backend's handle for one segment. */
export class LinuxSegment {
  /** Start of the mapping; fixed for the segment's life. */
  readonly addr: bigint;
  /**
   * Whether `runs` are mapped at `addr`. A clone is a run list only (data,
   * and one PROT_NONE reservation of its address range) until its memory is
   * first asked for (`view`): a snapshot kept to be restored from, or never
   * looked at, costs one mapping however fragmented its run list.
   */
  mapped: boolean;
  /** Mapped bytes; always a multiple of the page size. */
  readonly length: number;
  readonly pages: number;
  /** The segment's own layer while it is a fresh MAP_SHARED mapping, never cloned. */
  shared: Layer | null = null;
  /**
   * Estimated µs spent mapping runs beyond the first few since this run list
   * was last compacted, shared along clones of it. When it exceeds what a
   * compaction would cost, compaction pays for itself (ski rental).
   */
  debt = 0;
  /**
   * Pages found in memory by the scans of fast restores since the last one
   * that dropped every page (see dropWritten, restore.ts).
   */
  scanned = 0;
  /**
   * Pages a write-tracked scan reported (and protected again) whose freeze
   * has not completed: a scan reports a page once, so these are added to
   * the next one's (writtenForFreeze). Null when there are none.
   */
  pending: RangeList | null = null;
  /**
   * Redundant private copies (beyond the first of each page) other mapped
   * segments took of its layer's pages so it could rewrite them in place
   * (history.ts, privatizeSharers), since it last moved to a new layer:
   * when they add up to twice its size, it moves (cost.ts, rebasePays).
   */
  privatized = 0;
  /** The pages its last freeze found written (null before one): whether it rewrites the same pages round after round. */
  lastWritten: RangeList | null = null;
  /**
   * Whether its last freeze deferred (freezeInPlace): its last two rounds
   * wrote mostly the same pages, some of them on layer pages only unmapped
   * segments share, and writes are tracked (track.ts). Its next scan then
   * reports exactly what it rewrites.
   */
  deferNext = false;
  released = false;
  readonly #moves: Moves<Layer | null>;
  #runs: Runs = EMPTY;
  /** The eviction log's epoch `#runs` was read at (moves.ts). */
  #epoch: number;
  #maps: Runs = EMPTY;

  constructor(addr: bigint, length: number, pageSize: number, mapped: boolean, moves: Moves<Layer | null>) {
    this.addr = addr;
    this.length = length;
    this.pages = length / pageSize;
    this.mapped = mapped;
    this.#moves = moves;
    this.#epoch = moves.epoch;
  }

  /**
   * Which layer holds each page, covering [0, pages). Treated as immutable:
   * replaced, never edited, so two segments with the same list object are
   * known to hold the same contents apart from pages written since. Pages
   * another segment has since rewritten in place are re-pointed on reading
   * (moves.ts); the reference counts already say where they are.
   */
  get runs(): Runs {
    if (this.#epoch !== this.#moves.epoch) {
      this.#runs = this.#moves.resolve(this.#runs, this.#epoch, this.pages);
      this.#epoch = this.#moves.epoch;
    }
    return this.#runs;
  }

  /**
   * The run list as `runs` reads it, without keeping the re-pointed list:
   * for a look (stats) that leaves memory as it found it. A snapshot kept
   * through many later evictions re-points into a run a page evicted since,
   * an object each, which only the operations that need it should keep.
   */
  get runsNow(): Runs {
    return this.#epoch === this.#moves.epoch ? this.#runs : this.#moves.resolve(this.#runs, this.#epoch, this.pages);
  }

  set runs(runs: Runs) {
    this.#runs = runs;
    this.#epoch = this.#moves.epoch;
  }

  /**
   * Whether its run list may show `layer`: it did when last read, or an
   * eviction since moved pages there (Moves.movedToSince). False means it
   * does not, without re-pointing the run list. (A mapped segment is only
   * ever moved at pages it holds private copies of, which its mapping shows
   * from the old layer; counting those in keeps this true to the run list.)
   */
  mayShow(layer: Layer): boolean {
    if (this.#epoch !== this.#moves.epoch && this.#moves.movedToSince(layer, this.#epoch)) return true;
    return this.#runs.shows(layer);
  }

  /** The oldest eviction this segment's run list has not yet been re-pointed past. */
  get epoch(): number {
    return this.#epoch;
  }

  /**
   * Marks the run list, read at `epoch`, as read now, without re-pointing it
   * past the evictions made since: the segment that evicts keeps its pages
   * where they are.
   */
  passed(epoch: number): void {
    if (this.#epoch === epoch) this.#epoch = this.#moves.epoch;
  }

  /**
   * Which layer each of its mappings shows, while `mapped`: the same as
   * `runs` (the same list) except at pinned pages. A page is pinned where
   * the layer its mapping shows was rewritten under it after the segment
   * made a private copy of the page (a neighbour frozen in place, freeze.ts):
   * the private copy holds what `runs` says, and the mapping would show
   * something else. So a pinned page is never dropped (madvise DONTNEED),
   * only overwritten (restore refills it from `runs`) or remapped. Pinning
   * costs the segment no mapping, where remapping each page would cost two.
   * Not mapped: the run list.
   */
  get maps(): Runs {
    return this.mapped ? this.#maps : this.runs;
  }

  set maps(maps: Runs) {
    this.#maps = maps;
  }
}

/** The parts of one Linux backend, as its operations use them. */
export interface Engine {
  readonly pageSize: number;
  readonly features: Features;
  readonly layers: LayerStore;
  readonly budget: MapBudget;
  readonly windows: Windows;
  readonly writer: Writer;
  readonly dropper: Dropper;
  readonly scanner: Scanner;
  /** Asynchronous write-protect for segments that keep private copies across clones (track.ts); null where the kernel has none. */
  readonly tracker: WriteTracker | null;
  /** Every live segment. */
  readonly segments: ReadonlySet<LinuxSegment>;
  /** The evictions run lists are re-pointed from when next read. */
  readonly moves: Moves<Layer | null>;
  /** Whether anonymous memory reads as the shared zero page. */
  readonly zeroPage: boolean;
  /** Whether pages frozen in place in a layer with a window are written through it (Writer.toWindow). */
  readonly windowCopy: boolean;
  /** Whether other mapped segments may take private copies of pages a segment rewrites in place (history.ts). */
  readonly privatize: boolean;
  /** Whether mapped segments showing such pages may instead map one history copy of them between them (history.ts, shareHistory). */
  readonly shareHistory: boolean;
  /** Runs one segment may reach before it is compacted whatever the cost (prepare.ts). */
  readonly maxRuns: number;
  /** Bytes of memory the machine has free for copies (MemAvailable, or a test's figure). */
  availableMemory(): number;
  /** Makes room for `needed` more mappings, compacting other segments; throws ENOMEM when it cannot. */
  ensureRoom(needed: number, pages: number): void;
  /** Brings `seg` to the state a clone or restore can share: private, its written pages in a layer (prepare.ts). */
  prepare(seg: LinuxSegment): void;
}

/**
 * Page ranges of `seg` written since its last freeze: pages present (or
 * swapped) in its private mappings that are neither file pages nor the zero
 * page; all of it while it is a fresh shared mapping. Sorted, disjoint, merged.
 */
export function scanWritten(e: Engine, seg: LinuxSegment): Range[] {
  return scanWrittenList(e, seg).toArray();
}

/** scanWritten(), as a list. */
export function scanWrittenList(e: Engine, seg: LinuxSegment): RangeList {
  if (seg.shared !== null) return RangeList.from([{ start: 0, end: seg.pages }]);
  return e.scanner.writtenList(seg.addr, seg.pages);
}

/**
 * The pages `seg` wrote since its last freeze, for freezing it now, and
 * whether they are exactly those: where `wantExact` and there is a WriteTracker, the pages written
 * since the last such scan (pinned pages not rewritten since are not among
 * them), protected again as they are reported, plus any a failed freeze
 * left pending; they stay pending until the caller's freeze completes
 * (`seg.pending = null`). Without one, or where registering or the scan
 * is refused, every private page, protected or not (a superset: `exact`
 * false). `private`: whether each page reported is a private copy (not so
 * for the superset after a failure, nor for pages a failed freeze left
 * pending), which a deferred freeze needs (freezeInPlace).
 */
export function writtenForFreeze(e: Engine, seg: LinuxSegment, wantExact: boolean): { written: RangeList; exact: boolean; private: boolean } {
  let written: RangeList | undefined;
  const tracked = wantExact && e.tracker !== null && seg.shared === null;
  if (tracked) {
    try {
      // Mappings placed over parts of the segment since (a remap, a
      // restore) are new: registering again covers them.
      e.tracker.register(seg.addr, seg.length);
      written = e.scanner.writtenSince(seg.addr, seg.pages);
    } catch {
      written = undefined;
    }
  }
  const exact = written !== undefined;
  if (written === undefined) {
    try {
      // After a failed write-tracked scan, protected swapped entries count
      // too (markers of dropped pages among them: a superset).
      written = seg.shared !== null ? scanWrittenList(e, seg) : e.scanner.writtenList(seg.addr, seg.pages, tracked);
    } catch (err) {
      // A page a failed write-tracked scan protected, then swapped out,
      // could be missed from now on: the whole segment counts as written next time.
      if (e.tracker !== null) seg.pending = RangeList.from([{ start: 0, end: seg.pages }]);
      throw err;
    }
  }
  // Every page reported is a private copy, unless some come from a failed
  // scan's superset or an earlier failed freeze (which may have dropped them).
  const allPrivate = (exact || !tracked) && seg.pending === null;
  if (seg.pending !== null) written = unionList(written, seg.pending);
  // Pages a write-tracked scan reported are protected again: they must not be lost before they are frozen.
  seg.pending = exact || seg.pending !== null ? written : null;
  return { written, exact, private: allPrivate };
}

/**
 * Gives `seg` a new run list, keeping reference counts and the mapping
 * count; `maps` is what its mappings then show (default: the run list,
 * as after mapping it whole).
 */
export function setRuns(e: Engine, seg: LinuxSegment, runs: Runs, maps: Runs = runs): void {
  const old = seg.runs;
  const mapped = seg.mapped;
  e.layers.ref(runs, 1, mapped);
  seg.runs = runs;
  if (mapped) e.budget.segments += maps.length - seg.maps.length;
  seg.maps = maps;
  e.layers.ref(old, -1, mapped);
}

/**
 * Points the run list of `seg` at `layer` under `ranges`, its mapping
 * showing what it showed (so those pages are pinned, engine.ts): setRuns,
 * with the reference counts changed only under `ranges`, where a run list
 * scattered into a run a page would cost a sweep of every run twice. With
 * `remapped`, its mapping shows `layer` there too (the mapped segment was
 * remapped there, where its mapping and run list showed the same).
 */
export function pointAt(e: Engine, seg: LinuxSegment, ranges: RangeList, layer: Layer, remapped = false): void {
  const old = seg.runs;
  const maps = seg.maps;
  e.layers.refList(layer, ranges, 1, seg.mapped);
  const runs = overlayList(old, ranges, layer);
  seg.runs = runs;
  if (remapped) {
    const now = maps === old ? runs : overlayList(maps, ranges, layer);
    e.budget.segments += now.length - maps.length;
    seg.maps = now;
  } else {
    seg.maps = maps;
  }
  for (const [from, under] of listsUnder(old, ranges)) if (from !== null) e.layers.refList(from, under, -1, seg.mapped);
}

/** Records that `ranges` of `seg` are now mapped from `layer`: pages there are no longer pinned. */
export function replace(e: Engine, seg: LinuxSegment, ranges: readonly Range[], layer: Layer | null): void {
  const list = RangeList.from(ranges);
  const runs = overlayList(seg.runs, list, layer);
  let maps = runs;
  if (seg.maps !== seg.runs) {
    maps = overlayList(seg.maps, list, layer);
    if (differingList(maps, runs).length === 0) maps = runs;
  }
  setRuns(e, seg, runs, maps);
  if (layer !== null && layer.refs.empty) e.layers.close(layer);
}

/** The pinned pages of `seg` (see LinuxSegment.maps): sorted, disjoint. */
export function pinned(seg: LinuxSegment): Range[] {
  return pinnedList(seg).toArray();
}

/** pinned(), as a list. */
export function pinnedList(seg: LinuxSegment): RangeList {
  return seg.maps === seg.runs || !seg.mapped ? new RangeList(0) : differingList(seg.maps, seg.runs);
}
