// Freezing: bringing a segment's written pages into layers, so its run list
// describes its contents and a clone or restore can share them. A fresh
// segment is first made private (its page tables moved aside); written pages
// whose layer page nobody else maps are written in place, the old contents
// of those other segments still read moved out of the way first
// (history.ts); the rest are written into a new (or reused) layer and
// remapped from it. A segment that rewrites the same pages round after
// round under snapshots nobody maps freezes them deferred instead: the new
// contents are copied into a new layer for the clone, the old ones stay
// where the snapshots read them, and the segment keeps its private copies
// (pinned), its later rewrites told apart by write tracking (track.ts).
import { intersectList, listsUnder, overlapPages, RangeList, subtract, subtractList, selectIn, unionList, type Range, type Run } from '../../src/runs.ts';
import { HOLE_MIN_PAGES, privatizeWorth, worthwhileHoles } from './cost.ts';
import { pinnedList, pointAt, replace, scanWritten, type Engine, type LinuxSegment } from './engine.ts';
import * as sys from '../libc.ts';
import type { Layer, MakeLayer } from './layers.ts';
import { mapPrivate, mapRange } from './mapper.ts';
import { moveAside } from './move-aside.ts';
import { copyPages } from './writer.ts';
import { evict, privatizeSharers, shareHistory } from './history.ts';

/** Clean runs at least this long are copied file to file when freezing; shorter ones through memory. */
const FILE_COPY_MIN = 1;

/** Whether memory file `fd` has every byte of its `length` allocated; false where that cannot be told. */
function hasNoHole(fd: number, length: number): boolean {
  try {
    return sys.allocatedBytes(fd) >= length;
  } catch {
    return false;
  }
}

/**
 * Turns a fresh MAP_SHARED segment into a private mapping of its layer, at
 * the same address, so the layer can be shared. Contents are unchanged at
 * every step; afterwards the layer is never written again.
 */
export function makePrivate(e: Engine, seg: LinuxSegment): void {
  const layer = seg.shared;
  if (layer === null) return;
  // Looked for first: a failure here changes nothing. A file with every
  // page allocated (one fstat) has none; else they are searched for (an
  // lseek a stretch: 0.4 ms of a first clone's 0.8 at 256 MiB, written
  // whole). A layer found without any before has none now, unless a page
  // was punched since (a segment shared again, reshare.ts, comes back here).
  const full = hasNoHole(layer.fd, seg.length);
  const holes = e.zeroPage && !layer.noLongHoles && !full ? worthwhileHoles(e.layers.longHoles(layer.fd, seg.pages, HOLE_MIN_PAGES)) : [];
  layer.noLongHoles = holes.length === 0;
  // Replacing a mapping tears down its page-table entries one by one (a
  // quarter of a microsecond or more each: most of a first clone's cost).
  // Moved aside first, they go with the layer instead.
  moveAside(seg.addr, seg.length, layer, e.pageSize, e.features, e.budget, e.windows);
  layer.windowFull = layer.window !== 0n && full;
  // Safety: MAP_FIXED over the segment's own whole mapping; views alias the
  // same addresses and read the same bytes before and after.
  mapPrivate(seg.addr, seg.length, layer.fd);
  seg.shared = null;
  // Never-written ranges become anonymous memory, which reads as the zero
  // page without allocating (reading a memfd hole allocates a page). Each
  // costs up to two mappings, in this segment and every clone that inherits
  // its run list, so only the largest few are worth it, and only within the
  // budget; the rest stay on the layer (same contents: reading them
  // allocates, the documented cost). If a mapping fails, that range simply
  // stays on the layer too.
  // A hole adds two mappings here and two in the clone being made: take at
  // most an eighth of the free budget, so the clone never forces a compaction.
  const most = Math.floor((e.budget.limit(0) - e.budget.used) / 8);
  const done: Range[] = [];
  for (const h of holes) {
    if (done.length >= most) break;
    try {
      mapRange(e.pageSize, seg.addr, h, null);
    } catch {
      break;
    }
    done.push(h);
  }
  if (done.length > 0) replace(e, seg, done.sort((a, b) => a.start - b.start), null);
}

/**
 * Moves the pages `seg` wrote since its last freeze (`dirty`, and of them
 * `written` the ones really written) into a new layer and remaps them from
 * it, so its run list describes its contents exactly. Atomic in content:
 * each step leaves every page reading as before. A new layer comes from
 * `newLayer`.
 */
