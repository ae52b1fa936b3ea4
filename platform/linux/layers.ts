// Layers: the memfds that hold segments' pages, and the store that makes,
// reference-counts, reuses and closes them. Each layer holds one file
// descriptor; the store keeps them under a budget, and when the budget or the
// process's descriptor limit is reached it asks the backend to reclaim some
// (compacting segments), handing it a way to make layers that never reclaims
// in turn.
import * as sys from '../libc.ts';
import { errnoOf } from '../../src/errors.ts';
import { coalesce, Packing, RangeList, RunList, type Range, type Run, RefCounts } from '../../src/runs.ts';
import { FLOOR, ProcessFdBudget } from './fd-budget.ts';
import type { Features } from './features.ts';
import type { Windows } from './move-aside.ts';

/** A memfd holding pages of one or more segments. */
export class Layer {
  /** -1 once closed. */
  fd: number;
  /** Bytes; the length of the segments it serves. */
  readonly length: number;
  /**
   * How many runs of live segments use each page. Invariant: a page is
   * mapped by some segment only if its count is above zero.
   */
  readonly refs = new RefCounts();
  /**
   * The same counts for mapped segments only. Invariant: a page is mapped
   * private by some segment only if its count here is above zero; where it
   * is 1 and `refs` is above 1, the other users are run lists only, so the
   * page may be rewritten once they are pointed elsewhere (evict, history.ts).
   */
  readonly mapped = new RefCounts();
  /**
   * Where the page tables of the segment this layer was made for were moved
   * when it was first cloned (a MAP_SHARED mapping of the layer); unmapped
   * with the layer. 0n: none.
   */
  window = 0n;
  /**
   * Whether the window has a page-table entry for every page of the file:
   * the file had no hole when the segment's entries were moved there
   * (makePrivate, freeze.ts), and pages are written into a layer with a
   * window through it (Writer.toWindow). A copy from the window then reads
   * no page through a fault (copyOut, history.ts). False whenever there
   * is no window.
   */
  windowFull = false;
  /**
   * Whether its file was last found to have no hole worth mapping
   * anonymously (makePrivate, freeze.ts): holes only shrink as pages are
   * written, so the search is skipped until a page is punched out again.
   */
  noLongHoles = false;
  /** Where a packed layer keeps its pages (Packing); null: page i at offset i. */
  readonly packing: Packing | null;
  /** The file a packed layer shares with the other batches stored in it; null for others. */
  readonly file: PackedFile | null;
  constructor(fd: number, length: number, packing: Packing | null = null, file: PackedFile | null = null) {
    this.fd = fd;
    this.length = length;
    this.packing = packing;
    this.file = file;
  }

  /** The page of this layer's file that holds page `page`, which it must hold. */
  filePage(page: number): number {
    return this.packing === null ? page : this.packing.filePage(page);
  }

  /**
   * A virtual layer: a name, with no file, for the old contents of pages a
   * segment rewrote in place while every other segment using them mapped
   * them and held a private copy (evict, history.ts). Those copies are the
   * pages: each such segment is pinned there (LinuxSegment.maps), so they
   * are never dropped, and any freeze or restore takes them from memory,
   * never from this layer. Its counts say who still holds them; it is not
   * in any store and has no descriptor to close.
   */
  static virtual(length: number): Layer {
    return new Layer(-1, length);
  }

  /** Whether it has a file: neither a virtual layer (Layer.virtual, its pages in its users' memory alone) nor closed. */
  get hasFile(): boolean {
    return this.fd >= 0;
  }
}

/**
 * A memory file holding packed layers (Packing): one per batch of pages
 * stored in it, one after another. Each batch is a layer of its own (its own
 * counts, its own runs), so runs of two batches never merge, whichever pages
 * they hold; they share the descriptor, closed with the last of them.
 */
export interface PackedFile {
  readonly fd: number;
  /** The first file page no batch has used (a failed batch leaves a hole before it). */
  end: number;
  /** Open layers stored in it. */
  layers: number;
}

