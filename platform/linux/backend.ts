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
// process's share of the descriptor limit), the operations: prepare.ts
// (bringing a segment to a state a clone can share) with freeze.ts and
// history.ts (old contents moved out of the way of pages rewritten in
// place), compact.ts, restore.ts, reshare.ts and materialize.ts (mapping
// a clone when its memory is first asked for), and move-aside.ts (page
// tables at a first clone); engine.ts holds the state they share,
// features.ts what the kernel was found to allow.
import type { Backend, BackendMemory, BackendStats } from '../../src/backend.ts';
import { maxViewLength } from '../../src/runtime.ts';
import { pageCount, RunList, selectIn, subtract, type Range } from '../../src/runs.ts';
import * as sys from '../libc.ts';
import { MapBudget } from './budget.ts';
import { compact, reclaimDescriptors } from './compact.ts';
import { Dropper } from './drop.ts';
import { EMPTY, LinuxSegment, scanWritten, setRuns, type Engine } from './engine.ts';
import { assumeFeatures, type Features } from './features.ts';
import { LayerStore, rangesByLayer, type Layer } from './layers.ts';
import { mapShared, reserve, reserveAligned, unreserve } from './mapper.ts';
import { materialize } from './materialize.ts';
import { spanFor, Windows } from './move-aside.ts';
import { Moves } from './moves.ts';
import { prepare } from './prepare.ts';
import { shareAgain, windowedLayers } from './reshare.ts';
import { restore } from './restore.ts';
import { Scanner, type ScanMethod } from './scan.ts';
import { WriteTracker } from './track.ts';
import { Writer } from './writer.ts';

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
  /**
   * Whether mapped segments that show layer pages a segment rewrites in
   * place, two or more to a page, map one history copy of their old contents
   * between them while the mapping budget is at most half used (default), or
   * each take a private copy (tests cover both).
   */
  shareHistory?: boolean;
  /** Restore by mapping over the target in place, as on kernels before 6.17 (tests cover that path with it). */
  restoreInPlace?: boolean;
  /**
   * Whether pages frozen in place are written through their layer's
   * moved-aside mapping (default) or through a pipe, as in layers without one
   * (tests cover both).
   */
  windowCopy?: boolean;
  /**
   * How pages that all have page-table entries are gathered into a new
   * file (history read from a layer's full moved-aside mapping, a deferred
   * freeze's own private copies): by pwritev or through a pipe, fixed
   * (tests cover each); default: whichever has been cheaper for that kind
   * in this process (Writer.gather).
   */
  windowGather?: 'pipe' | 'pwritev';
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
    this.#layers = new LayerStore(this.pageSize, options.fdBudget, this.#features, this.#windows, (make) => reclaimDescriptors(this.#engine, make));
    this.#writer = new Writer(this.pageSize, this.#features, options.windowGather);
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
      shareHistory: options.shareHistory ?? true,
      maxRuns: this.maxRuns,
      availableMemory: () => this.#availableMemory(),
      ensureRoom: (needed, pages) => this.#ensureRoom(needed, pages),
      prepare: (seg) => prepare(this.#engine, seg),
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
    setRuns(this.#engine, seg, RunList.of(0, pages, layer));
    this.#segments.add(seg);
    return seg;
  }

  clone(source: LinuxSegment): LinuxSegment {
    prepare(this.#engine, source);
    // The clone shares the source's run list and is mapped only when its
    // memory is first asked for (materialize.ts): a snapshot kept only to be
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
    prepare(this.#engine, source);
    const before = this.#windowed(target);
    restore(this.#engine, target, source);
    shareAgain(this.#engine, before);
  }

  release(seg: LinuxSegment): void {
    if (!seg.released) {
      sys.munmap(seg.addr, seg.length);
      seg.released = true;
      this.#segments.delete(seg);
      if (!seg.mapped) this.#budget.segments--;
      const before = this.#windowed(seg);
      setRuns(this.#engine, seg, EMPTY);
      shareAgain(this.#engine, before);
    }
    // A layer this closed may have left its moved-aside mapping behind:
    // close() fails then, and calling it again tries once more.
    if (this.#windows.strays) this.#windows.unmapStrays();
  }

  address(seg: LinuxSegment, use = true): bigint {
    // An address is handed out to be read or written through by other FFI
    // code: a clone's reservation (PROT_NONE) would fault there.
    if (use) materialize(this.#engine, seg);
    return seg.addr;
  }

  view(seg: LinuxSegment, offset: number, length: number): ArrayBuffer {
    materialize(this.#engine, seg);
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
    for (const [layer, ranges] of rangesByLayer(selectIn(seg.runsNow, subtract([{ start: 0, end: seg.pages }], dirty)))) {
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
    for (const layer of this.#layers.all()) if (layer.hasFile) fds.add(layer.fd);
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

  /** The layers `seg` may leave to a sole sharer (reshare.ts); none where sharing again is off. */
  #windowed(seg: LinuxSegment): Set<Layer> {
    return this.#reshare ? windowedLayers(seg) : new Set();
  }

  /** Makes room for `needed` more mappings, compacting the most fragmented segments (budget.ts). */
  #ensureRoom(needed: number, pages: number): void {
    this.#budget.ensureRoom(needed, pages, this.#segments, (seg, windows, limit) => compact(this.#engine, seg, windows, limit));
  }
}
