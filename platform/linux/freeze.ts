// Freezing: bringing a segment's written pages into layers, so its run list
// describes its contents and a clone or restore can share them. A fresh
// segment is first made private (its page tables moved aside); written pages
// whose layer page nobody else maps are written in place, their old contents
// evicted to a history layer for the run lists that still need them (or,
// where every other user maps them, left in those users' private copies, or
// copied once to a history layer that two or more of them map);
// the rest are written into a new (or reused) layer and remapped from it.
// A segment that rewrites the same pages round after round under snapshots
// nobody maps freezes them deferred instead: the new contents are copied
// into a new layer for the clone, the old ones stay where the snapshots
// read them, and the segment keeps its private copies (pinned), its later
// rewrites told apart by write tracking (track.ts).
import { clipSpans, coalesce, intersectList, listsUnder, overlapPages, pagesOfSpans, RangeList, sameCounts, subtract, subtractList, selectIn, unionList, unionPages, type Packing, type Range, type RefCounts, type Run, type SpanList } from '../../src/runs.ts';
import { HOLE_MIN_PAGES, privatizeWorth, rebasePays, SHARE_MIN_SHOWN, shareRoom, shareWorth, worthwhileHoles } from './cost.ts';
import { pinnedList, pointAt, replace, scanWritten, type Engine, type LinuxSegment } from './engine.ts';
import * as sys from '../libc.ts';
import { Layer, type MakeLayer, type Runs } from './layers.ts';
import { mapPrivate, mapRange } from './mapper.ts';
import { moveAside } from './move-aside.ts';
import { copyPages, UIO_MAXIOV } from './writer.ts';

/** Bytes of private copies made without asking the machine how much memory it has free (/proc/meminfo). */
const UNCHECKED_COPY = 16 * 2 ** 20;

/** Old contents evicted to history in ranges at least this long are copied file to file; shorter ones through the layer's window (copyOut). */
const FILE_COPY_LONG = 16;

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
      e.writer.gather(fd, seg.addr, ranges, packing.filePage(ranges.starts[0]!) * e.pageSize, false);
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
 * Makes every mapped segment other than `seg` whose run list has `layer`
 * under `list` take a private copy of those pages (Dropper.privatize), so
 * the layer can be rewritten under them: 'done'. 'refused' where the
 * copies would take more than a quarter of the memory the machine has
 * free, or the kernel refused them (some may have been made: they change
 * no byte); 'rebase', making none, where `seg` should move to a new layer
 * instead (rebasePays, cost.ts).
 */
function privatizeSharers(e: Engine, seg: LinuxSegment, layer: Layer, list: RangeList): 'done' | 'refused' | 'rebase' {
  const sharers = mappedSharers(e, seg, layer, list);
  // As arrays, once a run list.
  const arrays = new Map<RangeList, Range[]>();
  let pages = 0;
  const targets = sharers.map((t) => {
    let ranges = arrays.get(t.pages);
    if (ranges === undefined) arrays.set(t.pages, (ranges = t.pages.toArray()));
    pages += t.pages.pages;
    return { addr: t.seg.addr, ranges };
  });
  // Copies beyond the first of each page are the redundant ones.
  const redundant = targets.length < 2 ? 0 : pages - unionPages([...arrays.values()]);
  // A segment with pinned pages keeps private copies across freezes
  // (deferred): it does not move. A move copies the segment: as private
  // copies, up to UNCHECKED_COPY without asking the machine.
  const affordable = () => seg.length <= UNCHECKED_COPY || seg.length <= e.availableMemory() / 4;
  if (seg.maps === seg.runs && rebasePays(seg.privatized, redundant, seg.pages, affordable)) return 'rebase';
  const bytes = pages * e.pageSize;
  if (bytes > UNCHECKED_COPY && bytes > e.availableMemory() / 4) return 'refused';
  try {
    for (const t of targets) e.dropper.privatize(t.addr, t.ranges, fileMappedUnder(e, t.addr, t.ranges));
  } catch {
    return 'refused';
  }
  seg.privatized += redundant;
  return 'done';
}

