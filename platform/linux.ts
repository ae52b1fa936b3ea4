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
// - A layer is never written once a private mapping of it exists: POSIX leaves
//   the result unspecified and Linux shows such writes through every clone
//   (mmap(2), "MAP_PRIVATE ... It is unspecified whether changes made to the
//   file after the mmap() call are visible in the mapped region").
// - Layers are reference-counted per page range; ranges nobody references are
//   punched out, and a layer's fd is closed when nothing references it.
//
// Limits: each run costs a kernel mapping (VMA) and each layer an fd.
import type { Backend, BackendMemory, BackendStats } from '../src/backend.ts';
import { maxViewLength } from '../src/runtime.ts';
import { appendRange, coalesce, differing, overlay, pageCount, select, subtract, type Range, type Run, RefCounts } from '../src/runs.ts';
import { SegmentError } from '../src/errors.ts';
import * as sys from './libc.ts';
import { ProcessMapBudget } from './map-budget.ts';

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
   * page may be rewritten once they are pointed elsewhere (#evict).
   */
  readonly mapped = new RefCounts();
  /**
   * Where the page tables of the segment this layer was made for were moved
   * when it was first cloned (a MAP_SHARED mapping of the layer); unmapped
   * with the layer. 0n: none.
   */
  window = 0n;
  constructor(fd: number, length: number) {
    this.fd = fd;
    this.length = length;
  }
}

/**
 * Adds to `source`'s debt the mapping work that mapping its runs again just
 * cost beyond a compacted run list's; returns the new debt, which the segment
 * that now shares the run list takes over.
 */
function chargeMapping(source: LinuxSegment): number {
  source.debt += MAP_COST * Math.max(0, source.runs.length - 2 * COMPACT_WINDOWS - 1);
  return source.debt;
}

/**
 * Page-table spans: a page of page tables holds `pageSize / 8` entries, so an
 * entry of the page middle directory maps pageSize² / 8 bytes (2 MiB with
 * 4 KiB pages) and one of the upper directory pageSize³ / 64 (1 GiB). A
 * segment placed at a multiple of its span has its page tables moved by
 * `mremap` a directory entry at a time, not page by page.
 */
function spans(pageSize: number): { pmd: number; pud: number } {
  const pmd = (pageSize * pageSize) / 8;
  return { pmd, pud: (pmd * pageSize) / 8 };
}

/** The largest span not longer than `length`; 0 when even a middle-directory entry is. */
function spanFor(length: number, pageSize: number): number {
  const { pmd, pud } = spans(pageSize);
  return length >= pud ? pud : length >= pmd ? pmd : 0;
}

/** How many of the newest layers a freeze looks at for free room. */
const REUSE_CANDIDATES = 4;

type Runs = readonly Run<Layer | null>[];

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
   * that dropped every page (see #dropWritten).
   */
  scanned: number;
  released: boolean;
}

// Cost model for compaction (µs, measured on a 2-core x86_64 VM): mapping one
// run of a clone or restore, and copying one page into a new layer.
const MAP_COST = 6;
const COPY_COST = 1.5;
/** Written runs closer than this many pages are frozen as one, copying the clean pages between. */
const JOIN_GAP = 4;
/** Fewest pages of a run for which a file-to-file copy looks for holes to skip (SEEK_DATA / SEEK_HOLE). */
const DATA_SCAN_MIN = 256;
/** Windows a cost-driven compaction leaves. */
const COMPACT_WINDOWS = 4;
/**
 * A restore copies the pages where the source's run list differs from the
 * target's, rather than map the source's runs, where those runs would take
 * more than 1/RESTORE_COPY_SHARE of the free mapping budget and the pages
 * are at most that share of the segment (or always, where the runs would
 * not fit the budget).
 */
const RESTORE_COPY_SHARE = 4;
/**
 * A segment too scattered for windows is flattened once its mapping debt
 * reaches 1/FLATTEN_EARLY of a whole copy's cost, less as the mapping budget
 * fills (#flattenPoint). 500-deep chain of 64 MiB, every link kept, one random
 * page written per link: at a whole copy's cost 3.9 GiB of layers (the
 * budget then forced 62 old links flat), at 1/4 0.67–1.04 GiB (the budget
 * reached in one run of two), at 1/4 less as it fills 0.74 GiB, 24k mappings.
 */
const FLATTEN_EARLY = 4;

/** Capacity asked for the copying pipe: the most an unprivileged process gets by default (fs.pipe-max-size). */
const PIPE_BYTES = 1 << 20;
/** Fewest pages copied through the pipe rather than with pwrite. */
const PIPE_MIN_PAGES = 64;
/** Fast restores drop every page, not only the written ones, once their scans have walked this many times the pages in memory. */
const DROP_ALL_AFTER = 64;
/** Ranges one process_madvise call takes (UIO_MAXIOV). */
const ADVISE_RANGES = 1024;
/** How a kernel without process_madvise(MADV_DONTNEED) on itself refuses it. */
const UNSUPPORTED = new Set([sys.EBADF, sys.EINVAL, sys.ENOSYS, sys.EPERM]);

/** Clean runs at least this long are copied file to file when compacting; shorter ones through memory. */
const FILE_COPY_MIN = 1;
/** How a kernel or sandbox refuses copy_file_range between memory files, or vmsplice and splice. */
const NO_FILE_COPY = new Set([sys.EXDEV, sys.EINVAL, sys.ENOSYS, sys.EOPNOTSUPP, sys.EPERM]);

/** How written pages are found. */
export type ScanMethod = 'pagemap-scan' | 'pagemap-read' | 'none';

// PAGEMAP_SCAN (Linux 6.7+, Documentation/admin-guide/mm/pagemap.rst):
// _IOWR('f', 16, struct pm_scan_arg), the struct being 12 × u64.
const PAGEMAP_SCAN = 0xc0606610;
const PM_SCAN_ARG_SIZE = 96;
const PAGE_REGION_SIZE = 24;
const PAGE_IS_FILE = 1n << 2n;
const PAGE_IS_PRESENT = 1n << 3n;
const PAGE_IS_SWAPPED = 1n << 4n;
const PAGE_IS_PFNZERO = 1n << 5n;
const SCAN_REGIONS = 2048;

// /proc/self/pagemap entry bits, as bits of the entry's high 32-bit word.
const PM_PRESENT = 1 << 31; // bit 63
const PM_SWAPPED = 1 << 30; // bit 62
const PM_FILE = 1 << 29; // bit 61 (file page or shared anonymous)
const PM_EXCLUSIVE = 1 << 24; // bit 56 (mapped exactly once: never the zero page)
const READ_ENTRIES = 1 << 16;

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
   * Layers (each an open file descriptor) all segments together may use
   * before memfork compacts to free some. Default: half the descriptor limit.
   */
  fdBudget?: number;
  /**
   * Whether to treat anonymous memory as reading the shared zero page, so a
   * first clone maps large never-written holes anonymously (default: detected;
   * tests force it to cover that path on kernels without a zero page).
   */
  zeroPage?: boolean;
  /** Restore by mapping over the target in place, as on kernels before 6.17 (tests cover that path with it). */
  restoreInPlace?: boolean;
  /**
   * Whether pages frozen in place are written through their layer's
   * moved-aside mapping (default) or through a pipe, as in layers without one
   * (tests cover both).
   */
  windowCopy?: boolean;
}

export class LinuxBackend implements Backend<LinuxSegment> {
  readonly name = 'linux' as const;
  readonly pageSize: number;
  readonly maxViewLength = maxViewLength;
  /** How this backend finds written pages. */
  readonly scanMethod: ScanMethod;
  /** Whether anonymous memory reads as the shared zero page (some VMs disable it). */
  readonly zeroPage: boolean;