export function freeze(e: Engine, seg: LinuxSegment, dirty: readonly Range[], written: readonly Range[], newLayer: MakeLayer): void {
  if (dirty.length === 0) return;
  const reused = e.layers.reusable(seg.length, dirty);
  const layer = reused ?? newLayer(seg.length);
  const done: Range[] = [];
  try {
    fill(e, layer, seg, dirty, written);
    // Safety: each remap covers pages of the segment's own mapping with a
    // layer holding exactly their current bytes.
    for (const r of dirty) {
      mapRange(e.pageSize, seg.addr, r, layer);
      done.push(r);
    }
  } finally {
    // Whatever was remapped is now in the layer; the rest stays private.
    if (done.length > 0) {
      replace(e, seg, done, layer);
      for (const r of subtract(dirty, done)) e.layers.punch(layer, r);
    } else if (reused === undefined) {
      e.layers.close(layer);
    } else {
      for (const r of dirty) e.layers.punch(layer, r);
    }
  }
}

/**
 * Freezes the written pages of `seg` whose layer page no other segment
 * uses by writing them into that page, then dropping the private copy: the
 * run list stays as it is, so nothing is remapped and no run is added.
 * Safe because a private mapping shows a file change only at pages it has
 * not copied, and the segment has copied exactly these; no other mapping
 * of these layer pages exists. Returns the written ranges left over (on
 * anonymous runs, pinned, or on layer pages another segment shares and
 * that could not be moved out of its way).
 *
 * Where `dirty` is exact (pages written since the last freeze, not every
 * private page: writtenForFreeze), written pinned pages are frozen too
 * (freezePinned). With `defer`, written pages on layer pages that only
 * unmapped segments share are frozen without touching those
 * (deferFreeze): their contents go to a new packed layer and the segment
 * keeps its private copies, pinned (only where writes are tracked, its
 * later scans telling which it rewrites, and where every page of `dirty`
 * is a private copy).
 *
 * Returns the pages left over, how many written pages were on layer
 * pages only unmapped segments share besides, or pinned and frozen
 * deferred, and whether the segment should move to a new layer rather
 * than have read snapshots copy the pages left (rebase).
 *
 * A failure leaves the segment reading as before: its private copies stay
 * until dropped, and the layer pages changed are its alone.
 */
