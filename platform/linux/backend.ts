// Linux backend: copy-on-write from memfd layers and MAP_PRIVATE mappings.
//
// A layer is a sparse memfd as long as the segment; page i of a segment lives
// at offset i × page in every layer, so a segment's state is a run list saying
// which layer holds each page range (or `null`: anonymous zero memory).
//
// - A fresh segment is one MAP_SHARED mapping of its own layer: writes go
//   straight to it, with no copy-on-write cost until it is first cloned.
// - Cloning freezes the source: the pages it wrote since its last clone are
//   found in the page tables (PAGEMAP_SCAN, or /proc/self/pagemap), written
//   into a new layer and remapped from it at the same address. The clone then
//   maps the same run list MAP_PRIVATE, so both share every page.
// - A segment whose clones are all closed maps its layer shared again
//   (reshare.ts): its next writes cost no copy, its next clone is a first one.
// - A layer is never written once a private mapping of it exists: POSIX leaves
//   the result unspecified and Linux shows such writes through every clone
//   (mmap(2), "MAP_PRIVATE ... It is unspecified whether changes made to the
//   file after the mmap() call are visible in the mapped region").
// - Layers are reference-counted per page range; ranges nobody references are
//   punched out, and a layer's fd is closed when nothing references it.
//
// Limits: each run costs a kernel mapping (VMA) and each layer an fd.
//
// This class wires the parts together: layers.ts (layers and descriptors),
// scan.ts (finding written pages), writer.ts and drop.ts (copying pages into
// layers, dropping private ones), mapper.ts (every mapping), budget.ts,
// map-budget.ts and cost.ts (the mapping budget, the process's share of
// vm.max_map_count, and when compaction or copying pays), fd-budget.ts (the
// process's share of the descriptor limit), freeze.ts,
// compact.ts, restore.ts and reshare.ts (the operations), move-aside.ts
// (page tables at a first clone); engine.ts holds the state they share, features.ts what the
// kernel was found to allow.
import type { Backend, BackendMemory, BackendStats } from '../../src/backend.ts';
import { maxViewLength } from '../../src/runtime.ts';
import { coalesce, overlapPages, pageCount, select, subtract, type Range } from '../../src/runs.ts';
import * as sys from '../libc.ts';
import { systemError } from '../../src/errors.ts';
import { MapBudget } from './budget.ts';
import { compact } from './compact.ts';
import { chargeMapping, compactionFor, duplicateLimit, JOIN_GAP, joinToFit } from './cost.ts';
import { Dropper } from './drop.ts';
import { LinuxSegment, scanWritten, setRuns, writtenForFreeze, type Engine } from './engine.ts';
import { assumeFeatures, type Features } from './features.ts';
import { freeze, freezeInPlace, makePrivate } from './freeze.ts';
import { LayerStore, rangesByLayer, type Layer, type MakeLayer, type Runs } from './layers.ts';
import { baseLayer, mapRuns, mapShared, reserve, reserveAligned, unreserve } from './mapper.ts';
import { spanFor, Windows } from './move-aside.ts';
import { Moves } from './moves.ts';
import { reshare, soleSharer } from './reshare.ts';
import { restore } from './restore.ts';
import { Scanner, type ScanMethod } from './scan.ts';
import { WriteTracker } from './track.ts';
import { readRuns, Writer } from './writer.ts';

export interface LinuxOptions {
  /** Force a way of finding written pages (tests use it to cover both). */
  scan?: ScanMethod;
  /**
   * Mappings all segments of this backend may use, fixed (tests). Default:
   * the process's budget, shared with every thread: half of
   * `vm.max_map_count`, less a reserve, less what the rest of the process
   * maps (see map-budget.ts).
   */
  mapBudget?: number;
  /** Runs one segment may reach before it is compacted whatever the cost (default 32768; the mapping budget usually acts first). */
  maxRuns?: number;
  /**
   * Layers (each an open file descriptor) all segments of this backend may
   * use before memfork compacts to free some, fixed (tests). Default: the
   * process's budget, shared with every thread: half the descriptor limit,
   * less what the rest of the process holds (see fd-budget.ts).
   */
  fdBudget?: number;
  /**
   * Whether to treat anonymous memory as reading the shared zero page, so a
   * first clone maps large never-written holes anonymously (default: detected;
   * tests force it to cover that path on kernels without a zero page).
   */
  zeroPage?: boolean;
  /** Bytes of memory the machine has free for copies (default: MemAvailable; tests pass their own). */
  availableMemory?: () => number;
  /**
   * Whether a segment frozen in place may have other mapped segments take
   * private copies of the layer pages it rewrites (pinned pages, default),
   * or maps those pages from a new layer instead (tests cover that path alone with it).
   */
  privatize?: boolean;
  /** Restore by mapping over the target in place, as on kernels before 6.17 (tests cover that path with it). */
  restoreInPlace?: boolean;
  /**
   * Whether pages frozen in place are written through their layer's
   * moved-aside mapping (default) or through a pipe, as in layers without one
   * (tests cover both).
   */
  windowCopy?: boolean;
  /**
   * Whether a segment whose clones are all closed maps its layer shared
   * again (reshare.ts, default), or stays private and freezes its next
   * writes in place (tests cover those paths with it).
   */
  reshare?: boolean;
  /**
   * Whether a segment rewriting pages that kept snapshots share keeps its
   * private copies and gives the clone a copy of the new contents, telling
   * its later writes apart with asynchronous userfaultfd write-protect
   * (track.ts; default: where the kernel has it), or rewrites the shared
   * pages in place, their old contents moved to history (tests cover both).
   */
  track?: boolean;
}

