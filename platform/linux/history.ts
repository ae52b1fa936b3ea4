// Old contents out of the way: before a segment rewrites layer pages in
// place (freeze.ts), every other segment that still reads those pages is
// given them elsewhere. Run lists nobody maps point at a history layer the
// old contents are copied into, once (evict); mapped segments take private
// copies of them (privatizeSharers), or, two or more to a page, map one
// history copy between them while the mapping budget has room
// (shareHistory). Copies go file to file, or through the layer's
// moved-aside mapping (copyOut).
import { clipSpans, coalesce, intersectList, listsUnder, pagesOfSpans, RangeList, sameCounts, subtractList, unionList, unionPages, type Packing, type Range, type RefCounts, type SpanList } from '../../src/runs.ts';
import { rebasePays, SHARE_MIN_SHOWN, shareRoom, shareWorth } from './cost.ts';
import { pointAt, type Engine, type LinuxSegment } from './engine.ts';
import { Layer, type Runs } from './layers.ts';
import { mapRange } from './mapper.ts';
import { copyPages, UIO_MAXIOV } from './writer.ts';

/** Bytes of private copies made without asking the machine how much memory it has free (/proc/meminfo). */
const UNCHECKED_COPY = 16 * 2 ** 20;

/** Old contents evicted to history in ranges at least this long are copied file to file; shorter ones through the layer's window (copyOut). */
const FILE_COPY_LONG = 16;

/**
 * Makes every mapped segment other than `seg` whose run list has `layer`
 * under `list` take a private copy of those pages (Dropper.privatize), so
 * the layer can be rewritten under them: 'done'. 'refused' where the
 * copies would take more than a quarter of the memory the machine has
 * free, or the kernel refused them (some may have been made: they change
 * no byte); 'rebase', making none, where `seg` should move to a new layer
 * instead (rebasePays, cost.ts).
 */
export function privatizeSharers(e: Engine, seg: LinuxSegment, layer: Layer, list: RangeList): 'done' | 'refused' | 'rebase' {
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
export function shareHistory(e: Engine, seg: LinuxSegment, layer: Layer, shared: RangeList): boolean {
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
  sharers = cutToRoom(sharers, room).targets;
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
  const fit = cutToRoom(targets, room);
  targets = fit.targets;
  if (targets.length < SHARE_MIN_SHOWN) return false;
  const union = fit.union;
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
    e.layers.punchList(history, history.refs.unusedIn(copied));
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
 * mappings can take (roomyPrefix), those left with no page dropped, and
 * the union of what is left.
 */
function cutToRoom<T extends { pages: RangeList }>(targets: T[], room: number): { targets: T[]; union: RangeList } {
  const union = unionOf(targets);
  const cut = roomyPrefix(union, targets, room);
  if (cut === union.length) return { targets, union };
  const kept = union.slice(0, cut);
  return { targets: targets.map((t) => ({ ...t, pages: intersectList(t.pages, kept) })).filter((t) => t.pages.length > 0), union: kept };
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
export function evict(e: Engine, seg: LinuxSegment, layer: Layer, ranges: RangeList, settle: (rs: RangeList) => void): void {
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
 * gather is a pwritev or through the pipe, whichever has been cheaper here
 * (Writer.gather: 256 MiB filled, 1% of pages at random, 655 pages: 1.1 ms
 * by pwritev and 1.5 through the pipe on one VM, 6.3 and 2.0 on another);
 * else through the pipe, which finds missing entries without a fault.
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
    e.writer.gather(to, window, list, packing.filePage(list.starts[0]!) * page, from.windowFull ? 'window' : 'pipe');
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

/** The counts over `ranges` less the one segment that evicts: what moves. */
function othersIn(counts: RefCounts, ranges: RangeList): SpanList {
  return counts.spansIn(ranges, 1);
}