export function freezeInPlace(
  e: Engine,
  seg: LinuxSegment,
  dirty: RangeList,
  mode: { exact: boolean; defer: boolean },
): { left: Range[]; unmappedShared: number; rebase: boolean } {
  let unmappedShared = 0;
  let rebaseNext = false;
  const result = (left: Range[]) => ({ left, unmappedShared, rebase: rebaseNext });
  if (dirty.length === 0) return result([]);
  const defer = mode.defer;
  // A pinned page's mapping shows another layer than its run list: dropping
  // its private copy would show that one. freeze() remaps it instead, or,
  // deferring, it is settled below.
  const pins = pinnedList(seg);
  const candidates = pins.length === 0 ? dirty : subtractList(dirty, pins);
  // What was settled, each list in page order.
  const owned: RangeList[] = [];
  let ownedPages = 0;
  if (mode.exact && pins.length > 0) {
    // Pinned pages whose run list names a virtual layer (evict) are in no
    // file: frozen from memory like the ones written since.
    let written = intersectList(dirty, pins);
    for (const [layer, under] of listsUnder(seg.runs, pins)) if (layer !== null && !layer.hasFile) written = unionList(written, under);
    const { done, deferred } = freezePinned(e, seg, written, subtractList(pins, written));
    owned.push(done);
    // Counted among `dirty`'s only (virtual ones may not be).
    ownedPages += overlapPages(done, dirty);
    unmappedShared += deferred;
  }
  for (const [layer, ranges] of listsUnder(seg.runs, candidates)) {
    if (layer === null) continue;
    // Safety: only `seg` maps these layer pages, and it holds private copies
    // of them; once written, its private copies may go: each reads the same
    // from the layer. Only these may go: its other private pages are in no
    // layer yet.
    const settle = (rs: RangeList): void => {
      if (rs.length === 0) return;
      writeInPlace(e, layer, seg, rs);
      e.dropper.rangesEach(seg.addr, rs);
      owned.push(rs);
      ownedPages += rs.pages;
    };
    const alone = layer.refs.listWithCount(ranges, 1);
    // First the pages only `seg` uses: the memory their private copies
    // free is what the history copies below take next.
    settle(alone);
    if (alone === ranges) continue;
    // Pages other segments use: their old contents move to a history layer,
    // with those segments' run lists, and then they are `seg`'s alone. The
    // segment keeps its one mapping however scattered its writes; the old
    // contents are copied once, as fork() would. Segments that map those
    // pages take a private copy of each first (pinned pages, engine.ts),
    // where the copies cost less than the mappings a new run would
    // (privatizeWorth, cost.ts); where they are all the users, their
    // copies are the old contents and nothing is copied to history (evict).
    // Where two or more of them show a page, and no unmapped one, they may
    // map one history copy of it between them instead (shareHistory). The
    // other pages go to a new layer (freeze).
    let shared = subtractList(ranges, alone);
    if (shared.length === 0) continue;
    if (e.privatize && e.shareHistory && shareHistory(e, seg, layer, shared)) {
      const moved = layer.refs.listWithCount(shared, 1);
      settle(moved);
      if (moved === shared) continue;
      shared = subtractList(shared, moved);
    }
    const unmappedOnly = layer.mapped.listWithCount(shared, 1);
    unmappedShared += unmappedOnly.pages;
    if (defer) {
      // Left where they are for the segments that read them; the clone
      // takes a copy of the new contents (fork() copies once too, later).
      const done = deferFreeze(e, seg, unmappedOnly);
      owned.push(done);
      ownedPages += done.pages;
      if (unmappedOnly === shared) continue;
    }
    if (!e.features.fileCopy) continue;
    // Deferring, the pages other mapped segments show are rewritten in
    // place as before: a clone of them read at once would take a private
    // copy of each page the new layer holds, twice fork()'s memory.
    let movable = defer ? new RangeList(0) : unmappedOnly;
    if (unmappedOnly !== shared && e.privatize && !rebaseNext) {
      const mappedToo = RangeList.from(privatizeWorth(layer.mapped.spansIn(subtractList(shared, unmappedOnly)).toArray()));
      const verdict = mappedToo.length > 0 ? privatizeSharers(e, seg, layer, mappedToo) : 'refused';
      if (verdict === 'done') movable = unionList(movable, mappedToo);
      // Left as they are: the segment moves to a new layer instead (prepare.ts).
      else if (verdict === 'rebase') rebaseNext = true;
    }
    if (movable.length > 0) evict(e, seg, layer, movable, settle);
  }
  if (ownedPages === 0) return result(dirty.toArray());
  // Each page is settled once, and all of them are among `dirty`'s.
  if (ownedPages === dirty.pages) return result([]);
  const settled: Range[] = [];
  for (const list of owned) for (const r of list.toArray()) settled.push(r);
  if (!ascending(settled)) settled.sort((a, b) => a.start - b.start);
  return result(subtract(dirty.toArray(), settled));
}

/**
 * Freezes written pages of `seg` without writing any layer page: their
 * current contents are copied from the segment's memory into a new packed
 * layer (LayerStore.packed), its run list points there, and its mapping
 * keeps the private copies, which hold exactly that (pinned pages,
 * engine.ts). The layer pages the mapping shows there stay as they are for
 * whoever else reads them, mapped or not, so nobody takes a copy, nothing
 * moves to history, no mapping is added. The segment's next writes to
 * these pages cost no copy-on-write; a WriteTracker tells which it
 * rewrote (track.ts). Returns the ranges frozen: all of them, or none,
 * throwing, where the copy failed (the segment then reads as before).
 */
function deferFreeze(e: Engine, seg: LinuxSegment, ranges: RangeList): RangeList {
  if (ranges.length === 0) return ranges;
  let failure: { err: unknown } | undefined;
  const layer = e.layers.packed(seg.length, ranges, (fd, packing) => {
    try {
      e.writer.gather(fd, seg.addr, ranges, packing.filePage(ranges.starts[0]!) * e.pageSize, 'own');
      return ranges;
    } catch (err) {
      failure = { err };
      return new RangeList(0);
    }
  });
  if (failure !== undefined) throw failure.err;
  if (layer === undefined) return new RangeList(0);
  // The mapping shows what it showed; the run list, the new layer.
  pointAt(e, seg, ranges, layer);
  return ranges;
}

