// restore(target, source), four ways. A target that shares the source's run
// list drops the pages it wrote since (a fast restore). A fragmented source
// that differs from the target in few pages, or whose runs would not fit the
// mapping budget, has those pages copied into the target. Otherwise the
// source's runs are mapped at a scratch address and moved over the target in
// one mremap (Linux 6.17+), or, before that or without room for a second
// copy, mapped over the target in place, putting it back on failure. Every
// way, a failure leaves the target reading as it did.
import * as sys from '../libc.ts';
import { SegmentError, errnoOf, systemError } from '../../src/errors.ts';
import { coalesce, differingList, intersect, pageCount, RangeList, selectIn, subtract, type Range, type Run } from '../../src/runs.ts';
import { chargeMapping, JOIN_GAP, restoreCopyPays, restoreRunsTooMany } from './cost.ts';
import { pinned, scanWritten, setRuns, type Engine, type LinuxSegment } from './engine.ts';
import { freeze } from './freeze.ts';
import type { Layer, Runs } from './layers.ts';
import { mapRuns, mapShared } from './mapper.ts';
import { readAside, readRuns, UIO_MAXIOV } from './writer.ts';

/** Fast restores drop every page, not only the written ones, once their scans have walked this many times the pages in memory. */
const DROP_ALL_AFTER = 64;

/** Gives `target` the contents of `source`, which is frozen already (its run list describes it). */
export function restore(e: Engine, target: LinuxSegment, source: LinuxSegment): void {
  if (!target.mapped) {
    // Not mapped: the run list is the whole state.
    setRuns(e, target, source.runs);
    target.debt = source.debt;
    return;
  }
  if (target.shared === null && target.runs === source.runs) {
    // Same run list: target differs from source only in the pages it wrote
    // since. Dropping them reverts each to its layer's contents.
    if (dropWritten(e, target)) return;
  }
  if (restoreByCopy(e, target, source)) return;
  // Pages on a virtual layer cannot be mapped: they are in the source's
  // memory alone (freezing the target just now may have moved them there).
  if (showsVirtual(source.runs)) {
    restoreByCopy(e, target, source, true);
    return;
  }
  if (e.features.multiMove) {
    // The source's runs are mapped at a scratch address first, then moved
    // over the target in one mremap: any failure leaves the target as it
    // was. (mremap checks the mapping limit before it unmaps anything.)
    e.ensureRoom(source.runs.length, source.pages);
    let scratch: bigint;
    let reserved = false;
    try {
      scratch = mapRuns(e.pageSize, null, source.runs, source.length, () => (reserved = true));
    } catch (err) {
      // No address space for a second copy of the range (RLIMIT_AS):
      // mapping over the target in place needs none. (A failure after the
      // range was reserved is the mapping limit, which in place would hit too.)
      if (reserved || errnoOf(err) !== sys.ENOMEM) throw err;
      restoreInPlace(e, target, source);
      return;
    }
    try {
      // Safety: MREMAP_FIXED replaces exactly the target's own range; views
      // keep their addresses and read the restored bytes.
      sys.mremap(scratch, target.length, target.length, sys.MREMAP_MAYMOVE | sys.MREMAP_FIXED, target.addr);
    } catch (err) {
      try {
        sys.munmap(scratch, target.length);
      } catch {
        // The error that matters is the one below.
      }
      const errno = errnoOf(err);
      // Before Linux 6.17, mremap moves one mapping at a time only.
      if (errno !== sys.EFAULT && errno !== sys.EINVAL) throw err;
      e.features.multiMove = false;
      restoreInPlace(e, target, source);
      return;
    }
    target.shared = null;
    setRuns(e, target, source.runs);
  } else {
    restoreInPlace(e, target, source);
  }
  target.debt = chargeMapping(source);
}

/**
 * restore() by copying, where mapping the source's runs would take too much
 * of the mapping budget: a source fragmented into many runs (an old
 * snapshot whose pages were moved to history layers, say) whose runs would
 * take more than 1/RESTORE_COPY_SHARE of the budget still free, and that
 * differs from the target's own run list in at most that share of the
 * segment's pages (or whose runs would not fit at all). Elsewhere restore
 * shares the source's pages, as the contract asks; here it copies the pages
 * it must, rather than fail. The target is frozen first, so its run list is its contents; the
 * pages where the source's run list differs are then read into the
 * target's memory (pread(2) from the source's layers, zeros for anonymous
 * runs): private pages, "written since", on the target's one mapping, and
 * no mapping is added. A failure drops them again: the target reads as
 * before. Returns false where mapping is the better way; with `always`,
 * copies whatever it costs (where the source's runs cannot be mapped),
 * refused (ENOMEM) beyond half of the memory free.
 */