  readonly #segments = new Set<LinuxSegment>();
  readonly #layers = new Set<Layer>();
  /** The newest layers, newest first: where a freeze looks for room to reuse. */
  #recent: Layer[] = [];
  #pagemapFd = -1;
  /** Scratch memory for PAGEMAP_SCAN: the argument struct, then the result array. */
  #scratch = 0n;
  #scratchArg: BigUint64Array | undefined;
  #scratchVec: BigUint64Array | undefined;
  #noexecSeal = true;
  /** A spare descriptor, given up when the process runs out so compaction can proceed. */
  #reserveFd = openReserve();
  #reclaiming = false;
  /** A pipe that copies segment memory into layers (vmsplice, then splice); null: none, use pwrite. */
  #pipe: { read: number; write: number; size: number } | null = openPipe();
  /** Whether vmsplice and splice work here; cleared on the first refusal. */
  #splicing = true;
  /** (address, length) pairs for vmsplice. */
  #spliceRanges: BigUint64Array | undefined;
  /** Whether mremap can move several mappings in one call (Linux 6.17+); cleared on the first refusal. */
  #multiMove = true;
  /** Whether process_madvise(2) takes MADV_DONTNEED for this process (Linux 6.15+); cleared on the first refusal. */
  #vectorAdvise = true;
  /** Whether copy_file_range(2) copies between memory files here; cleared on the first refusal. */
  #fileCopy = true;
  /** (address, length) pairs for process_madvise. */
  #adviseRanges: BigUint64Array | undefined;
  /** Mappings all live segments use: the sum of their run counts. */
  #mapCount = 0;
  /** Layers holding a moved-aside mapping (Layer.window): one mapping each. */
  #windows = 0;
  /** Whether pages frozen in place in a layer with a window are written through it (see #copyToWindow). */
  readonly #windowCopy: boolean;
  /** Moved-aside mappings whose unmapping failed, retried with the next. */
  readonly #strays: { addr: bigint; length: number }[] = [];
  /** Whether mremap moves a shared mapping with MREMAP_DONTUNMAP (Linux 5.13+); cleared on the first refusal. */
  #moveAsideWorks = true;
  /** The budget fixed by the `mapBudget` option, or undefined: the process's (see map-budget.ts). */
  readonly #fixedBudget: number | undefined;
  readonly #processBudget: ProcessMapBudget | undefined;
  /** Runs one segment may reach before it is compacted. */
  readonly maxRuns: number;
  /** Layers all segments may hold open before memfork compacts to close some. */
  readonly fdBudget: number;

  constructor(options: LinuxOptions = {}) {
    sys.loadLibc();
    this.pageSize = sys.getpagesize();
    const probe = sys.mmap(null, this.pageSize, sys.PROT_READ | sys.PROT_WRITE, sys.MAP_PRIVATE | sys.MAP_ANONYMOUS, -1, 0);
    try {
      this.scanMethod = this.#chooseScan(options.scan);
      // Safety: the probe page is mapped above and unmapped only below.
      void new Uint8Array(sys.view(probe, 1))[0];
      this.zeroPage = options.zeroPage ?? this.#isZeroPage(probe);
    } finally {
      sys.munmap(probe, this.pageSize);
    }
    this.maxRuns = Math.max(8, options.maxRuns ?? 32768);
    this.#fixedBudget = options.mapBudget === undefined ? undefined : Math.max(16, options.mapBudget);
    this.#processBudget = options.mapBudget === undefined ? new ProcessMapBudget() : undefined;
    this.fdBudget = Math.max(4, options.fdBudget ?? Math.floor((sys.fdLimit() ?? 1024) / 2));
    this.#multiMove = options.restoreInPlace !== true;
    this.#windowCopy = options.windowCopy ?? true;
  }

  /** The most mappings all segments of this backend may use now. */
  get mapBudget(): number {
    return this.#budget(0);
  }

  /** The mapping budget, as it stands for a decision that needs `needed` more mappings. */
  #budget(needed: number): number {
    if (this.#fixedBudget !== undefined) return this.#fixedBudget;
    return Math.max(16, this.#processBudget!.limit(this.#mapCount + this.#windows, needed));
  }

  /** Whether `needed` more mappings fit the budget. */
  #fits(needed: number): boolean {
    return this.#mapCount + this.#windows + needed <= this.#budget(needed);
  }

  // ---- Backend ---------------------------------------------------------------

  create(length: number): LinuxSegment {
    const pages = length / this.pageSize;
    const layer = this.#newLayer(length);
    let addr: bigint;
    // Placed at a multiple of its page-table span, so the first clone can
    // move its page tables aside whole (#moveAside).
    const at = this.#reserveAligned(length, spanFor(length, this.pageSize), 0n);
    try {
      const flags = sys.MAP_SHARED | sys.MAP_NORESERVE | (at === null ? 0 : sys.MAP_FIXED);
      addr = sys.mmap(at, length, sys.PROT_READ | sys.PROT_WRITE, flags, layer.fd, 0);
    } catch (err) {
      if (at !== null) this.#unreserve(at, length);
      this.#closeLayer(layer);
      throw err;
    }
    const seg: LinuxSegment = { addr, length, pages, mapped: true, shared: layer, runs: [], debt: 0, scanned: 0, released: false };
    this.#setRuns(seg, [{ start: 0, end: pages, layer }]);
    this.#segments.add(seg);
    return seg;
  }

  clone(source: LinuxSegment): LinuxSegment {
    this.#prepare(source);
    // The clone shares the source's run list and is mapped only when its
    // memory is first asked for (#materialize): a snapshot kept only to be
    // restored from, or never looked at, costs no mapping.
    this.#ensureRoom(1, 0);
    const addr = this.#reserve(null, source.length);
    const seg: LinuxSegment = {
      addr,
      mapped: false,
      length: source.length,
      pages: source.pages,
      shared: null,
      runs: [],
      debt: source.debt,
      scanned: 0,
      released: false,
    };
    this.#mapCount++;
    this.#setRuns(seg, source.runs);
    this.#segments.add(seg);
    return seg;
  }