/**
 * Freezes the pinned pages of `seg`, `written` (since the last freeze) and
 * `clean` (the rest): where no segment uses the layer page its mapping
 * shows any more (the snapshots that read it are gone), the private copy
 * is written into that page, the run list points there and the copy is
 * dropped, so the page is no longer pinned and its memory is freed; the
 * other written ones with deferFreeze. Returns the written ranges frozen,
 * and how many pages of them were deferred.
 */
function freezePinned(e: Engine, seg: LinuxSegment, written: RangeList, clean: RangeList): { done: RangeList; deferred: number } {
  let done = new RangeList(0);
  let rest = written;
  for (const [layer, under] of listsUnder(seg.maps, unionList(written, clean))) {
    // A layer closed since (no run list used it any more) has no file to write.
    if (layer === null || !layer.hasFile) continue;
    const free = layer.refs.unusedIn(under);
    if (free.length === 0) continue;
    // Safety: no run list uses these layer pages, and the only mapping
    // that shows them, this segment's, holds private copies there. (A
    // packed layer's file never gives its pages to another layer.)
    writeInPlace(e, layer, seg, free);
    replace(e, seg, free.toArray(), layer);
    e.dropper.rangesEach(seg.addr, free);
    const freed = subtractList(free, clean);
    done = unionList(done, freed);
    rest = subtractList(rest, freed);
  }
  const deferred = deferFreeze(e, seg, rest);
  return { done: unionList(done, deferred), deferred: deferred.pages };
}

/**
 * Writes the memory of `seg` under `ranges` into `layer`, each page at its
 * own place there: through the layer's moved-aside mapping where it has one
 * (only a segment's own layer does, never a packed one), else through the
 * writer (a pipe, or pwrite).
 */
function writeInPlace(e: Engine, layer: Layer, seg: LinuxSegment, ranges: RangeList): void {
  if (layer.window !== 0n && e.windowCopy) e.writer.toWindow(layer, seg.addr, ranges);
  else e.writer.write(layer, seg.addr, ranges.toArray());
}

/**
 * Moves `seg` to a new layer (rebasePays, cost.ts): its whole contents
 * written into one (its written pages from memory, the rest file to file)
 * and remapped from it, as a freeze of the whole segment. The layer it
 * leaves is then only its snapshots', never rewritten again. Atomic in
 * content, like any freeze; throws where it could not be done, changing
 * nothing any segment reads.
 */
export function rebase(e: Engine, seg: LinuxSegment): void {
  try {
    // One mapping over the whole segment replaces what it had: no room needed.
    freeze(e, seg, [{ start: 0, end: seg.pages }], scanWritten(e, seg), (length) => e.layers.newLayer(length));
  } finally {
    // Counted afresh either way: after a failure (no descriptor for a new
    // layer, say), the next freezes take private copies as before.
    seg.privatized = 0;
  }
}

/** Whether sorted by start, each range after the one before. */
function ascending(ranges: readonly Range[]): boolean {
  for (let i = 1; i < ranges.length; i++) if (ranges[i]!.start < ranges[i - 1]!.end) return false;
  return true;
}

/**
 * Writes the current bytes of `seg` under `ranges` into `layer` at the same
 * offsets. Written pages come from the segment's memory. Long stretches it
 * has not written since its last freeze are copied from the layer they map,
 * file to file inside the kernel: reading them through the mapping would
 * fault each one in first.
 */
function fill(e: Engine, layer: Layer, seg: LinuxSegment, ranges: readonly Range[], written: readonly Range[]): void {
  const fromLayers = e.features.fileCopy
    ? selectIn(seg.runs, subtract(ranges, written)).filter(
        // A virtual layer has no file: its pages are the segment's memory.
        (r): r is Run<Layer> => r.layer !== null && r.layer !== layer && r.layer.hasFile && r.end - r.start >= FILE_COPY_MIN,
      )
    : [];
  e.writer.write(layer, seg.addr, subtract(ranges, fromLayers));
  for (const [i, r] of fromLayers.entries()) {
    if (!copyPages(e.features, e.pageSize, r.layer, r, layer.fd, r.start)) {
      // Refused outright (a kernel or sandbox without it for memory files):
      // the rest goes through memory, now and from then on.
      e.writer.write(layer, seg.addr, fromLayers.slice(i));
      return;
    }
  }
}