function restoreByCopy(e: Engine, target: LinuxSegment, source: LinuxSegment, always = false): boolean {
  const free = e.budget.limit(source.runs.length) - e.budget.used;
  const fits = source.runs.length <= free;
  if (!always) {
    if (!restoreRunsTooMany(source.runs.length, free)) return false;
    if (!restoreCopyPays(fits, differingList(target.runs, source.runs).pages, target.pages)) return false;
  }
  e.prepare(target);
  const diff = differingList(target.runs, source.runs).toArray();
  const page = e.pageSize;
  if (!always && !restoreCopyPays(fits, pageCount(diff), target.pages)) return false;
  if (always && pageCount(diff) * page > e.availableMemory() / 2) {
    throw systemError('mmap', sys.ENOMEM, `restoring this segment needs ${pageCount(diff) * page} bytes of copies; the machine does not have them free`);
  }
  // Pages on a virtual layer are in their segment's memory alone (its
  // pinned private copies, Layer.virtual): the source's are copied from
  // its memory, and the target's own, which the copy overwrites, are kept
  // aside until it is done. (Freezing the target just now may have moved
  // the source's pages there.)
  const { files, memory } = byStore(selectIn(source.runs, diff));
  const pins = intersect(diff, pinned(target));
  const kept = byStore(selectIn(target.runs, pins));
  const aside = kept.memory.map((r) => ({ r, bytes: memoryOf(target, r, page).slice() }));
  try {
    // Safety: the runs lie inside the target's own mapping, and the source's
    // pages in memory inside its own, which is mapped (it has pinned pages).
    readRuns(page, target.addr, files);
    for (const r of memory) memoryOf(target, r, page).set(memoryOf(source, r, page));
  } catch (err) {
    // Only the target's private copies of `diff` changed: dropping them
    // reverts those pages to its run list, which is what it read before;
    // pinned ones are read back from it, or from aside, instead.
    for (const r of subtract(diff, pins)) sys.madvise(target.addr + BigInt(r.start * page), (r.end - r.start) * page, sys.MADV_DONTNEED);
    readRuns(page, target.addr, kept.files);
    for (const a of aside) memoryOf(target, a.r, page).set(a.bytes);
    throw err;
  }
  return true;
}

/** Whether `runs` name a virtual layer anywhere (Layer.virtual). */
function showsVirtual(runs: Runs): boolean {
  for (let i = 0; i < runs.length; i++) {
    const layer = runs.layers[i]!;
    if (layer !== null && !layer.hasFile) return true;
  }
  return false;
}

/** Runs whose pages a file holds (or anonymous: zeros), and runs on a virtual layer, whose pages are in memory alone. */
function byStore(runs: Run<Layer | null>[]): { files: Run<Layer | null>[]; memory: Run<Layer | null>[] } {
  const memory = runs.filter((r) => r.layer !== null && !r.layer.hasFile);
  return { files: memory.length === 0 ? runs : runs.filter((r) => r.layer === null || r.layer.hasFile), memory };
}

/** The memory of the mapped `seg` under the pages of `r`. */
function memoryOf(seg: LinuxSegment, r: Range, pageSize: number): Uint8Array {
  // Safety: the range lies inside the segment's own mapping; callers use the view at once.
  return new Uint8Array(sys.view(seg.addr + BigInt(r.start * pageSize), (r.end - r.start) * pageSize));
}

/**
 * Drops the pages `seg` wrote since its run list was set (madvise(2),
 * MADV_DONTNEED): each private page then reads its layer's contents again.
 * False, changing nothing, where it has more pinned pages than a restore
 * reads aside (dropPinned).
 */