/** A run list: which layer holds each page range of a segment (null: anonymous memory). */
export type Runs = RunList<Layer | null>;

/** Makes a layer of `length` bytes. */
export type MakeLayer = (length: number) => Layer;

/** How many of the newest layers a freeze looks at for free room. */
const REUSE_CANDIDATES = 4;

/**
 * rangesByLayer(), as lists (touching runs of a layer joined), each made
 * at its size: the runs are counted by layer first (every clone sets a run
 * list's counts with this; lists grown by doubling left about their own
 * size again in garbage, a clone of every 3rd page at 256 MiB 1 MiB).
 */
export function listsByLayer(runs: Runs): Map<Layer, RangeList> {
  const { starts, ends, layers } = runs;
  const counts = new Map<Layer, number>();
  let last: Layer | null = null;
  let from = 0;
  const count = (to: number) => {
    if (last !== null) counts.set(last, (counts.get(last) ?? 0) + to - from);
  };
  for (let i = 0; i < runs.length; i++) {
    const layer = layers[i]!;
    if (layer === last) continue;
    count(i);
    last = layer;
    from = i;
  }
  count(runs.length);
  const byLayer = new Map<Layer, RangeList>();
  for (const [layer, n] of counts) byLayer.set(layer, new RangeList(n));
  let list: RangeList | undefined;
  last = null;
  for (let i = 0; i < runs.length; i++) {
    const layer = layers[i]!;
    if (layer === null) continue;
    if (layer !== last) {
      last = layer;
      list = byLayer.get(layer)!;
    }
    list!.push(starts[i]!, ends[i]!);
  }
  return byLayer;
}

/** The runs on a layer, grouped by layer, in their order. */
export function rangesByLayer(runs: Runs | readonly Run<Layer | null>[]): Map<Layer, Range[]> {
  const byLayer = new Map<Layer, Range[]>();
  const all = runs instanceof RunList ? runs.toArray() : runs;
  for (const r of all) {
    if (r.layer === null) continue;
    const list = byLayer.get(r.layer);
    if (list === undefined) byLayer.set(r.layer, [r]);
    else list.push(r);
  }
  return byLayer;
}

/** The live layers of one backend. */
export class LayerStore {
  /** Layers all segments may hold open before `reclaim` is asked to close some: fixed, or the process's share. */
  readonly #fdBudget: number | ProcessFdBudget;
  readonly #pageSize: number;
  readonly #features: Features;
  readonly #windows: Windows;
  /**
   * Frees layers, compacting segments, making any layer it needs with the
   * function it is given: that one never reclaims, so reclaiming never
   * recurses.
   */
  readonly #reclaim: (make: MakeLayer) => void;
  readonly #layers = new Set<Layer>();
  /** Descriptors open: a layer's each, or one for all the packed layers of a file. */
  #files = 0;
  /** The newest layers, newest first: where a freeze looks for room to reuse. */
  #recent: Layer[] = [];
  /** A spare descriptor, given up when the process runs out so compaction can proceed. */
  #reserveFd = openReserve();

  /** `fdBudget`: a fixed number of layers, or undefined for the process-wide budget (fd-budget.ts). */
  constructor(pageSize: number, fdBudget: number | undefined, features: Features, windows: Windows, reclaim: (make: MakeLayer) => void) {
    this.#pageSize = pageSize;
    this.#fdBudget = fdBudget === undefined ? new ProcessFdBudget() : Math.max(FLOOR, fdBudget);
    // The first reading of the process's descriptors, now rather than in the first operation.
    this.fdBudget();
    this.#features = features;
    this.#windows = windows;
    this.#reclaim = reclaim;
  }