/**
 * The mapped segments other than `seg` whose run lists show `layer` under
 * `list`, each with its pages there (segments sharing a run list share
 * the list), newest first. The mapped counts say how many (segment, page)
 * pairs besides `seg`'s show the layer there; once those are found, the
 * other segments are not looked at, their run lists not re-pointed. Newest
 * first: the snapshot cloned last is the one that still shows the pages
 * just rewritten, where older ones took their copies rounds ago (every
 * 2nd page at 256 MiB, 30 snapshots read: re-pointing each cost 3.4 ms a
 * clone).
 */
function mappedSharers(e: Engine, seg: LinuxSegment, layer: Layer, list: RangeList): { seg: LinuxSegment; pages: RangeList }[] {
  let needed = 0;
  const others = layer.mapped.spansIn(list, 1);
  for (let i = 0; i < others.length; i++) needed += others.counts[i]! * (others.ends[i]! - others.starts[i]!);
  const out: { seg: LinuxSegment; pages: RangeList }[] = [];
  const byRuns = new Map<Runs, RangeList>();
  let found = 0;
  for (const other of [...e.segments].reverse()) {
    if (found >= needed) break;
    // Most segments never showed the layer: skipped without re-pointing
    // their run lists (with hundreds kept, that would cost more than the copies).
    if (other === seg || other.released || !other.mapped || !other.mayShow(layer)) continue;
    let on = byRuns.get(other.runs);
    if (on === undefined) {
      on = listsUnder(other.runs, list).get(layer) ?? new RangeList(0);
      byRuns.set(other.runs, on);
    }
    if (on.length === 0) continue;
    out.push({ seg: other, pages: on });
    found += on.pages;
  }
  return out;
}

/**
 * Where two or more mapped segments, and no unmapped one, show layer pages
 * `seg` is about to rewrite in place (shareWorth, cost.ts), copies their old
 * contents once into a history layer and maps it over those pages in each
 * of them, where each would take a private copy (privatizeSharers): a
 * snapshot read at once then costs two mappings a run of pages rewritten
 * under it, not a page each, and the old contents are copied once, as
 * fork() shares one copy between its children. Only while the segments use
 * at most half their mapping budget (shareRoom), and only where two
 * segments or more take part. A segment's pages that may be private copies
 * (its own writes, pinned pages: Scanner.privateIn) are left as they are,
 * for the usual way. Each segment's run list and mapping point at the
 * history as its pages are remapped (pointAt, engine.ts), so that the
 * layer pages every other user left are `seg`'s alone. Returns whether any
 * segment moved.
 *
 * Atomic in content: the history copy reads as the layer page does until
 * `seg` rewrites it, after this. A mapping refused stops the remapping:
 * the pages not remapped stay as they were. A copy that fails throws,
 * having remapped nothing.
 */