function dropWritten(e: Engine, seg: LinuxSegment): boolean {
  const { written, present } = e.scanner.forDrop(seg.addr, seg.pages);
  if (written.length === 0) return true;
  const pins = pinned(seg);
  if (pins.length > 0) return dropPinned(e, seg, written, pins);
  // Dropping only the written pages keeps the pages read since mapped, so
  // reading them again costs nothing; but each scan walks every page in
  // memory, and those pile up. Once the scans since the last full drop
  // have walked DROP_ALL_AFTER times the pages in memory now, dropping
  // them all (one madvise; the pages read again fault back in, about
  // 1/DROP_ALL_AFTER of a scan's cost per page at 16 pages a fault) costs
  // less than scanning on: at most twice the best choice made in hindsight.
  seg.scanned += present;
  const all = seg.scanned >= DROP_ALL_AFTER * present;
  // Dropping is idempotent, and every private page of the segment is to go:
  // a vectored call that fails or stops midway is redone over the whole range.
  if (!all && written.length <= UIO_MAXIOV && e.dropper.ranges(seg.addr, RangeList.from(written))) return true;
  sys.madvise(seg.addr, seg.length, sys.MADV_DONTNEED);
  seg.scanned = 0;
  return true;
}

/** Most bytes of pinned pages a fast restore reads aside; beyond, restore maps the source instead. */
const PINNED_ASIDE = 256 * 2 ** 20;

/**
 * dropWritten for a segment with pinned pages (engine.ts), which must not be
 * dropped: the others are, and the pinned ones are given back what their
 * run list holds, read aside first (pread) so that a failed read changes
 * nothing. False, changing nothing, beyond PINNED_ASIDE bytes of them.
 */
function dropPinned(e: Engine, seg: LinuxSegment, written: readonly Range[], pins: readonly Range[]): boolean {
  const page = e.pageSize;
  if (pageCount(pins) * page > PINNED_ASIDE) return false;
  const aside = selectIn(seg.runs, pins).map((r) => {
    const bytes = new Uint8Array((r.end - r.start) * page);
    if (r.layer !== null) readAside(r.layer.fd, bytes, r.layer.filePage(r.start) * page);
    return { at: seg.addr + BigInt(r.start * page), bytes };
  });
  e.dropper.rangesEach(seg.addr, RangeList.from(subtract(written, pins)));
  // Safety: the pinned pages lie inside the segment's own mapping.
  for (const { at, bytes } of aside) new Uint8Array(sys.view(at, bytes.length)).set(bytes);
  return true;
}

/** restore() where mremap cannot move several mappings: map over the target, putting it back on failure. */
function restoreInPlace(e: Engine, target: LinuxSegment, source: LinuxSegment): void {
  // Mapping the source's runs takes one call per run. If one fails midway,
  // the target must be put back, so its written pages go into a layer first
  // (with a single run the first call replaces everything or nothing).
  if (target.shared === null && source.runs.length > 1) {
    const dirty = coalesce(scanWritten(e, target), JOIN_GAP);
    e.ensureRoom(2 * dirty.length, target.pages);
    freeze(e, target, dirty, dirty, (length) => e.layers.newLayer(length));
  }
  e.ensureRoom(source.runs.length - target.maps.length, target.pages);
  const old = target.runs;
  const oldShared = target.shared;
  // A MAP_FIXED mmap that fails leaves the old mapping in place, so the
  // target needs putting back only once the first call has gone through.
  let touched = false;
  try {
    mapRuns(e.pageSize, target.addr, source.runs, target.length, () => (touched = true));
  } catch (err) {
    if (touched) putBack(e, target, oldShared, old);
    throw err;
  }
  target.shared = null;
  setRuns(e, target, source.runs);
}

/** After a failed restore: maps the target's old state back. */
function putBack(e: Engine, seg: LinuxSegment, shared: Layer | null, runs: Runs): void {
  try {
    if (shared !== null) {
      mapShared(seg.addr, seg.length, shared.fd);
    } else {
      mapRuns(e.pageSize, seg.addr, runs, seg.length);
    }
  } catch (err) {
    // The target's mapping is now a mix of old and new runs that no
    // bookkeeping describes; only a second failure in a row gets here.
    const failure = err instanceof SegmentError ? err : undefined;
    throw new SegmentError(
      `restore could not put the target back after a failure: ${(err as Error).message}`,
      failure?.code ?? 'EIO',
      failure?.errno,
      failure?.syscall,
    );
  }
}