  /**
   * Maps an unmapped segment's run list over its reservation. Compacts it
   * first when its runs alone would not fit the mapping budget (one run
   * always fits: it replaces the reservation). Nothing changes on failure.
   */
  #materialize(seg: LinuxSegment): void {
    if (seg.mapped) return;
    const extra = seg.runs.length - 1;
    if (seg.runs.length > this.maxRuns || !this.#fits(extra)) {
      this.#compactUnmapped(seg);
    }
    this.#ensureRoom(seg.runs.length - 1, seg.pages);
    let touched = false;
    try {
      // Safety: MAP_FIXED over the segment's own reservation, which no view aliases yet.
      this.#mapRuns(seg.addr, seg.runs, seg.length, () => (touched = true));
    } catch (err) {
      if (touched) this.#reserve(seg.addr, seg.length);
      throw err;
    }
    seg.mapped = true;
    this.#mapCount += seg.runs.length - 1;
    for (const [layer, ranges] of rangesByLayer(seg.runs)) layer.mapped.addAll(ranges, 1);
    seg.debt = chargeMapping(seg);
  }

  /** Maps PROT_NONE reserved address space at `addr` (MAP_FIXED), or anywhere when `addr` is null. */
  #reserve(addr: bigint | null, length: number): bigint {
    const flags = sys.MAP_PRIVATE | sys.MAP_ANONYMOUS | sys.MAP_NORESERVE | (addr === null ? 0 : sys.MAP_FIXED);
    return sys.mmap(addr, length, sys.PROT_NONE, flags, -1, 0);
  }

  /**
   * Rewrites an unmapped segment into one new layer, file to file: its layer
   * runs copied with copy_file_range(2), its anonymous runs left as holes
   * (both read as zero). Where the kernel will not copy between memory
   * files, it is flattened through a temporary mapping instead.
   */
  #compactUnmapped(seg: LinuxSegment): void {
    if (seg.runs.length <= 1) return;
    const layer = this.#newLayer(seg.length);
    try {
      if (this.#fileCopy) {
        try {
          this.#copyRunsFileToFile(seg.runs, layer);
        } catch (err) {
          if (!NO_FILE_COPY.has(errnoOf(err))) throw err;
          this.#fileCopy = false;
        }
      }
      if (!this.#fileCopy) {
        // Through memory: the run list mapped for the copy, then unmapped.
        const scratch = this.#mapRuns(null, seg.runs, seg.length);
        try {
          const data = seg.runs.filter((r) => r.layer !== null);
          this.#writeFromMemory(layer.fd, scratch, data);
        } finally {
          this.#unreserve(scratch, seg.length);
        }
      }
    } catch (err) {
      this.#closeLayer(layer);
      throw err;
    }
    this.#setRuns(seg, [{ start: 0, end: seg.pages, layer }]);
    seg.debt = 0;
  }

  /**
   * Copies each layer run of `runs` into `layer` at the same offsets; of runs
   * of DATA_SCAN_MIN pages or more, only the data, not the holes. (Looking
   * for a hole walks the file from there to the next hole, however far past
   * the run that is: per short run, that walk would cost more than the copy.)
   */
  #copyRunsFileToFile(runs: Runs, layer: Layer): void {
    for (const r of runs) {
      if (r.layer === null) continue;
      const data = r.end - r.start < DATA_SCAN_MIN ? [r] : this.#dataRanges(r.layer.fd, r.start, r.end);
      for (const d of data) {
        sys.copyFileRange(r.layer.fd, layer.fd, d.start * this.pageSize, (d.end - d.start) * this.pageSize);
      }
    }
  }

  restore(target: LinuxSegment, source: LinuxSegment): void {
    this.#prepare(source);
    if (!target.mapped) {
      // Not mapped: the run list is the whole state.
      this.#setRuns(target, source.runs);
      target.debt = source.debt;
      return;
    }
    if (target.shared === null && target.runs === source.runs) {
      // Same run list: target differs from source only in the pages it wrote
      // since. Dropping them reverts each to its layer's contents.
      this.#dropWritten(target);
      return;
    }
    if (this.#restoreByCopy(target, source)) return;
    if (this.#multiMove) {
      // The source's runs are mapped at a scratch address first, then moved
      // over the target in one mremap: any failure leaves the target as it
      // was. (mremap checks the mapping limit before it unmaps anything.)
      this.#ensureRoom(source.runs.length, source.pages);
      let scratch: bigint;
      let reserved = false;
      try {
        scratch = this.#mapRuns(null, source.runs, source.length, () => (reserved = true));
      } catch (err) {
        // No address space for a second copy of the range (RLIMIT_AS):
        // mapping over the target in place needs none. (A failure after the
        // range was reserved is the mapping limit, which in place would hit too.)
        if (reserved || (err as SegmentError).code !== 'ENOMEM') throw err;
        this.#restoreInPlace(target, source);
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
        const errno = (err as SegmentError).errno;
        // Before Linux 6.17, mremap moves one mapping at a time only.
        if (errno !== sys.EFAULT && errno !== sys.EINVAL) throw err;
        this.#multiMove = false;
        this.#restoreInPlace(target, source);
        return;
      }
      target.shared = null;
      this.#setRuns(target, source.runs);
    } else {
      this.#restoreInPlace(target, source);
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
   * before. Returns false where mapping is the better way.
   */
  #restoreByCopy(target: LinuxSegment, source: LinuxSegment): boolean {
    const free = this.#budget(source.runs.length) - this.#mapCount - this.#windows;
    if (source.runs.length <= Math.max(2 * COMPACT_WINDOWS + 1, free / RESTORE_COPY_SHARE)) return false;
    const fits = source.runs.length <= free;
    if (fits && pageCount(differing(target.runs, source.runs)) > target.pages / RESTORE_COPY_SHARE) return false;
    this.#prepare(target);
    const diff = differing(target.runs, source.runs);
    if (fits && pageCount(diff) > target.pages / RESTORE_COPY_SHARE) return false;
    const page = this.pageSize;
    try {
      for (const r of select(source.runs, diff)) {
        const offset = r.start * page;
        const length = (r.end - r.start) * page;
        const at = target.addr + BigInt(offset);
        // Safety: the range lies inside the target's own mapping.
        if (r.layer === null) new Uint8Array(sys.view(at, length)).fill(0);
        else this.#readInto(r.layer.fd, at, length, offset);
      }
    } catch (err) {
      // Only the target's private copies of `diff` changed: dropping them
      // reverts those pages to its run list, which is what it read before.
      for (const r of diff) sys.madvise(target.addr + BigInt(r.start * page), (r.end - r.start) * page, sys.MADV_DONTNEED);
      throw err;
    }
    return true;
  }

  /** Reads `length` bytes of file `fd` at `offset` into memory at `at`, through short reads. */
  #readInto(fd: number, at: bigint, length: number, offset: number): void {
    for (let done = 0; done < length; ) {
      const n = sys.pread(fd, at + BigInt(done), length - done, offset + done);
      if (n <= 0) throw new SegmentError(`pread EIO: short read of a memory file`, 'EIO', sys.EIO, 'pread');
      done += n;
    }
  }

  /**
   * Drops the pages `seg` wrote since its run list was set (madvise(2),
   * MADV_DONTNEED): each private page then reads its layer's contents again.
   */
  #dropWritten(seg: LinuxSegment): void {
    const { written, present } = this.#scanForDrop(seg);
    if (written.length === 0) return;
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
    if (!all && written.length <= ADVISE_RANGES && this.#dropRanges(seg, written)) return;
    sys.madvise(seg.addr, seg.length, sys.MADV_DONTNEED);
    seg.scanned = 0;
  }

  /** The written ranges of `seg`, and how many of its pages are in memory at all (written or read). */
  #scanForDrop(seg: LinuxSegment): { written: Range[]; present: number } {
    if (this.scanMethod !== 'pagemap-scan') {
      const written = this.scanWritten(seg);
      return { written, present: pageCount(written) };
    }
    let present = 0;
    const written: Range[] = [];
    this.#scanIoctl(seg.addr, seg.pages, (start, end, categories) => {
      present += end - start;
      if ((categories & (PAGE_IS_FILE | PAGE_IS_PFNZERO)) === 0n) appendRange(written, start, end);
    });
    return { written, present };
  }

  /**
   * Drops the private pages of `seg` under `ranges` with process_madvise(2),
   * up to ADVISE_RANGES ranges a call; false if the kernel refused or stopped
   * short. Naming only these ranges matters twice over: the other private
   * pages stay, and the kernel flushes only their TLB entries (one madvise
   * over a whole segment flushes the whole TLB, which costs more than the
   * dropping where page tables are shadowed: virtual machines without nested
   * paging, see the bench notes).
   */
  #dropRanges(seg: LinuxSegment, ranges: readonly Range[]): boolean {
    if (!this.#vectorAdvise) return false;
    const iov = (this.#adviseRanges ??= new BigUint64Array(ADVISE_RANGES * 2));
    for (let from = 0; from < ranges.length; from += ADVISE_RANGES) {
      const batch = ranges.slice(from, from + ADVISE_RANGES);
      let bytes = 0;
      for (const [i, r] of batch.entries()) {
        const length = (r.end - r.start) * this.pageSize;
        iov[i * 2] = seg.addr + BigInt(r.start * this.pageSize);
        iov[i * 2 + 1] = BigInt(length);
        bytes += length;
      }
      try {
        if (sys.processMadvise(iov, batch.length, sys.MADV_DONTNEED) !== bytes) return false;
      } catch (err) {
        // Before Linux 6.15 (no PIDFD_SELF) or 6.13 (no MADV_DONTNEED here):
        // stop trying. Any other failure: the caller decides.
        if (UNSUPPORTED.has((err as SegmentError).errno ?? 0)) this.#vectorAdvise = false;
        return false;
      }
    }
    return true;
  }

  /** restore() where mremap cannot move several mappings: map over the target, putting it back on failure. */
  #restoreInPlace(target: LinuxSegment, source: LinuxSegment): void {
    // Mapping the source's runs takes one call per run. If one fails midway,
    // the target must be put back, so its written pages go into a layer first
    // (with a single run the first call replaces everything or nothing).
    if (target.shared === null && source.runs.length > 1) {
      const dirty = coalesce(this.scanWritten(target), JOIN_GAP);
      this.#ensureRoom(2 * dirty.length, target.pages);
      this.#freeze(target, dirty);
    }
    this.#ensureRoom(source.runs.length - target.runs.length, target.pages);
    const old = target.runs;
    const oldShared = target.shared;
    // A MAP_FIXED mmap that fails leaves the old mapping in place, so the
    // target needs putting back only once the first call has gone through.
    let touched = false;
    try {
      this.#mapRuns(target.addr, source.runs, target.length, () => (touched = true));
    } catch (err) {
      if (touched) this.#putBack(target, oldShared, old);
      throw err;
    }
    target.shared = null;
    this.#setRuns(target, source.runs);
  }

  release(seg: LinuxSegment): void {
    if (!seg.released) {
      sys.munmap(seg.addr, seg.length);
      seg.released = true;
      this.#segments.delete(seg);
      if (!seg.mapped) this.#mapCount--;
      this.#setRuns(seg, []);
    }
    // A layer this closed may have left its moved-aside mapping behind:
    // close() fails then, and calling it again tries once more.
    if (this.#strays.length > 0) this.#unmapStrays();
  }

  address(seg: LinuxSegment): bigint {
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
    for (const [layer, ranges] of rangesByLayer(select(seg.runs, subtract([{ start: 0, end: seg.pages }], dirty)))) {
      const alone = layer.refs.countEqualEach(ranges, 1);
      ranges.forEach((r, i) => {
        priv += alone[i]!;
        shared += r.end - r.start - alone[i]!;
      });
    }
    return { privateBytes: priv * this.pageSize, sharedBytes: shared * this.pageSize, mappings: seg.mapped ? seg.runs.length : 1 };
  }

  memory(): BackendMemory {
    let layerBytes = 0;
    for (const layer of this.#layers) layerBytes += sys.allocatedBytes(layer.fd);
    let privateBytes = 0;
    for (const seg of this.#segments) privateBytes += this.stats(seg).privateBytes;
    return { layers: this.#layers.size, layerBytes, privateBytes, mappings: this.#mapCount + this.#windows };
  }

  shutdown(): void {
    for (const seg of [...this.#segments]) {
      try {
        this.release(seg);
      } catch {
        // Nothing can be reported from an exiting thread.
      }
    }
    for (const layer of [...this.#layers]) this.#closeLayer(layer);
    for (const fd of [this.#pagemapFd, this.#reserveFd]) if (fd >= 0) sys.closeFd(fd);
    this.#closePipe();
    this.#pagemapFd = -1;
    this.#reserveFd = -1;
    if (this.#scratch !== 0n) {
      try {
        sys.munmap(this.#scratch, PM_SCAN_ARG_SIZE + SCAN_REGIONS * PAGE_REGION_SIZE);
      } catch {
        // As above.
      }
      this.#scratch = 0n;
    }
  }

  // ---- copy-on-write machinery ------------------------------------------------

  /**
   * Brings `seg` to the state a clone or restore can share: private, its
   * written pages in a layer, and no more runs than `maxRuns`.
   */
  #prepare(seg: LinuxSegment): void {
    // An unmapped segment has written nothing, and its runs cost no mapping.
    if (!seg.mapped) return;
    // A segment made private just now has written nothing since.
    const fresh = seg.shared !== null;
    this.#makePrivate(seg);
    const dirty = fresh ? [] : coalesce(this.#freezeInPlace(seg, this.scanWritten(seg)), JOIN_GAP);
    // Freezing adds up to two mappings per written run.
    this.#ensureRoom(2 * dirty.length, seg.pages);
    this.#freeze(seg, dirty);
    if (seg.runs.length > this.maxRuns) {
      this.#compact(seg, this.maxRuns >> 2, Infinity);
    } else if (seg.runs.length > 2 * COMPACT_WINDOWS + 1) {
      const limit = seg.pages >> 3;
      const plan = this.#plan(seg, COMPACT_WINDOWS, limit);
      if (plan !== undefined && seg.debt >= COPY_COST * pageCount(plan.windows)) {
        this.#compact(seg, COMPACT_WINDOWS, limit);
      } else if (plan === undefined && seg.debt >= this.#flattenPoint(seg)) {
        // Scattered so widely that a few windows would copy too much shared
        // memory: flatten once the mapping work has cost part of a copy.
        this.#compact(seg, 0, seg.pages);
      }
    }
  }

  /**
   * The mapping debt at which `seg`, too scattered for windows, is flattened:
   * a fraction of a whole copy's cost (FLATTEN_EARLY), smaller as all
   * segments' mappings fill the budget. Runs spend that shared budget, and a
   * flattened segment serves all its later clones, where the budget's last
   * resort, flattening the most fragmented segments, serves only them.
   */
  #flattenPoint(seg: LinuxSegment): number {
    const free = 1 - (this.#mapCount + this.#windows) / this.#budget(0);
    return ((COPY_COST * seg.pages) / FLATTEN_EARLY) * Math.max(0.05, free);
  }

  /**
   * Plans a compaction of `seg` down to `windows` ranges off its main layer
   * (0: the whole segment as one range). Copying a page that another segment
   * still holds puts it in memory twice, so a plan may copy at most `limit`
   * such pages: gaps between off-main runs are joined cheapest first until
   * the windows are few enough or the limit is reached. Returns undefined
   * when no plan within the limit reduces the runs.
   */
  #plan(seg: LinuxSegment, windows: number, limit: number): { windows: Range[]; duplicated: number } | undefined {
    const runs = seg.runs;
    const shared = sharedPages(runs);
    if (windows === 0) {
      let dup = 0;
      for (const n of shared) dup += n;
      return dup <= limit && runs.length > 1 ? { windows: [{ start: 0, end: seg.pages }], duplicated: dup } : undefined;
    }
    // Off-main ranges, and the main-layer gaps between them with their cost.
    const base = largestLayer(runs);
    const ranges: { start: number; end: number }[] = [];
    const gaps: { at: number; cost: number; size: number }[] = [];
    let dup = 0;
    let pendingGap: { cost: number; size: number } | undefined;
    runs.forEach((r, i) => {
      if (r.layer === base) {
        if (ranges.length > 0) pendingGap = { cost: shared[i]!, size: r.end - r.start };
        return;
      }
      dup += shared[i]!;
      const last = ranges[ranges.length - 1];
      if (last !== undefined && last.end === r.start) {
        last.end = r.end;
      } else {
        if (last !== undefined && pendingGap !== undefined) gaps.push({ at: ranges.length - 1, ...pendingGap });
        ranges.push({ start: r.start, end: r.end });
      }
      pendingGap = undefined;
    });
    if (ranges.length === 0 || dup > limit) return undefined;
    gaps.sort((a, b) => a.cost - b.cost || a.size - b.size);
    const joined = new Set<number>();
    let count = ranges.length;
    for (const g of gaps) {
      if (count <= windows || dup + g.cost > limit) break;
      dup += g.cost;
      joined.add(g.at);
      count--;
    }
    const out: Range[] = [];
    let start = ranges[0]!.start;
    for (let i = 0; i < ranges.length; i++) {
      if (joined.has(i)) continue;
      out.push({ start, end: ranges[i]!.end });
      if (i + 1 < ranges.length) start = ranges[i + 1]!.start;
    }
    return 2 * out.length + 1 < runs.length ? { windows: out, duplicated: dup } : undefined;
  }

  /**
   * Makes room for `needed` more mappings under the budget by compacting the
   * most fragmented segments; throws ENOMEM when even that cannot. The
   * compactions together may duplicate at most `pages` shared pages: never
   * more memory than copying the segment at hand would take.
   */
  #ensureRoom(needed: number, pages: number): void {
    if (this.#fits(needed)) return;
    let allowance = Math.max(pages, duplicateLimit(pages));
    // First the cheap way: a few windows off the main layer; then flatten.
    for (const windows of [COMPACT_WINDOWS, 0]) {
      const bySize = [...this.#segments]
        .filter((s) => s.mapped && s.runs.length > 2 * windows + 1)
        .sort((a, b) => b.runs.length - a.runs.length);
      for (const seg of bySize) {
        allowance -= this.#compact(seg, windows, allowance);
        if (this.#fits(needed)) return;
      }
    }
    throw new SegmentError(
      `mmap ENOMEM: mapping budget exhausted (${this.#mapCount + this.#windows} of ${this.#budget(needed)} mappings in use, ${needed} more needed; ` +
        'compacting further would copy pages other segments share)',
      'ENOMEM',
      12,
      'mmap',
    );
  }

  /**
   * Rewrites the fragmented parts of `seg` into a new layer, as `#plan`
   * chooses them, so it has fewer runs. Atomic in content, like a freeze:
   * each remap maps the same bytes.
   */
  /** Returns the shared pages it duplicated. */
  #compact(seg: LinuxSegment, windows: number, limit = duplicateLimit(seg.pages)): number {
    const plan = this.#plan(seg, windows, limit);
    if (plan === undefined) return 0;
    if (!seg.mapped) {
      this.#compactUnmapped(seg);
      return plan.duplicated;
    }
    this.#freeze(seg, plan.windows, this.scanWritten(seg));
    seg.debt = 0;
    return plan.duplicated;
  }

  /**
   * Turns a fresh MAP_SHARED segment into a private mapping of its layer, at
   * the same address, so the layer can be shared. Contents are unchanged at
   * every step; afterwards the layer is never written again.
   */
  #makePrivate(seg: LinuxSegment): void {
    const layer = seg.shared;
    if (layer === null) return;
    const data = this.zeroPage ? this.#dataRanges(layer.fd, 0, seg.pages) : [{ start: 0, end: seg.pages }];
    // Replacing a mapping tears down its page-table entries one by one (a
    // quarter of a microsecond or more each: most of a first clone's cost).
    // Moved aside first, they go with the layer instead.
    this.#moveAside(seg, layer);
    // Safety: MAP_FIXED over the segment's own whole mapping; views alias the
    // same addresses and read the same bytes before and after.
    sys.mmap(seg.addr, seg.length, sys.PROT_READ | sys.PROT_WRITE, sys.MAP_PRIVATE | sys.MAP_FIXED | sys.MAP_NORESERVE, layer.fd, 0);
    seg.shared = null;
    // Never-written ranges become anonymous memory, which reads as the zero
    // page without allocating (reading a memfd hole allocates a page). Each
    // costs up to two mappings, in this segment and every clone that inherits
    // its run list, so only the largest few are worth it, and only within the
    // budget; the rest stay on the layer (same contents: reading them
    // allocates, the documented cost). If a mapping fails, that range simply
    // stays on the layer too.
    const holes = worthwhileHoles(subtract([{ start: 0, end: seg.pages }], data));
    // A hole adds two mappings here and two in the clone being made: take at
    // most an eighth of the free budget, so the clone never forces a compaction.
    const most = Math.floor((this.#budget(0) - this.#mapCount - this.#windows) / 8);
    const done: Range[] = [];
    for (const h of holes) {
      if (done.length >= most) break;
      try {
        this.#mapRange(seg.addr, h, null);
      } catch {
        break;
      }
      done.push(h);
    }
    if (done.length > 0) this.#replace(seg, done.sort((a, b) => a.start - b.start), null);
  }

  /**
   * Moves the pages `seg` wrote since its last freeze into a new layer and
   * remaps them from it, so its run list describes its contents exactly.
   * Atomic in content: each step leaves every page reading as before.
   */
  #freeze(seg: LinuxSegment, dirty: Range[] = this.scanWritten(seg), written: readonly Range[] = dirty): void {
    if (dirty.length === 0) return;
    const reused = this.#reusableLayer(seg.length, dirty);
    const layer = reused ?? this.#newLayer(seg.length);
    const done: Range[] = [];
    try {
      this.#fill(layer, seg, dirty, written);
      // Safety: each remap covers pages of the segment's own mapping with a
      // layer holding exactly their current bytes.
      for (const r of dirty) {
        this.#mapRange(seg.addr, r, layer);
        done.push(r);
      }
    } finally {
      // Whatever was remapped is now in the layer; the rest stays private.
      if (done.length > 0) {
        this.#replace(seg, done, layer);
        for (const r of subtract(dirty, done)) this.#punch(layer, r);
      } else if (reused === undefined) {
        this.#closeLayer(layer);
      } else {
        for (const r of dirty) this.#punch(layer, r);
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
   * anonymous runs, or on layer pages another segment shares).
   *
   * A failure leaves the segment reading as before: its private copies stay
   * until dropped, and the layer pages changed are its alone.
   */
  #freezeInPlace(seg: LinuxSegment, dirty: Range[]): Range[] {
    if (dirty.length === 0) return dirty;
    const owned: Range[] = [];
    for (const [layer, ranges] of rangesByLayer(select(seg.runs, dirty))) {
      let alone = layer.refs.rangesWithCount(ranges, 1);
      // Pages other segments use but only `seg` maps: their contents move to
      // a history layer, with those segments' run lists, and then they are
      // `seg`'s alone. The segment keeps its one mapping however scattered
      // its writes; the old contents are copied once, as fork() would.
      const shared = subtract(ranges, alone);
      const unmappedSharers = shared.length === 0 ? [] : layer.mapped.rangesWithCount(shared, 1);
      if (unmappedSharers.length > 0 && this.#evict(seg, layer, unmappedSharers)) {
        alone = coalesce([...alone, ...unmappedSharers].sort((a, b) => a.start - b.start));
      }
      // Safety: only `seg` maps these layer pages, and it holds private copies of them.
      if (layer.window !== 0n && this.#windowCopy) this.#copyToWindow(layer, seg.addr, alone);
      else this.#writeFromMemory(layer.fd, seg.addr, alone);
      for (const r of alone) owned.push(r);
    }
    if (owned.length === 0) return dirty;
    owned.sort((a, b) => a.start - b.start);
    if (!this.#dropRanges(seg, owned)) {
      // Only these ranges may go: the segment's other private pages are not in any layer yet.
      for (const r of owned) sys.madvise(seg.addr + BigInt(r.start * this.pageSize), (r.end - r.start) * this.pageSize, sys.MADV_DONTNEED);
    }
    return subtract(dirty, owned);
  }

  /**
   * Copies `layer`'s pages under `ranges` into a history layer, file to
   * file, and points every segment other than `seg` that uses them there.
   * Only for pages no segment but `seg` maps: the others are run lists, so
   * re-pointing them is bookkeeping. Afterwards only `seg` uses the pages.
   * Returns false, changing nothing, where the kernel will not copy between
   * memory files; a failure also changes nothing.
   */
  #evict(seg: LinuxSegment, layer: Layer, ranges: readonly Range[]): boolean {
    if (!this.#fileCopy) return false;
    const reused = this.#reusableLayer(layer.length, ranges);
    const history = reused ?? this.#newLayer(layer.length);
    try {
      for (const r of ranges) {
        sys.copyFileRange(layer.fd, history.fd, r.start * this.pageSize, (r.end - r.start) * this.pageSize);
      }
    } catch (err) {
      if (reused === undefined) this.#closeLayer(history);
      else for (const r of ranges) this.#punch(history, r);
      if (!NO_FILE_COPY.has(errnoOf(err))) throw err;
      this.#fileCopy = false;
      return false;
    }
    // Segments sharing one run list get one new run list. Only references
    // move, from `layer` to `history` over the same pages, so the counts are
    // changed by that difference alone (the segments are not mapped: no
    // mapping counts change).
    const moved = new Map<Runs, { runs: Runs; onLayer: Range[]; users: number }>();
    for (const other of this.#segments) {
      if (other === seg || other.released) continue;
      let entry = moved.get(other.runs);
      if (entry === undefined) {
        const onLayer: Range[] = select(other.runs, ranges).filter((r) => r.layer === layer);
        entry = { runs: onLayer.length === 0 ? other.runs : overlay(other.runs, onLayer, history), onLayer, users: 0 };
        moved.set(other.runs, entry);
      }
      if (entry.onLayer.length === 0) continue;
      entry.users++;
      other.runs = entry.runs;
    }
    for (const { onLayer, users } of moved.values()) {
      if (users === 0) continue;
      history.refs.addAll(onLayer, users);
      layer.refs.addAll(onLayer, -users);
    }
    if (history.refs.empty) this.#closeLayer(history);
    return true;
  }

  /**
   * Writes the memory under `ranges` of pages from `base` into `layer`
   * through its moved-aside mapping (see #moveAside): a memory copy, no system
   * call, and the mapping already has page-table entries for every page the
   * segment wrote before its first clone (1 GiB, 1% of pages at random: 1.4 µs
   * a page, against 4.4 µs through a pipe).
   */
  #copyToWindow(layer: Layer, base: bigint, ranges: readonly Range[]): void {
    const page = this.pageSize;
    for (const r of ranges) {
      const off = BigInt(r.start * page);
      // Safety: both ranges lie inside mappings of `layer.length` bytes that
      // stay mapped for the call: the segment's own and the layer's window.
      sys.copyMemory(layer.window + off, base + off, (r.end - r.start) * page);
    }
  }

  /**
   * Writes the memory under the sorted `ranges` of pages from `base` into
   * file `fd` at the same offsets. Through a pipe: vmsplice(2) takes the
   * pages by reference and splice(2) copies them into the file, so the kernel
   * never reads them through the process's page tables. That is what pwrite
   * does, and where page tables are shadowed by a hypervisor each first
   * access costs a trap (see the bench notes); pwrite is the fallback.
   */
  #writeFromMemory(fd: number, base: bigint, ranges: readonly Range[]): void {
    if (ranges.length === 0) return;
    // A pipe has a fixed cost per copy (up to a millisecond for the first into
    // a file, measured): a few pages go with pwrite.
    const many = this.#splicing && pageCount(ranges) >= PIPE_MIN_PAGES;
    if (many && this.#pipe === null) this.#pipe = openPipe();
    const pipe = many ? this.#pipe : null;
    const pwriteAll = () => {
      for (const r of ranges) {
        sys.pwriteAll(fd, base + BigInt(r.start * this.pageSize), (r.end - r.start) * this.pageSize, r.start * this.pageSize);
      }
    };
    if (pipe === null) {
      pwriteAll();
      return;
    }
    const iov = (this.#spliceRanges ??= new BigUint64Array(ADVISE_RANGES * 2));
    const page = this.pageSize;
    // Cursor: the range being written and the byte offset reached in it.
    let i = 0;
    let at = ranges[0]!.start * page;
    try {
      while (i < ranges.length) {
        // As much as the pipe holds, from the cursor on.
        let n = 0;
        let bytes = 0;
        for (let j = i, pos = at; j < ranges.length && n < ADVISE_RANGES && bytes < pipe.size; ) {
          const end = ranges[j]!.end * page;
          const length = Math.min(end - pos, pipe.size - bytes);
          iov[n * 2] = base + BigInt(pos);
          iov[n * 2 + 1] = BigInt(length);
          n++;
          bytes += length;
          pos += length;
          if (pos === end && ++j < ranges.length) pos = ranges[j]!.start * page;
        }
        let taken = sys.vmsplice(pipe.write, iov, n);
        if (taken <= 0) throw new SegmentError('vmsplice EIO: the pipe took no pages', 'EIO', 5, 'vmsplice');
        while (taken > 0) {
          const end = ranges[i]!.end * page;
          const length = Math.min(end - at, taken);
          sys.spliceAll(pipe.read, fd, at, length);
          taken -= length;
          at += length;
          if (at === end && ++i < ranges.length) at = ranges[i]!.start * page;
        }
      }
    } catch (err) {
      // The pipe may hold pages still: a new one is made next time.
      this.#closePipe();
      // Refused outright (a sandbox without vmsplice, say): from now on, and
      // for these ranges too, pwrite. Writing the same bytes again is harmless.
      if (!NO_FILE_COPY.has((err as SegmentError).errno ?? 0)) throw err;
      this.#splicing = false;
      pwriteAll();
    }
  }

  #closePipe(): void {
    if (this.#pipe === null) return;
    sys.closeFd(this.#pipe.read);
    sys.closeFd(this.#pipe.write);
    this.#pipe = null;
  }

  /**
   * Writes the current bytes of `seg` under `ranges` into `layer` at the same
   * offsets. Written pages come from the segment's memory. Long stretches it
   * has not written since its last freeze are copied from the layer they map,
   * file to file inside the kernel: reading them through the mapping would
   * fault each one in first.
   */
  #fill(layer: Layer, seg: LinuxSegment, ranges: readonly Range[], written: readonly Range[]): void {
    const fromLayers = this.#fileCopy
      ? select(seg.runs, subtract(ranges, written)).filter(
          (r): r is Run<Layer> => r.layer !== null && r.layer !== layer && r.end - r.start >= FILE_COPY_MIN,
        )
      : [];
    this.#writeFromMemory(layer.fd, seg.addr, subtract(ranges, fromLayers));
    for (const [i, r] of fromLayers.entries()) {
      const offset = r.start * this.pageSize;
      const length = (r.end - r.start) * this.pageSize;
      try {
        sys.copyFileRange(r.layer.fd, layer.fd, offset, length);
      } catch (err) {
        // Refused outright (a kernel or sandbox without it for memory files):
        // the rest goes through memory, now and from then on.
        if (!NO_FILE_COPY.has((err as SegmentError).errno ?? 0)) throw err;
        this.#fileCopy = false;
        this.#writeFromMemory(layer.fd, seg.addr, fromLayers.slice(i));
        return;
      }
    }
  }

  /**
   * A recent layer of this length whose pages under `ranges` nobody uses.
   * Writing those is safe although the layer is mapped private elsewhere: a
   * range no segment references is mapped nowhere, and a private mapping
   * shows file changes only at the offsets it maps. Reuse saves a file
   * descriptor, and lets neighbouring runs from one layer merge.
   */
  #reusableLayer(length: number, ranges: readonly Range[]): Layer | undefined {
    let tries = 0;
    for (const layer of this.#recent) {
      if (++tries > REUSE_CANDIDATES) break;
      if (layer.fd >= 0 && layer.length === length && !layer.refs.overlaps(ranges)) return layer;
    }
    return undefined;
  }

  /** Records that `ranges` of `seg` are now mapped from `layer`. */
  #replace(seg: LinuxSegment, ranges: readonly Range[], layer: Layer | null): void {
    this.#setRuns(seg, overlay(seg.runs, ranges, layer));
    if (layer !== null && layer.refs.empty) this.#closeLayer(layer);
  }

  /** Gives `seg` a new run list, keeping reference counts and the mapping count. */
  #setRuns(seg: LinuxSegment, runs: Runs): void {
    const old = seg.runs;
    const mapped = seg.mapped;
    this.#ref(runs, 1, mapped);
    seg.runs = runs;
    if (mapped) this.#mapCount += runs.length - old.length;
    this.#ref(old, -1, mapped);
  }

  /**
   * Maps `runs` at `at` (MAP_FIXED) or anywhere (`at` null): the layer with
   * the most pages in one call over the whole length, the other runs on top.
   * On failure a new mapping is unmapped; a fixed one is left to the caller.
   */
  #mapRuns(at: bigint | null, runs: Runs, length: number, onFirstMapped?: () => void): bigint {
    const base = largestLayer(runs);
    const flags = sys.MAP_PRIVATE | sys.MAP_NORESERVE | (base === null ? sys.MAP_ANONYMOUS : 0) | (at === null ? 0 : sys.MAP_FIXED);
    const addr = sys.mmap(at, length, sys.PROT_READ | sys.PROT_WRITE, flags, base === null ? -1 : base.fd, 0);
    onFirstMapped?.();
    try {
      for (const r of runs) if (r.layer !== base) this.#mapRange(addr, r, r.layer);
    } catch (err) {
      if (at === null) {
        try {
          sys.munmap(addr, length);
        } catch {
          // Nothing else can be done; the error below is the one that matters.
        }
      }
      throw err;
    }
    return addr;
  }

  /** Maps one page range of `layer` (or anonymous memory) at its place in the segment at `base`. */
  #mapRange(base: bigint, r: Range, layer: Layer | null): void {
    const off = r.start * this.pageSize;
    const flags = sys.MAP_PRIVATE | sys.MAP_NORESERVE | sys.MAP_FIXED | (layer === null ? sys.MAP_ANONYMOUS : 0);
    sys.mmap(base + BigInt(off), (r.end - r.start) * this.pageSize, sys.PROT_READ | sys.PROT_WRITE, flags, layer === null ? -1 : layer.fd, layer === null ? 0 : off);
  }

  /** After a failed restore: maps the target's old state back. */
  #putBack(seg: LinuxSegment, shared: Layer | null, runs: Runs): void {
    try {
      if (shared !== null) {
        sys.mmap(seg.addr, seg.length, sys.PROT_READ | sys.PROT_WRITE, sys.MAP_SHARED | sys.MAP_FIXED | sys.MAP_NORESERVE, shared.fd, 0);
      } else {
        this.#mapRuns(seg.addr, runs, seg.length);
      }
    } catch (err) {
      // The target's mapping is now a mix of old and new runs that no
      // bookkeeping describes; only a second failure in a row gets here.
      throw new SegmentError(
        `restore could not put the target back after a failure: ${(err as Error).message}`,
        (err as SegmentError).code ?? 'EIO',
        (err as SegmentError).errno,
        (err as SegmentError).syscall,
      );
    }
  }

  /**
   * A new layer. When the process is out of file descriptors (EMFILE), frees
   * some by compacting the segments that use the most layers, then tries
   * once more.
   */
  #newLayer(length: number): Layer {
    if (this.#layers.size >= this.fdBudget && !this.#reclaiming) this.#reclaimFds();
    let layer: Layer;
    try {
      layer = this.#makeLayer(length);
    } catch (err) {
      if ((err as SegmentError).code !== 'EMFILE' || this.#reclaiming || !this.#reclaimFds()) throw err;
      layer = this.#makeLayer(length);
    }
    // A reserve given up earlier (and not re-opened then) is taken back now.
    if (this.#reserveFd < 0 && !this.#reclaiming) this.#reserveFd = openReserve();
    return layer;
  }

  /**
   * Flattens segments, those spread over the most layers first, until some
   * layers close. The reserve descriptor gives the first flattening a slot.
   * Returns whether any descriptor was freed.
   */
  #reclaimFds(): boolean {
    const before = this.#layers.size;
    this.#reclaiming = true;
    if (this.#reserveFd >= 0) sys.closeFd(this.#reserveFd);
    this.#reserveFd = -1;
    try {
      const spread = (s: LinuxSegment): number => new Set(s.runs.map((r) => r.layer)).size;
      const candidates = [...this.#segments].filter((s) => spread(s) > 1).sort((a, b) => spread(b) - spread(a));
      for (const seg of candidates) {
        try {
          this.#compact(seg, 0);
        } catch {
          break;
        }
        if (this.#layers.size < before - 1) break;
      }
    } finally {
      this.#reserveFd = openReserve();
      this.#reclaiming = false;
    }
    return this.#layers.size < before;
  }

  #makeLayer(length: number): Layer {
    let fd: number;
    const flags = sys.MFD_CLOEXEC | sys.MFD_ALLOW_SEALING;
    if (this.#noexecSeal) {
      try {
        fd = sys.memfdCreate('memfork', flags | sys.MFD_NOEXEC_SEAL);
      } catch (err) {
        // MFD_NOEXEC_SEAL arrived in Linux 6.3; older kernels reject it.
        if ((err as SegmentError).errno !== sys.EINVAL) throw err;
        this.#noexecSeal = false;
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
    const layer = new Layer(fd, length);
    this.#layers.add(layer);
    this.#recent.unshift(layer);
    if (this.#recent.length > REUSE_CANDIDATES) this.#recent.pop();
    return layer;
  }

  #closeLayer(layer: Layer): void {
    if (layer.fd < 0) return;
    if (layer.window !== 0n) this.#dropWindow(layer);
    // Mappings keep the file alive; the fd is only needed to map it again.
    sys.closeFd(layer.fd);
    layer.fd = -1;
    this.#layers.delete(layer);
  }

  /** Unmaps a layer's moved-aside mapping; one that will not go is retried with the next, and by release(). */
  #dropWindow(layer: Layer): void {
    this.#strays.push({ addr: layer.window, length: layer.length });
    layer.window = 0n;
    try {
      this.#unmapStrays();
    } catch {
      // Kept for later.
    }
  }

  /** Unmaps the moved-aside mappings left over; throws the last failure, after trying each. */
  #unmapStrays(): void {
    let failure: unknown;
    for (let i = this.#strays.length - 1; i >= 0; i--) {
      const { addr, length } = this.#strays[i]!;
      try {
        sys.munmap(addr, length);
      } catch (err) {
        failure = err;
        continue;
      }
      this.#strays.splice(i, 1);
      this.#windows--;
    }
    if (failure !== undefined) throw failure;
  }

  /**
   * Moves the page tables of fresh `seg` to a new mapping of its `layer`
   * (mremap with MREMAP_DONTUNMAP), leaving `seg` mapped, with no page-table
   * entries, at its address; the layer's close tears them down later.
   * Nothing changes when it fails.
   *
   * One call per page-table span (1 GiB, then 2 MiB pieces, then the rest):
   * the kernel moves a whole page-table page only when a call moves exactly
   * the span it maps. Measured here: 1 GiB in one call 0.1–0.2 ms; 4 GiB in
   * one call 155 ms entry by entry, in four 40 ms (the first call pays
   * nearly all); 256 MiB in one call 7–14 ms, in 2 MiB calls 4 ms. Moved
   * entry by entry, the new mapping is also slow to use where a hypervisor
   * shadows the page tables: its first access to each page traps.
   */
  #moveAside(seg: LinuxSegment, layer: Layer): void {
    const span = spanFor(seg.length, this.pageSize);
    if (span === 0 || !this.#moveAsideWorks || layer.window !== 0n) return;
    const pieces = this.#spanPieces(seg.addr, seg.length);
    // Each call splits the mapping it leaves behind until the remap below.
    if (!this.#fits(pieces.length + 2)) return;
    const aside = this.#reserveAligned(seg.length, span, seg.addr % BigInt(span));
    if (aside === null) return;
    const flags = sys.MREMAP_MAYMOVE | sys.MREMAP_FIXED | sys.MREMAP_DONTUNMAP;
    try {
      for (const [offset, length] of pieces) {
        sys.mremap(seg.addr + BigInt(offset), length, length, flags, aside + BigInt(offset));
      }
    } catch (err) {
      // Before Linux 5.13 only private anonymous mappings could be moved so.
      if ((err as SegmentError).errno === sys.EINVAL) this.#moveAsideWorks = false;
      // The pieces moved go with the rest of the reservation; `seg` refaults
      // them from the layer.
      this.#unreserve(aside, seg.length);
      return;
    }
    layer.window = aside;
    this.#windows++;
  }

  /**
   * Splits [addr, addr + length) into (offset, length) pieces, each one
   * page-table span at an address it aligns with where one fits, the rest
   * as one piece.
   */
  #spanPieces(addr: bigint, length: number): [number, number][] {
    const { pmd, pud } = spans(this.pageSize);
    const out: [number, number][] = [];
    let offset = 0;
    let rest = 0;
    while (offset < length) {
      const at = addr + BigInt(offset);
      const size = [pud, pmd].find((s) => at % BigInt(s) === 0n && offset + s <= length);
      if (size === undefined) {
        rest += length - offset;
        break;
      }
      out.push([offset, size]);
      offset += size;
    }
    if (rest > 0) out.push([offset, rest]);
    return out;
  }

  /**
   * Reserves `length` bytes of address space (PROT_NONE, nothing committed)
   * at an address `phase` past a multiple of `span`; null when `span` is 0 or
   * it cannot be had, which only costs speed.
   */
  #reserveAligned(length: number, span: number, phase: bigint): bigint | null {
    if (span === 0) return null;
    let base: bigint;
    try {
      base = sys.mmap(null, length + span, sys.PROT_NONE, sys.MAP_PRIVATE | sys.MAP_ANONYMOUS | sys.MAP_NORESERVE, -1, 0);
    } catch {
      return null;
    }
    const big = BigInt(span);
    const start = base + ((phase - (base % big) + big) % big);
    const end = base + BigInt(length + span);
    // Trim what lies before and after; a failure gives back what is still
    // ours (never the head once unmapped: another thread may map there).
    try {
      if (start > base) sys.munmap(base, Number(start - base));
    } catch {
      this.#unreserve(base, length + span);
      return null;
    }
    try {
      if (end > start + BigInt(length)) sys.munmap(start + BigInt(length), Number(end - start) - length);
    } catch {
      this.#unreserve(start, Number(end - start));
      return null;
    }
    return start;
  }

  /** Unmaps memory memfork mapped for itself; a failure leaves it mapped, which only costs address space. */
  #unreserve(addr: bigint, length: number): void {
    try {
      sys.munmap(addr, length);
    } catch {
      // Nothing else to do.
    }
  }

  /** Adds `delta` to the reference counts of every layer run; frees what falls to zero. */
  #ref(runs: Runs, delta: number, mapped: boolean): void {
    for (const [layer, ranges] of rangesByLayer(runs)) {
      if (mapped) layer.mapped.addAll(ranges, delta);
      const freed = layer.refs.addAll(ranges, delta);
      if (layer.refs.empty) {
        this.#closeLayer(layer);
        continue;
      }
      for (const f of freed) this.#punch(layer, f);
    }
  }

  /** Frees a range of a layer that no mapping uses. */
  #punch(layer: Layer, r: Range): void {
    if (layer.fd < 0) return;
    try {
      sys.punchHole(layer.fd, r.start * this.pageSize, (r.end - r.start) * this.pageSize);
    } catch {
      // Only memory is lost if this fails, never data: nothing maps the range.
    }
  }

  /** Page ranges of `fd` within [from, to) pages that hold data (SEEK_DATA / SEEK_HOLE). */
  #dataRanges(fd: number, from: number, to: number): Range[] {
    const out: Range[] = [];
    const end = to * this.pageSize;
    let off = from * this.pageSize;
    while (off < end) {
      const data = sys.seek(fd, off, sys.SEEK_DATA);
      if (data < 0 || data >= end) break;
      let hole = sys.seek(fd, data, sys.SEEK_HOLE);
      if (hole < 0 || hole > end) hole = end;
      out.push({ start: Math.floor(data / this.pageSize), end: Math.min(to, Math.ceil(hole / this.pageSize)) });
      off = hole;
    }
    return coalesce(out);
  }

  // ---- finding written pages --------------------------------------------------

  /**
   * Page ranges of `seg` written since its last freeze: pages present (or
   * swapped) in its private mappings that are neither file pages nor the zero
   * page. Sorted, disjoint, merged.
   */
  scanWritten(seg: LinuxSegment): Range[] {
    if (seg.shared !== null) return [{ start: 0, end: seg.pages }];
    switch (this.scanMethod) {
      case 'pagemap-scan':
        return this.#scanIoctl(seg.addr, seg.pages);
      case 'pagemap-read':
        return this.#scanRead(seg.addr, seg.pages);
      default:
        return [{ start: 0, end: seg.pages }];
    }
  }

  #chooseScan(wanted: ScanMethod | undefined): ScanMethod {
    if (wanted === 'none') return 'none';
    try {
      this.#pagemapFd = sys.open('/proc/self/pagemap', sys.O_RDONLY | sys.O_CLOEXEC);
    } catch {
      return 'none';
    }
    if (wanted === 'pagemap-read') return 'pagemap-read';
    try {
      const bytes = PM_SCAN_ARG_SIZE + SCAN_REGIONS * PAGE_REGION_SIZE;
      this.#scratch = sys.mmap(null, bytes, sys.PROT_READ | sys.PROT_WRITE, sys.MAP_PRIVATE | sys.MAP_ANONYMOUS, -1, 0);
      // Safety: the scratch mapping lives as long as the backend (never unmapped).
      this.#scratchArg = new BigUint64Array(sys.view(this.#scratch, PM_SCAN_ARG_SIZE));
      this.#scratchVec = new BigUint64Array(sys.view(this.#scratch + BigInt(PM_SCAN_ARG_SIZE), SCAN_REGIONS * PAGE_REGION_SIZE));
      this.#scanIoctl(this.#scratch, 1);
      return 'pagemap-scan';
    } catch (err) {
      if (wanted === 'pagemap-scan') throw err;
      return 'pagemap-read';
    }
  }

  /**
   * Page ranges written (private, not the zero page) from `addr`. With
   * `each`, every range in memory instead, given to `each` with its
   * PAGE_IS_* categories (the return value is then empty).
   */
  #scanIoctl(addr: bigint, pages: number, each?: (start: number, end: number, categories: bigint) => void): Range[] {
    const arg = this.#scratchArg!;
    const vec = this.#scratchVec!;
    const page = BigInt(this.pageSize);
    const end = addr + BigInt(pages) * page;
    const out: Range[] = [];
    let start = addr;
    while (start < end) {
      arg[0] = BigInt(PM_SCAN_ARG_SIZE);
      arg[1] = 0n; // flags
      arg[2] = start;
      arg[3] = end;
      arg[4] = 0n; // walk_end (out)
      arg[5] = this.#scratch + BigInt(PM_SCAN_ARG_SIZE);
      arg[6] = BigInt(SCAN_REGIONS);
      arg[7] = 0n; // max_pages: no limit
      const filter = each === undefined ? PAGE_IS_FILE | PAGE_IS_PFNZERO : 0n;
      arg[8] = filter; // category_inverted
      arg[9] = filter; // category_mask: neither file nor zero page (or anything)
      arg[10] = PAGE_IS_PRESENT | PAGE_IS_SWAPPED; // category_anyof_mask
      arg[11] = PAGE_IS_PRESENT | PAGE_IS_SWAPPED | (each === undefined ? 0n : PAGE_IS_FILE | PAGE_IS_PFNZERO); // return_mask
      const n = sys.ioctl(this.#pagemapFd, PAGEMAP_SCAN, this.#scratch);
      for (let i = 0; i < n; i++) {
        const s = Number((vec[i * 3]! - addr) / page);
        const e = Number((vec[i * 3 + 1]! - addr) / page);
        if (each !== undefined) {
          each(s, e, vec[i * 3 + 2]!);
          continue;
        }
        appendRange(out, s, e);
      }
      // walk_end is unreliable once many regions come back (seen on 6.18):
      // a short array means the walk reached the end.
      if (n < SCAN_REGIONS) break;
      start = vec[(n - 1) * 3 + 1]!;
    }
    return out;
  }

  #scanRead(addr: bigint, pages: number): Range[] {
    const entries = new Uint32Array(Math.min(pages, READ_ENTRIES) * 2);
    const first = Number(addr / BigInt(this.pageSize));
    const out: Range[] = [];
    for (let done = 0; done < pages; ) {
      const want = Math.min(pages - done, READ_ENTRIES);
      const got = sys.pread(this.#pagemapFd, entries, want * 8, (first + done) * 8) / 8;
      if (got <= 0) throw new SegmentError(`pread EIO: short read of /proc/self/pagemap`, 'EIO', 5, 'pread');
      for (let i = 0; i < got; i++) {
        const hi = entries[i * 2 + 1]!;
        const written =
          (hi & PM_FILE) === 0 && ((hi & PM_PRESENT) !== 0 ? (hi & PM_EXCLUSIVE) !== 0 : (hi & PM_SWAPPED) !== 0);
        if (!written) continue;
        appendRange(out, done + i, done + i + 1);
      }
      done += got;
    }
    return out;
  }

  /** Whether the page at `addr`, only ever read, maps the shared zero page. */
  #isZeroPage(addr: bigint): boolean {
    if (this.#pagemapFd < 0) return true;
    const entry = new Uint32Array(2);
    sys.pread(this.#pagemapFd, entry, 8, Number(addr / BigInt(this.pageSize)) * 8);
    const hi = entry[1]!;
    return (hi & PM_PRESENT) !== 0 && (hi & PM_EXCLUSIVE) === 0 && (hi & PM_FILE) === 0;
  }

  /** For tests: number of live layers and open layer fds. */
  layerCount(): number {
    return this.#layers.size;
  }
}

/**
 * The most pages a compaction forced by the mapping or descriptor budget may
 * copy that other segments still hold (they then exist twice): 1/64 of the
 * segment, at least 256 pages (1 MiB of 4 KiB pages). Past that, the operation fails with ENOMEM
 * rather than spend the segment's size again.
 */
export function duplicateLimit(pages: number): number {
  return Math.max(256, Math.floor(pages / 64));
}

/** Fewest pages a never-written hole must span to be mapped anonymously at a first clone (2 MiB of 4 KiB pages). */
export const HOLE_MIN_PAGES = 512;
/** Most holes a first clone maps anonymously: each costs up to two mappings in every clone that inherits them. */
export const MAX_HOLES = 32;

/**
 * The holes of a first clone worth an anonymous mapping: at least
 * HOLE_MIN_PAGES long, the MAX_HOLES largest, largest first.
 */
export function worthwhileHoles(holes: readonly Range[]): Range[] {
  const big = holes.filter((h) => h.end - h.start >= HOLE_MIN_PAGES);
  big.sort((a, b) => b.end - b.start - (a.end - a.start) || a.start - b.start);
  return big.slice(0, MAX_HOLES);
}

/** The errno of a failure, 0 when it has none. */
function errnoOf(err: unknown): number {
  return err instanceof SegmentError ? (err.errno ?? 0) : 0;
}

/** The runs on a layer, grouped by layer, in their order. */
function rangesByLayer(runs: Runs): Map<Layer, Range[]> {
  const byLayer = new Map<Layer, Range[]>();
  for (const r of runs) {
    if (r.layer === null) continue;
    const list = byLayer.get(r.layer);
    if (list === undefined) byLayer.set(r.layer, [r]);
    else list.push(r);
  }
  return byLayer;
}

/**
 * For each run, how many of its pages copying would duplicate: pages of a
 * layer that another run also uses, and anonymous pages (copying allocates
 * them). One sweep per layer.
 */
function sharedPages(runs: Runs): number[] {
  const out = new Array<number>(runs.length).fill(0);
  const byLayer = new Map<Layer, number[]>();
  runs.forEach((r, i) => {
    if (r.layer === null) {
      out[i] = r.end - r.start;
      return;
    }
    const list = byLayer.get(r.layer);
    if (list === undefined) byLayer.set(r.layer, [i]);
    else list.push(i);
  });
  for (const [layer, indices] of byLayer) {
    const alone = layer.refs.countEqualEach(indices.map((i) => runs[i]!), 1);
    indices.forEach((i, k) => (out[i] = runs[i]!.end - runs[i]!.start - alone[k]!));
  }
  return out;
}

/** The copying pipe, 1 MiB where the system allows; null when none can be had. */
function openPipe(): { read: number; write: number; size: number } | null {
  try {
    return sys.pipe(PIPE_BYTES);
  } catch {
    return null;
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

/** The layer (or anonymous memory) holding the most pages in `runs`. */
function largestLayer(runs: Runs): Layer | null {
  const sizes = new Map<Layer | null, number>();
  let best: Layer | null = null;
  let bestSize = -1;
  for (const r of runs) {
    const n = (sizes.get(r.layer) ?? 0) + r.end - r.start;
    sizes.set(r.layer, n);
    if (n > bestSize) {
      bestSize = n;
      best = r.layer;
    }
  }
  return best;
}