function shareHistory(e: Engine, seg: LinuxSegment, layer: Layer, shared: RangeList): boolean {
  const want = shareWorth(layer.refs.spansIn(shared, 1), layer.mapped.spansIn(shared, 1));
  if (want.length === 0) return false;
  const room = shareRoom(e.budget.used, e.budget.limit(0));
  if (room < 2 * SHARE_MIN_SHOWN) return false;
  let sharers = mappedSharers(e, seg, layer, want);
  if (sharers.length < SHARE_MIN_SHOWN) return false;
  // Only what the room can take is scanned: the ranges that fit, counted
  // before the scan as if none of their pages were a segment's own. With
  // little room left, most of a scan went on pages then not remapped
  // (1 GiB, 1% at random, read: 14 ms of a clone for four ranges).
  sharers = cutToRoom(sharers, room);
  if (sharers.length < SHARE_MIN_SHOWN) return false;
  let targets: { seg: LinuxSegment; pages: RangeList }[] = [];
  for (const t of sharers) {
    const own = e.scanner.privateIn(t.seg.addr, coalesce(t.pages.toArray(), WALK_GAP));
    // Where private copies cannot be told apart, none is remapped.
    if (own === null) return false;
    const pages = own.length === 0 ? t.pages : subtractList(t.pages, own);
    if (pages.length > 0) targets.push({ seg: t.seg, pages });
  }
  if (targets.length < SHARE_MIN_SHOWN) return false;
  targets = cutToRoom(targets, room);
  if (targets.length < SHARE_MIN_SHOWN) return false;
  const union = unionOf(targets);
  const bytes = union.pages * e.pageSize;
  if (bytes > UNCHECKED_COPY && bytes > e.availableMemory() / 4) return false;
  let copied = new RangeList(0);
  const history = e.layers.packed(layer.length, union, (fd, packing) => {
    const done = new RangeList(union.length);
    // A failure throws: packed() frees what was copied.
    copyOut(e, layer, fd, packing, union, (batch) => done.append(batch));
    copied = done;
    return done;
  });
  if (history === undefined) return false;
  let moved = false;
  try {
    for (const t of targets) {
      const list = copied.pages === union.pages ? t.pages : intersectList(t.pages, copied);
      // Their entries dropped first, in a few calls: replacing a mapping
      // that has entries flushes them from every core running another
      // thread of the process, a call at a time (13.5 µs a single-page
      // mapping against about 5, measured here). None is a private copy.
      e.dropper.ranges(t.seg.addr, list);
      let n = 0;
      try {
        // Safety: each range shows the same bytes from the history copy as
        // from the layer, which nobody has rewritten yet, and holds no
        // private copy (Scanner.privateIn).
        for (; n < list.length; n++) mapRange(e.pageSize, t.seg.addr, { start: list.starts[n]!, end: list.ends[n]! }, history);
      } finally {
        if (n > 0) {
          pointAt(e, t.seg, n === list.length ? list : list.slice(0, n), history, true);
          moved = true;
        }
      }
    }
  } catch {
    // A mapping refused (the process's limit, or memory): the pages not
    // remapped are privatized or moved the usual way.
  } finally {
    // History pages no segment points at are freed (a packed file outlives its layers).
    for (const r of history.refs.unusedIn(copied).toArray()) e.layers.punch(history, r);
    if (history.refs.empty) e.layers.close(history);
  }
  return moved;
}

/** The union of the targets' pages. */
function unionOf(targets: readonly { pages: RangeList }[]): RangeList {
  let union = targets[0]!.pages;
  for (const t of targets.slice(1)) union = unionList(union, t.pages);
  return union;
}

/**
 * The targets cut to the first ranges of their union that `room`
 * mappings can take (roomyPrefix), those left with no page dropped.
 */
function cutToRoom<T extends { pages: RangeList }>(targets: T[], room: number): T[] {
  const union = unionOf(targets);
  const cut = roomyPrefix(union, targets, room);
  if (cut === union.length) return targets;
  const kept = union.slice(0, cut);
  return targets.map((t) => ({ ...t, pages: intersectList(t.pages, kept) })).filter((t) => t.pages.length > 0);
}

/**
 * How many of the first ranges of `union` the `targets` can have remapped
 * within `room` mappings, two for each of their ranges in them (each
 * target's pages are among `union`'s, each of its ranges inside one of
 * `union`'s).
 */
