// The state the Linux backend's operations share: a segment's handle, the
// parts every operation uses (wired together by LinuxBackend), and the
// bookkeeping that keeps run lists, reference counts and the mapping count
// consistent.
import { overlay, type Range } from '../../src/runs.ts';
import type { MapBudget } from './budget.ts';
import type { Dropper } from './drop.ts';
import type { Features } from './features.ts';
import type { Layer, LayerStore, Runs } from './layers.ts';
import type { Windows } from './move-aside.ts';
import type { Scanner } from './scan.ts';
import type { Writer } from './writer.ts';

/** The Linux backend's handle for one segment. */
export interface LinuxSegment {
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
  shared: Layer | null;
  /**
   * Which layer holds each page, covering [0, pages). Treated as immutable:
   * replaced, never edited, so two segments with the same array object are
   * known to hold the same contents apart from pages written since.
   */
  runs: Runs;
  /**
   * Estimated µs spent mapping runs beyond the first few since this run list
   * was last compacted, shared along clones of it. When it exceeds what a
   * compaction would cost, compaction pays for itself (ski rental).
   */
  debt: number;
  /**
   * Pages found in memory by the scans of fast restores since the last one
   * that dropped every page (see dropWritten, restore.ts).
   */
  scanned: number;
  released: boolean;
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
  /** Every live segment. */
  readonly segments: ReadonlySet<LinuxSegment>;
  /** Whether anonymous memory reads as the shared zero page. */
  readonly zeroPage: boolean;
  /** Whether pages frozen in place in a layer with a window are written through it (Writer.toWindow). */
  readonly windowCopy: boolean;
  /** Makes room for `needed` more mappings, compacting other segments; throws ENOMEM when it cannot. */
  ensureRoom(needed: number, pages: number): void;
  /** Brings `seg` to the state a clone or restore can share: private, its written pages in a layer (LinuxBackend). */
  prepare(seg: LinuxSegment): void;
}

/**
 * Page ranges of `seg` written since its last freeze: pages present (or
 * swapped) in its private mappings that are neither file pages nor the zero
 * page; all of it while it is a fresh shared mapping. Sorted, disjoint, merged.
 */
export function scanWritten(e: Engine, seg: LinuxSegment): Range[] {
  if (seg.shared !== null) return [{ start: 0, end: seg.pages }];
  return e.scanner.written(seg.addr, seg.pages);
}

/** Gives `seg` a new run list, keeping reference counts and the mapping count. */
export function setRuns(e: Engine, seg: LinuxSegment, runs: Runs): void {
  const old = seg.runs;
  const mapped = seg.mapped;
  e.layers.ref(runs, 1, mapped);
  seg.runs = runs;
  if (mapped) e.budget.segments += runs.length - old.length;
  e.layers.ref(old, -1, mapped);
}

/** Records that `ranges` of `seg` are now mapped from `layer`. */
export function replace(e: Engine, seg: LinuxSegment, ranges: readonly Range[], layer: Layer | null): void {
  setRuns(e, seg, overlay(seg.runs, ranges, layer));
  if (layer !== null && layer.refs.empty) e.layers.close(layer);
}