export class LinuxBackend implements Backend<LinuxSegment> {
  readonly name = 'linux' as const;
  readonly pageSize: number;
  readonly maxViewLength = maxViewLength;
  /** How this backend finds written pages. */
  readonly scanMethod: ScanMethod;
  /** Whether anonymous memory reads as the shared zero page (some VMs disable it). */
  readonly zeroPage: boolean;
  /** Runs one segment may reach before it is compacted. */
  readonly maxRuns: number;
  /** Whether writes are tracked (asynchronous userfaultfd write-protect, track.ts), so freezes can defer. */
  readonly tracksWrites: boolean;

  readonly #segments = new Set<LinuxSegment>();
  readonly #moves = new Moves<Layer | null>();
  readonly #features: Features;
  readonly #windows = new Windows();
  readonly #scanner: Scanner;
  readonly #layers: LayerStore;
  readonly #budget: MapBudget;
  readonly #writer: Writer;
  readonly #tracker: WriteTracker | null;
  readonly #engine: Engine;
  readonly #availableMemory: () => number;
  #reshare: boolean;

  constructor(options: LinuxOptions = {}) {
    sys.loadLibc();
    sys.ignoreFileSizeSignal();
    this.pageSize = sys.getpagesize();
    this.#availableMemory = options.availableMemory ?? sys.availableMemory;
    this.#reshare = options.reshare ?? true;
    this.#features = assumeFeatures(options.restoreInPlace === true);
    const probe = sys.mmap(null, this.pageSize, sys.PROT_READ | sys.PROT_WRITE, sys.MAP_PRIVATE | sys.MAP_ANONYMOUS, -1, 0);
    try {
      this.#scanner = new Scanner(this.pageSize, options.scan);
      this.scanMethod = this.#scanner.method;
      // Safety: the probe page is mapped above and unmapped only below.
      void new Uint8Array(sys.view(probe, 1))[0];
      this.zeroPage = options.zeroPage ?? this.#scanner.isZeroPage(probe);
    } finally {
      sys.munmap(probe, this.pageSize);
    }
    this.maxRuns = Math.max(8, options.maxRuns ?? 32768);
    this.#budget = new MapBudget(options.mapBudget, this.#windows);
    this.#layers = new LayerStore(this.pageSize, options.fdBudget, this.#features, this.#windows, (make) => this.#reclaimFds(make));
    this.#writer = new Writer(this.pageSize, this.#features);
    // Write tracking reports through PAGEMAP_SCAN, which the same kernels have.
    this.#tracker = options.track !== false && this.scanMethod === 'pagemap-scan' ? WriteTracker.open(this.pageSize) : null;
    this.tracksWrites = this.#tracker !== null;
    this.#engine = {
      pageSize: this.pageSize,
      features: this.#features,
      layers: this.#layers,
      budget: this.#budget,
      windows: this.#windows,
      writer: this.#writer,
      dropper: new Dropper(this.pageSize, this.#features),
      scanner: this.#scanner,
      tracker: this.#tracker,
      segments: this.#segments,
      moves: this.#moves,
      zeroPage: this.zeroPage,
      windowCopy: options.windowCopy ?? true,
      privatize: options.privatize ?? true,
      availableMemory: () => this.#availableMemory(),
      ensureRoom: (needed, pages) => this.#ensureRoom(needed, pages),
      prepare: (seg) => this.#prepare(seg),
    };
  }

  /** The most mappings all segments of this backend may use now. */
  get mapBudget(): number {
    return this.#budget.limit(0);
  }

  /** The most layers (each an open descriptor) all segments of this backend may hold now. */
  get fdBudget(): number {
    return this.#layers.fdBudget();
  }