  /** The most layers this store may hold, as it stands for opening `needed` more. */
  fdBudget(needed = 0): number {
    const b = this.#fdBudget;
    return typeof b === 'number' ? b : b.limit(this.#files, needed);
  }

  /** Descriptors the live layers hold. */
  get size(): number {
    return this.#files;
  }

  /** Every live layer. */
  all(): IterableIterator<Layer> {
    return this.#layers.values();
  }

  /**
   * A new layer. When the process is out of file descriptors (EMFILE), frees
   * some by compacting the segments that use the most layers, then tries
   * once more.
   */
  newLayer(length: number): Layer {
    return this.#reclaiming(() => this.make(length));
  }

  /** `open()` (which opens one descriptor), reclaiming descriptors first when over the budget, and once more on EMFILE. */
  #reclaiming<T>(open: () => T): T {
    if (this.#files >= this.fdBudget(1)) this.#reclaimFds();
    let made: T;
    try {
      made = open();
    } catch (err) {
      if (errnoOf(err) !== sys.EMFILE || !this.#reclaimFds()) throw err;
      made = open();
    }
    // A reserve given up earlier (and not re-opened then) is taken back now.
    if (this.#reserveFd < 0) this.#reserveFd = openReserve();
    return made;
  }

  /**
   * Has the backend compact segments until some layers close. The reserve
   * descriptor gives the first compaction a slot. Returns whether any
   * descriptor was freed.
   */
  #reclaimFds(): boolean {
    const before = this.#files;
    if (this.#reserveFd >= 0) sys.closeFd(this.#reserveFd);
    this.#reserveFd = -1;
    try {
      this.#reclaim((length) => this.make(length));
    } finally {
      this.#reserveFd = openReserve();
    }
    return this.#files < before;
  }

  /** A new layer, without reclaiming: the memfd, sized and sealed. */
  make(length: number): Layer {
    return this.#add(new Layer(this.#memfd(length), length));
  }

  #add(layer: Layer): Layer {
    this.#layers.add(layer);
    this.#recent.unshift(layer);
    if (this.#recent.length > REUSE_CANDIDATES) this.#recent.pop();
    return layer;
  }

  /** A memfd of `length` bytes, sealed against growing and shrinking (packed files too: their holes hold no memory). */
  #memfd(length: number): number {
    let fd: number;
    const flags = sys.MFD_CLOEXEC | sys.MFD_ALLOW_SEALING;
    if (this.#features.noexecSeal) {
      try {
        fd = sys.memfdCreate('memfork', flags | sys.MFD_NOEXEC_SEAL);
      } catch (err) {
        // MFD_NOEXEC_SEAL arrived in Linux 6.3; older kernels reject it.
        if (errnoOf(err) !== sys.EINVAL) throw err;
        this.#features.noexecSeal = false;
        fd = sys.memfdCreate('memfork', flags);
      }
    } else {
      fd = sys.memfdCreate('memfork', flags);
    }
    try {
      sys.ftruncate(fd, length);
      sys.addSeals(fd, sys.F_SEAL_GROW | sys.F_SEAL_SHRINK);
    } catch (err) {
      sys.closeFd(fd);
      throw err;
    }
    this.#files++;
    return fd;
  }

  close(layer: Layer): void {
    if (!layer.hasFile) return;
    if (layer.window !== 0n) this.#windows.drop(layer);
    // Mappings keep the file alive; the fd is only needed to map it again.
    if (layer.file === null || --layer.file.layers === 0) this.#closeFile(layer.fd);
    layer.fd = -1;
    this.#layers.delete(layer);
  }

  #closeFile(fd: number): void {
    sys.closeFd(fd);
    this.#files--;
  }

  /**
   * A recent layer of this length whose pages under `ranges` nobody uses
   * (never a packed one: it has room for its own pages only).
   * Writing those is safe although the layer is mapped private elsewhere: a
   * range no segment references is mapped nowhere, and a private mapping
   * shows file changes only at the offsets it maps. Reuse saves a file
   * descriptor, and lets neighbouring runs from one layer merge.
   */
  reusable(length: number, ranges: readonly Range[]): Layer | undefined {
    let tries = 0;
    for (const layer of this.#recent) {
      if (++tries > REUSE_CANDIDATES) break;
      if (layer.hasFile && layer.packing === null && layer.length === length && !layer.refs.overlaps(ranges)) return layer;
    }
    return undefined;
  }

  /**
   * A new packed layer for segments of `length` bytes holding the pages
   * under `ranges`, in a recent packed file with room for them after the
   * pages it used (saving a descriptor), or a new one. `write`, given the
   * layer's Packing and descriptor, puts them there, in page order, and
   * returns the ranges it wrote: all of `ranges`, or the first of them
   * where it stopped. Returns a layer holding those (the rest of its part
   * of the file freed again and never used), or undefined where `write`
   * wrote none or threw.
   */
  packed(length: number, ranges: RangeList, write: (fd: number, packing: Packing) => RangeList): Layer | undefined {
    const pages = ranges.pages;
    let file: PackedFile | undefined;
    let tries = 0;
    for (const layer of this.#recent) {
      if (++tries > REUSE_CANDIDATES) break;
      const f = layer.file;
      if (layer.hasFile && f !== null && layer.length === length && (f.end + pages) * this.#pageSize <= length) {
        file = f;
        break;
      }
    }
    file ??= this.#reclaiming(() => ({ fd: this.#memfd(length), end: 0, layers: 0 }));
    const at = file.end;
    file.end = at + pages;
    const packing = new Packing(ranges, at);
    let held = 0;
    let written = new RangeList(0);
    try {
      written = write(file.fd, packing);
      held = written.pages;
    } finally {
      if (held === 0 && file.layers === 0) this.#closeFile(file.fd);
      else if (held < pages) this.#punchFile(file.fd, at + held, pages - held);
    }
    if (held === 0) return undefined;
    file.layers++;
    // The first pages of a packing sit where the whole one puts them.
    return this.#add(new Layer(file.fd, length, held === pages ? packing : new Packing(written, at), file));
  }

  /**
   * Adds `delta` to `layer`'s counts under `list` (its mapped counts too
   * where the segment is `mapped`); punches out the pages no run list uses
   * any more, and closes the layer when none is left.
   */
  refList(layer: Layer, list: RangeList, delta: number, mapped: boolean): void {
    if (mapped) layer.mapped.addList(list, delta);
    const freed = layer.refs.addList(list, delta);
    // A packed layer's file stays open while other layers use it: the
    // pages freed here are punched out even when this was the layer's last.
    if (layer.refs.empty && (layer.file === null || layer.file.layers <= 1)) {
      this.close(layer);
      return;
    }
    this.punchList(layer, freed);
    if (layer.refs.empty) this.close(layer);
  }

  /**
   * Frees the pages under `list` of a layer that no mapping uses: one call
   * for each stretch of the file, where ranges apart in the segment sit side
   * by side in the file (a packed layer holds scattered pages one after
   * another: a snapshot closed after 1% of pages at random had been
   * rewritten freed its history a page a call, 655 calls at 256 MiB).
   */
  punchList(layer: Layer, list: RangeList): void {
    if (list.length === 0) return;
    layer.noLongHoles = false;
    if (!layer.hasFile) return;
    let from = -1;
    let to = -1;
    for (let i = 0; i < list.length; i++) {
      const at = layer.filePage(list.starts[i]!);
      const end = at + list.ends[i]! - list.starts[i]!;
      if (at === to) {
        to = end;
        continue;
      }
      if (from >= 0) this.#punchFile(layer.fd, from, to - from);
      from = at;
      to = end;
    }
    this.#punchFile(layer.fd, from, to - from);
  }

  /** Adds `delta` to the counts of every page `runs` (a run list: in order, apart) names, as refList does. */
  ref(runs: Runs, delta: number, mapped: boolean): void {
    // As lists, counted in place where they are the counts' own spans (RefCounts.addList).
    for (const [layer, ranges] of listsByLayer(runs)) this.refList(layer, ranges, delta, mapped);
  }

  /** Frees a range of a layer that no mapping uses. */
  punch(layer: Layer, r: Range): void {
    layer.noLongHoles = false;
    if (layer.hasFile) this.#punchFile(layer.fd, layer.filePage(r.start), r.end - r.start);
  }

  /** Frees `pages` pages of file `fd` from file page `at`. */
  #punchFile(fd: number, at: number, pages: number): void {
    try {
      sys.punchHole(fd, at * this.#pageSize, pages * this.#pageSize);
    } catch {
      // Only memory is lost if this fails, never data: nothing maps the range.
    }
  }

  /** The holes of `fd` over its first `pages` pages of at least `min` pages, and maybe shorter ones (longHoles). */
  longHoles(fd: number, pages: number, min: number): Range[] {
    return longHoles((offset, whence) => sys.seek(fd, offset, whence), this.#pageSize, pages, min);
  }

  /** Page ranges of `fd` within [from, to) pages that hold data (SEEK_DATA / SEEK_HOLE). */
  dataRanges(fd: number, from: number, to: number): Range[] {
    const page = this.#pageSize;
    const out: Range[] = [];
    const end = to * page;
    let off = from * page;
    while (off < end) {
      const data = sys.seek(fd, off, sys.SEEK_DATA);
      if (data < 0 || data >= end) break;
      let hole = sys.seek(fd, data, sys.SEEK_HOLE);
      if (hole < 0 || hole > end) hole = end;
      out.push({ start: Math.floor(data / page), end: Math.min(to, Math.ceil(hole / page)) });
      off = hole;
    }
    return coalesce(out);
  }

  /** Closes every layer and the reserve descriptor. */
  shutdown(): void {
    for (const layer of [...this.#layers]) this.close(layer);
    if (this.#reserveFd >= 0) sys.closeFd(this.#reserveFd);
    this.#reserveFd = -1;
  }
}

/** A descriptor to hold in reserve (-1 when none can be had). */
function openReserve(): number {
  try {
    return sys.open('/dev/null', sys.O_RDONLY | sys.O_CLOEXEC);
  } catch {
    return -1;
  }
}

/**
 * The holes (pages never written) of a file over its first `pages` pages:
 * every hole of at least `min` pages, exactly (each from its first page to
 * the next data), and some shorter ones. `seek` is lseek(2) with SEEK_DATA
 * or SEEK_HOLE, returning -1 where there is none past the offset.
 *
 * One SEEK_HOLE from the start would tell every hole too, but it walks the
 * file page by page up to the first hole, however far (5 ms for a 1 GiB
 * file written through, measured). Here SEEK_DATA is asked at every
 * (min/2)-th page, which answers at once where that page holds data and
 * otherwise jumps to the next data: a hole of at least `min` pages covers
 * one of those pages, and its start is found from the data seen last,
 * SEEK_HOLE and SEEK_DATA in turn over at most min/2 pages.
 */
export function longHoles(seek: (offset: number, whence: number) => number, pageSize: number, pages: number, min: number): Range[] {
  const step = Math.max(1, Math.ceil(min / 2));
  const out: Range[] = [];
  /** The last page known to hold data, -1 before any. */
  let lastData = -1;
  for (let at = 0; at < pages; ) {
    const d = seek(at * pageSize, sys.SEEK_DATA);
    const data = d < 0 ? pages : Math.min(pages, Math.floor(d / pageSize));
    if (data === at) {
      lastData = at;
      at += step;
      continue;
    }
    // `at` lies in a hole ending at `data`; it starts after the last data
    // before `at`, found from the data seen last (at most min/2 pages back)
    // hole by hole.
    let start = 0;
    for (let from = lastData; from >= 0; ) {
      const h = seek(from * pageSize, sys.SEEK_HOLE);
      start = h < 0 ? at : Math.min(at, Math.ceil(h / pageSize));
      if (start >= at) break;
      const next = seek(start * pageSize, sys.SEEK_DATA);
      if (next < 0 || next >= at * pageSize) break;
      from = Math.floor(next / pageSize);
    }
    out.push({ start, end: data });
    lastData = data;
    at = (Math.floor(data / step) + 1) * step;
  }
  return out;
}