function roomyPrefix(union: RangeList, targets: readonly { pages: RangeList }[], room: number): number {
  const cost = new Int32Array(union.length);
  for (const t of targets) {
    const { starts, length } = t.pages;
    let u = 0;
    for (let i = 0; i < length; i++) {
      while (union.ends[u]! <= starts[i]!) u++;
      cost[u]! += 2;
    }
  }
  let used = 0;
  for (let u = 0; u < union.length; u++) {
    used += cost[u]!;
    if (used > room) return u;
  }
  return union.length;
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

/**
 * Pages this close together are found in one walk of the page table
 * (Scanner.fileMapped), farther apart in one call each: a call costs
 * about what walking 40 to 80 entries does (from Node.js here, warm: 1.7
 * to 2.1 µs a call, 23 to 41 ns an entry walked).
 */
const WALK_GAP = 64;

/**
 * The pages under the sorted `ranges` of the mapping at `addr` whose
 * entries map their file's page (Scanner.fileMapped); none where that
 * cannot be learned. Pages a segment wrote since its last freeze are
 * private: never among them.
 */
function fileMappedUnder(e: Engine, addr: bigint, ranges: readonly Range[]): RangeList {
  const list = RangeList.from(ranges);
  let found: RangeList;
  try {
    found = e.scanner.fileMapped(addr, coalesce(ranges, WALK_GAP));
  } catch {
    return new RangeList(0);
  }
  return intersectList(list, found);
}

/**
 * Points every segment other than `seg` that uses `layer`'s pages under
 * `ranges` elsewhere, so that afterwards only `seg` uses them, and hands
 * them to `settle` as they become its alone. Where some of those segments
 * are not mapped (run lists only), the old contents are copied into a
 * history layer, file to file or through the layer's window, and they are
 * pointed there. Where every one of them is mapped, each holds a private
 * copy of these pages (privatizeSharers), pinned from then on (their
 * mappings still show `layer`): those copies are the old contents, and
 * they are pointed at a virtual layer, a name for them with no file
 * (Layer.virtual).
 *
 * The copies go in batches, each settled before the next is copied: the
 * private copies a batch frees are what the next batch of history takes,
 * so a clone needs the history beside one batch of private copies, not
 * beside all of them (and at 4 GiB, every 8th page, kept: 1.7 to 1.1 s a
 * clone, measured). Where the kernel will not copy between memory files,
 * nothing moves. A failure stops the
 * copies: what was copied stays moved (its old contents are in history, so
 * every segment reads as before), the rest stays where it was, and the
 * failure is thrown.
 */
function evict(e: Engine, seg: LinuxSegment, layer: Layer, ranges: RangeList, settle: (rs: RangeList) => void): void {
  if (!e.features.fileCopy) return;
  // Every user of these pages but `seg` moves: their counts move at once,
  // by span, and their run lists when next read (moves.ts).
  const users = othersIn(layer.refs, ranges);
  const mapped = othersIn(layer.mapped, ranges);
  const virtualRanges = sameCounts(users, mapped);
  const real = virtualRanges.length === 0 ? ranges : subtractList(ranges, virtualRanges);
  // Packed: a history layer holds these pages only, one after another, in
  // a recent packed file where they fit (LayerStore.packed).
  let history: Layer | null = null;
  const copied = new RangeList(real.length);
  let failure: { err: unknown } | undefined;
  try {
    if (real.length > 0) {
      history =
        e.layers.packed(layer.length, real, (fd, packing) => {
          try {
            copyOut(e, layer, fd, packing, real, (batch) => {
              copied.append(batch);
              settle(batch);
            });
          } catch (err) {
            failure = { err };
          }
          return copied;
        }) ?? null;
    }
  } catch (err) {
    failure ??= { err };
  }
  // Whatever was copied moves, the virtual ranges too: their other users
  // hold private copies, whatever happens to the layer.
  const moved = history === null ? virtualRanges : unionList(virtualRanges, copied);
  const before = e.moves.epoch;
  // `seg` reads its run list now, before the entries that must not apply to it.
  void seg.runs;
  const moveTo = (to: Layer, within: RangeList) => {
    const movedUsers = clipSpans(users, within);
    if (movedUsers.length === 0) return;
    to.refs.addEach(movedUsers, 1);
    to.mapped.addEach(clipSpans(mapped, within), 1);
    e.moves.push(layer, to, pagesOfSpans(movedUsers));
  };
  if (history !== null) moveTo(history, copied);
  if (virtualRanges.length > 0) moveTo(Layer.virtual(layer.length), virtualRanges);
  const all = moved.pages === ranges.pages;
  layer.refs.addEach(all ? users : clipSpans(users, moved), -1);
  layer.mapped.addEach(all ? mapped : clipSpans(mapped, moved), -1);
  if (e.moves.epoch !== before) {
    seg.passed(before);
    let oldest = e.moves.epoch;
    for (const other of e.segments) if (!other.released) oldest = Math.min(oldest, other.epoch);
    e.moves.trim(oldest);
  }
  if (history !== null && history.refs.empty) e.layers.close(history);
  if (failure !== undefined) throw failure.err;
  // Theirs to rewrite now: no other segment uses them.
  settle(virtualRanges);
}

/** Pages of history copied between two settlements (evict): 4 MiB of 4 KiB pages. */
const BATCH_PAGES = 1024;

/**
 * Copies the pages under `ranges` of `from` into file `to`, where `packing`
 * says they go: one after another, in page order, handing each batch of
 * ranges copied to `copied` in that order. Short ranges go through
 * `from`'s moved-aside mapping where the segment writes through it (so the
 * pages it rewrites have page-table entries there), each stretch of them
 * between two long ones, up to a batch, in one Writer.gather (a few calls
 * for up to UIO_MAXIOV ranges) handed on whole: a call per page costs more
 * than the copy, and so does any work per range beyond the iovec (the
 * first clones of a process run this before the JIT has compiled it).
 * Where the window has an entry for every page (Layer.windowFull), the
 * gather is a pwritev, else through the pipe, which finds missing entries
 * without a fault (256 MiB filled, 1% of pages at random: 655 pages 1.1 ms
 * by pwritev, 1.5 through the pipe, and the pipe's time varies more).
 * Long ranges, and all of them without a window, go file to file: no page
 * is read through a mapping, where one without a page-table entry would
 * fault in (a hole of the layer would even be allocated). Stops early
 * where the kernel will not copy between memory files and there is no
 * window.
 */
function copyOut(e: Engine, from: Layer, to: number, packing: Packing, ranges: RangeList, copied: (batch: RangeList) => void): void {
  const page = e.pageSize;
  const window = e.windowCopy ? from.window : 0n;
  const { starts, ends } = ranges;
  // Long ranges copied file to file, not yet handed on: a batch at a time.
  let done = new RangeList(16);
  let donePages = 0;
  const hand = (force: boolean) => {
    if (done.length === 0 || (!force && done.length < UIO_MAXIOV && donePages < BATCH_PAGES)) return;
    const batch = done;
    done = new RangeList(16);
    donePages = 0;
    copied(batch);
  };
  // Ranges i to j - 1 through the window, in one Writer.gather; handed on
  // after what was copied before them.
  const viaWindow = (list: RangeList) => {
    e.writer.gather(to, window, list, packing.filePage(list.starts[0]!) * page, !from.windowFull);
    hand(true);
    copied(list);
  };
  const short = (i: number) => window !== 0n && (ends[i]! - starts[i]! < FILE_COPY_LONG || !e.features.fileCopy);
  // A failure throws: what was copied and not handed on is left out, as if
  // never copied (nothing points to it yet).
  for (let i = 0; i < ranges.length; ) {
    if (short(i)) {
      let j = i;
      let pages = 0;
      while (j < ranges.length && j - i < UIO_MAXIOV && pages < BATCH_PAGES && short(j)) {
        pages += ends[j]! - starts[j]!;
        j++;
      }
      viaWindow(ranges.slice(i, j));
      i = j;
      continue;
    }
    const re = ends[i]!;
    for (let start = starts[i]!; start < re; start += BATCH_PAGES) {
      const end = Math.min(re, start + BATCH_PAGES);
      if (copyPages(e.features, page, from, { start, end }, to, packing.filePage(start))) {
        done.push(start, end);
        donePages += end - start;
        hand(false);
        continue;
      }
      if (window === 0n) {
        hand(true);
        return;
      }
      // Refused (and from then on): through the window.
      const part = new RangeList(1);
      part.push(start, end);
      viaWindow(part);
    }
    i++;
  }
  hand(true);
}

/** Whether sorted by start, each range after the one before. */
function ascending(ranges: readonly Range[]): boolean {
  for (let i = 1; i < ranges.length; i++) if (ranges[i]!.start < ranges[i - 1]!.end) return false;
  return true;
}

/** The counts over `ranges` less the one segment that evicts: what moves. */
function othersIn(counts: RefCounts, ranges: RangeList): SpanList {
  return counts.spansIn(ranges, 1);
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
