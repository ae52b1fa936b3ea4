// Preparing a segment for a clone or a restore: bringing it to a state
// whose run list describes its contents, so another segment can share them.
// A fresh segment is made private first (freeze.ts, makePrivate); then the
// pages it wrote since its last freeze are frozen in place where they can
// be (freezeInPlace), the rest into a new layer (freeze), within the
// mapping budget (cost.ts, fitToBudget); a run list that grew fragmented is
// compacted where that pays (cost.ts, compactionFor).
import { coalesce, type Range } from '../../src/runs.ts';
import { compact } from './compact.ts';
import { compactionFor, defersFreeze, fitToBudget, JOIN_GAP } from './cost.ts';
import { writtenForFreeze, type Engine, type LinuxSegment } from './engine.ts';
import { freeze, freezeInPlace, makePrivate, rebase } from './freeze.ts';

/**
 * Brings `seg` to the state a clone or restore can share: private, its
 * written pages in a layer, and no more runs than `e.maxRuns`. An
 * unmapped segment has written nothing, and its runs cost no mapping: it
 * is left as it is. Each step leaves every segment reading as before when
 * it fails.
 */
export function prepare(e: Engine, seg: LinuxSegment): void {
  if (!seg.mapped) return;
  // A segment made private just now has written nothing since.
  const fresh = seg.shared !== null;
  makePrivate(e, seg);
  // Exactly the pages written since (write tracking) where the segment
  // keeps private copies across freezes (pinned pages), or is to.
  const scan = fresh ? null : writtenForFreeze(e, seg, e.tracker !== null && (seg.deferNext || seg.maps !== seg.runs));
  let written: Range[] = [];
  if (scan !== null) {
    // Deferring needs the segment's later rewrites told apart (write
    // tracking) and every page reported a private copy. (Written pages are
    // tracked from then on: its private copies stay, written or not.)
    const defer = e.tracker !== null && scan.private && defersFreeze(scan.written, seg.lastWritten);
    const done = freezeInPlace(e, seg, scan.written, { exact: scan.exact, defer });
    written = coalesce(done.left, JOIN_GAP);
    // The next scan then reports exactly what is rewritten.
    seg.deferNext = defer && done.unmappedShared > 0;
    seg.lastWritten = scan.written;
    if (done.rebase) {
      // Read snapshots have made twice its size in redundant copies of
      // its layer: it moves, and leaves that layer to them (cost.ts,
      // rebasePays). A failure leaves it as it was, its pages left still
      // private.
      rebase(e, seg);
      seg.pending = null;
      return;
    }
  }
  // Freezing adds up to two mappings per written run: a clone that can be
  // done is not refused for the budget while the machine has the memory.
  const dirty = fitToBudget(written, e.budget.limit(2 * written.length) - e.budget.used, e.pageSize, () => e.availableMemory());
  e.ensureRoom(2 * dirty.length, seg.pages);
  freeze(e, seg, dirty, written, (length) => e.layers.newLayer(length));
  // Frozen: what the scan reported is in the run list now.
  seg.pending = null;
  // A run list scattered by deferred freezes (pinned pages) costs the
  // segment no mapping, and its clones map by copy where it would not
  // fit (materialize.ts): compacting it would copy and remap for nothing.
  if (seg.maps !== seg.runs) return;
  const c = compactionFor(seg.runs, seg.pages, seg.debt, e.maxRuns, () => ({
    used: e.budget.used,
    limit: e.budget.limit(0),
  }));
  if (c !== undefined) compact(e, seg, c.windows, c.limit);
}