  // ---- Backend ---------------------------------------------------------------

  create(length: number): LinuxSegment {
    const pages = length / this.pageSize;
    const layer = this.#layers.newLayer(length);
    let addr: bigint;
    // Placed at a multiple of its page-table span, so the first clone can
    // move its page tables aside whole (move-aside.ts).
    const at = reserveAligned(length, spanFor(length, this.pageSize), 0n);
    try {
      // Safety: `at` is the reservation just made for this segment.
      addr = mapShared(at, length, layer.fd);
    } catch (err) {
      if (at !== null) unreserve(at, length);
      this.#layers.close(layer);
      throw err;
    }
    const seg = new LinuxSegment(addr, length, this.pageSize, true, this.#moves);
    seg.shared = layer;
    setRuns(this.#engine, seg, [{ start: 0, end: pages, layer }]);
    this.#segments.add(seg);
    return seg;
  }

  clone(source: LinuxSegment): LinuxSegment {
    this.#prepare(source);
    // The clone shares the source's run list and is mapped only when its
    // memory is first asked for (#materialize): a snapshot kept only to be
    // restored from, or never looked at, costs no mapping.
    this.#ensureRoom(1, 0);
    const addr = reserve(null, source.length);
    const seg = new LinuxSegment(addr, source.length, this.pageSize, false, this.#moves);
    seg.debt = source.debt;
    this.#budget.segments++;
    setRuns(this.#engine, seg, source.runs);
    this.#segments.add(seg);
    return seg;
  }

  restore(target: LinuxSegment, source: LinuxSegment): void {
    this.#prepare(source);
    const before = this.#windowed(target);
    restore(this.#engine, target, source);
    this.#shareAgain(before);
  }

  release(seg: LinuxSegment): void {
    if (!seg.released) {
      sys.munmap(seg.addr, seg.length);
      seg.released = true;
      this.#segments.delete(seg);
      if (!seg.mapped) this.#budget.segments--;
      const before = this.#windowed(seg);
      setRuns(this.#engine, seg, []);
      this.#shareAgain(before);
    }
    // A layer this closed may have left its moved-aside mapping behind:
    // close() fails then, and calling it again tries once more.
    if (this.#windows.strays) this.#windows.unmapStrays();
  }

  address(seg: LinuxSegment, use = true): bigint {
    // An address is handed out to be read or written through by other FFI
    // code: a clone's reservation (PROT_NONE) would fault there.
    if (use) this.#materialize(seg);
    return seg.addr;
  }

  view(seg: LinuxSegment, offset: number, length: number): ArrayBuffer {
    this.#materialize(seg);
    // Safety: the range lies inside the segment's mapping, which stays at this
    // address until release(); src/segment.ts detaches every view before that.
    return sys.view(seg.addr + BigInt(offset), length);
  }

  stats(seg: LinuxSegment): BackendStats {
    if (seg.shared !== null) {
      return { privateBytes: Math.min(sys.allocatedBytes(seg.shared.fd), seg.length), sharedBytes: 0, mappings: 1 };
    }
    const dirty = seg.mapped ? this.scanWritten(seg) : [];
    let priv = pageCount(dirty);
    let shared = 0;
    // The pages not written since, by layer: one sweep of each layer's counts.
    for (const [layer, ranges] of rangesByLayer(select(seg.runsNow, subtract([{ start: 0, end: seg.pages }], dirty)))) {
      const alone = layer.refs.countEqualEach(ranges, 1);
      ranges.forEach((r, i) => {
        priv += alone[i]!;
        shared += r.end - r.start - alone[i]!;
      });
    }
    return { privateBytes: priv * this.pageSize, sharedBytes: shared * this.pageSize, mappings: seg.mapped ? seg.maps.length : 1 };
  }

  memory(): BackendMemory {
    let layerBytes = 0;
    // Packed layers share their file's descriptor: each file once.
    const fds = new Set<number>();
    for (const layer of this.#layers.all()) if (layer.fd >= 0) fds.add(layer.fd);
    for (const fd of fds) layerBytes += sys.allocatedBytes(fd);
    let privateBytes = 0;
    for (const seg of this.#segments) privateBytes += this.stats(seg).privateBytes;
    return { layers: this.#layers.size, layerBytes, privateBytes, mappings: this.#budget.used };
  }

  shutdown(): void {
    // Every segment goes: none shares its layer again on the way.
    this.#reshare = false;
    for (const seg of [...this.#segments]) {
      try {
        this.release(seg);
      } catch {
        // Nothing can be reported from an exiting thread.
      }
    }
    this.#layers.shutdown();
    this.#scanner.close();
    this.#writer.close();
    this.#tracker?.close();
  }

  /**
   * Page ranges of `seg` written since its last freeze: pages present (or
   * swapped) in its private mappings that are neither file pages nor the zero
   * page. Sorted, disjoint, merged.
   */
  scanWritten(seg: LinuxSegment): Range[] {
    return scanWritten(this.#engine, seg);
  }

  /** For tests: number of live layers and open layer fds. */
  layerCount(): number {
    return this.#layers.size;
  }

  // ---- wiring -------------------------------------------------------------------

  /**
   * Brings `seg` to the state a clone or restore can share: private, its
   * written pages in a layer, and no more runs than `maxRuns`.
   */
  #prepare(seg: LinuxSegment): void {
    // An unmapped segment has written nothing, and its runs cost no mapping.
    if (!seg.mapped) return;
    const e = this.#engine;
    // A segment made private just now has written nothing since.
    const fresh = seg.shared !== null;
    makePrivate(e, seg);
    // Exactly the pages written since (write tracking) where the segment
    // keeps private copies across freezes (pinned pages), or is to.
    const scan = fresh ? null : writtenForFreeze(e, seg, this.#tracker !== null && (seg.deferNext || seg.maps !== seg.runs));
    let written: Range[] = [];
    if (scan !== null) {
      // A segment that rewrites mostly the pages it wrote the round before
      // defers the freeze of those that snapshots nobody maps share: it will
      // likely rewrite them again, and each round's copy is then the only
      // one. (Written pages are tracked from then on: its private copies
      // stay, written or not.)
      const last = seg.lastWritten;
      const repeats = this.#tracker !== null && scan.private && last !== null && 2 * overlapPages(scan.written, last) >= scan.written.pages;
      const done = freezeInPlace(e, seg, scan.written, { exact: scan.exact, defer: repeats });
      written = coalesce(done.left, JOIN_GAP);
      // The next scan then reports exactly what is rewritten.
      seg.deferNext = repeats && done.unmappedShared > 0;
      seg.lastWritten = scan.written;
    }
    let dirty = written;
    // Freezing adds up to two mappings per written run. Runs that would take
    // more than half of what the budget has free are joined across their
    // smallest gaps, copying the clean pages between them too, down to an
    // eighth of it, where the machine has the memory for that copy (a
    // quarter of MemAvailable at most, leaving room for what the next rounds
    // of writes and reads take): a clone that can be done is not refused,
    // and one that would run the machine out of memory (the kernel's OOM
    // killer ends the process) is refused with ENOMEM by the budget below.
    const free = this.#budget.limit(2 * dirty.length) - this.#budget.used;
    if (2 * dirty.length > free / 2) {
      const joined = joinToFit(dirty, Math.floor(free / 8));
      const extra = (pageCount(joined) - pageCount(dirty)) * this.pageSize;
      if (extra <= this.#availableMemory() / 4) dirty = joined;
    }
    this.#ensureRoom(2 * dirty.length, seg.pages);
    freeze(e, seg, dirty, written, (length) => this.#layers.newLayer(length));
    // Frozen: what the scan reported is in the run list now.
    seg.pending = null;
    // A run list scattered by deferred freezes (pinned pages) costs the
    // segment no mapping, and its clones map by copy where it would not
    // fit (#materialize): compacting it would copy and remap for nothing.
    if (seg.maps !== seg.runs) return;
    const c = compactionFor(seg.runs, seg.pages, seg.debt, this.maxRuns, () => ({
      used: this.#budget.used,
      limit: this.#budget.limit(0),
    }));
    if (c !== undefined) compact(e, seg, c.windows, c.limit);
  }

  /**
   * Maps an unmapped segment's run list over its reservation. Where its runs
   * would not fit the mapping budget (or pass maxRuns), maps its largest
   * layer alone and reads the rest in (#materializeByCopy). Nothing changes
   * on failure.
   */
  #materialize(seg: LinuxSegment): void {
    if (seg.mapped) return;
    const extra = seg.runs.length - 1;
    if (seg.runs.length > this.maxRuns || !this.#budget.fits(extra)) {
      this.#materializeByCopy(seg);
      return;
    }
    this.#ensureRoom(seg.runs.length - 1, seg.pages);
    let touched = false;
    try {
      // Safety: MAP_FIXED over the segment's own reservation, which no view aliases yet.
      mapRuns(this.pageSize, seg.addr, seg.runs, seg.length, () => (touched = true));
    } catch (err) {
      if (touched) reserve(seg.addr, seg.length);
      throw err;
    }
    seg.mapped = true;
    seg.maps = seg.runs;
    this.#budget.segments += seg.runs.length - 1;
    for (const [layer, ranges] of rangesByLayer(seg.runs)) layer.mapped.addAll(ranges, 1);
    seg.debt = chargeMapping(seg);
  }

  /**
   * Maps a run list too fragmented for the mapping budget as one mapping of
   * its largest layer, with the pages other runs hold read into it: those
   * become the segment's private pages, as if written since, and its run list
   * becomes that layer alone, which is what it then describes. A snapshot of
   * scattered writes read at last costs one mapping and a private copy of the
   * pages that differ from that layer (moved, not doubled, where nothing else
   * uses them: their layer pages are then freed), where rewriting it into a
   * new layer would copy the whole segment. On failure the reservation is
   * put back and nothing else has changed.
   */
  #materializeByCopy(seg: LinuxSegment): void {
    const base = baseLayer(seg.runs);
    const whole: Runs = [{ start: 0, end: seg.pages, layer: base }];
    const others = seg.runs.filter((r) => r.layer !== base);
    // Private copies are memory: refused (ENOMEM) rather than run the
    // machine out of it, where the kernel's OOM killer would end the process.
    const bytes = pageCount(others) * this.pageSize;
    if (bytes > this.#availableMemory() / 2) {
      throw systemError('mmap', sys.ENOMEM, `mapping this segment needs ${seg.runs.length} mappings or ${bytes} bytes of copies; the machine has neither free`);
    }
    // Safety: MAP_FIXED over the segment's own reservation, which no view aliases yet.
    mapRuns(this.pageSize, seg.addr, whole, seg.length);
    try {
      readRuns(this.pageSize, seg.addr, others);
    } catch (err) {
      reserve(seg.addr, seg.length);
      throw err;
    }
    setRuns(this.#engine, seg, whole);
    seg.mapped = true;
    if (base !== null) base.mapped.addAll(whole, 1);
    seg.debt = 0;
  }

  /** The layers with a moved-aside mapping that `seg`'s run list uses (none where sharing again is off). */
  #windowed(seg: LinuxSegment): Set<Layer> {
    const out = new Set<Layer>();
    if (this.#reshare) for (const r of seg.runs) if (r.layer !== null && r.layer.window !== 0n) out.add(r.layer);
    return out;
  }

  /** After a segment stopped using `layers`: one whose last other user that was may take it back shared (reshare.ts). */
  #shareAgain(layers: Set<Layer>): void {
    for (const layer of layers) {
      const sole = soleSharer(this.#segments, layer);
      if (sole !== undefined) reshare(this.#engine, sole, layer);
    }
  }

  /** Makes room for `needed` more mappings, compacting the most fragmented segments (budget.ts). */
  #ensureRoom(needed: number, pages: number): void {
    this.#budget.ensureRoom(needed, pages, this.#segments, (seg, windows, limit) => compact(this.#engine, seg, windows, limit));
  }

  /**
   * Told to the layer store as its way to reclaim descriptors: flattens
   * segments that are the only users of two layers or more (flattening makes
   * one layer, so anything less closes none: kept snapshots of one segment
   * share most of their layers), those freeing the most first, until some
   * layers close, making layers with `make` (which never reclaims). Where no
   * segment qualifies, nothing is done: the budget is then passed, and only
   * the process's real limit (EMFILE) refuses.
   */
  #reclaimFds(make: MakeLayer): void {
    const before = this.#layers.size;
    const freed = new Map<LinuxSegment, number>();
    for (const s of this.#segments) {
      const n = soleLayers(s);
      if (n >= 2) freed.set(s, n);
    }
    const candidates = [...freed.keys()].sort((a, b) => freed.get(b)! - freed.get(a)!);
    for (const seg of candidates) {
      // An earlier flattening may have left this one sharing its layers.
      if (soleLayers(seg) < 2) continue;
      try {
        compact(this.#engine, seg, 0, duplicateLimit(seg.pages), make);
      } catch {
        break;
      }
      if (this.#layers.size < before - 1) break;
    }
  }
}

/** Layers only `seg`'s run list uses: they close if it stops using them. */
function soleLayers(seg: LinuxSegment): number {
  let n = 0;
  for (const [layer, ranges] of rangesByLayer(seg.runs)) {
    // A virtual layer holds no descriptor.
    if (layer.fd < 0) continue;
    const used = pageCount(ranges);
    if (layer.refs.pages !== used) continue;
    let alone = 0;
    for (const k of layer.refs.countEqualEach(ranges, 1)) alone += k;
    if (alone === used) n++;
  }
  return n;
}
