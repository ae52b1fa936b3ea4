// Finding the pages a segment wrote: the pages present (or swapped) in its
// private mappings that are neither file pages nor the zero page. With the
// PAGEMAP_SCAN ioctl (Linux 6.7+), which returns whole runs, or by reading
// /proc/self/pagemap entry by entry. The argument encoding and the entry
// decoding are pure functions; Scanner makes the calls.
import * as sys from '../libc.ts';
import { systemError } from '../../src/errors.ts';
import { appendRange, pageCount, RangeList, type Range } from '../../src/runs.ts';
import { offsetReader, wordSetter } from './words.ts';

/** How written pages are found. */
export type ScanMethod = 'pagemap-scan' | 'pagemap-read' | 'none';

// PAGEMAP_SCAN (Linux 6.7+, Documentation/admin-guide/mm/pagemap.rst):
// _IOWR('f', 16, struct pm_scan_arg), the struct being 12 × u64.
const PAGEMAP_SCAN = 0xc0606610;
export const PM_SCAN_ARG_SIZE = 96;
/** struct page_region: start, end, categories (3 × u64). */
export const PAGE_REGION_SIZE = 24;
/** Not write-protected by a userfaultfd: written since last protected (track.ts). */
export const PAGE_IS_WRITTEN = 1n << 1n;
export const PAGE_IS_FILE = 1n << 2n;
export const PAGE_IS_PRESENT = 1n << 3n;
export const PAGE_IS_SWAPPED = 1n << 4n;
export const PAGE_IS_PFNZERO = 1n << 5n;
/** Write-protect the pages reported, atomically with the report (asynchronous userfaultfd write-protect only). */
export const PM_SCAN_WP_MATCHING = 1n << 0n;
/** Fail where a mapping walked is not registered for asynchronous write-protect. */
export const PM_SCAN_CHECK_WPASYNC = 1n << 1n;
/** Regions one PAGEMAP_SCAN call returns at most. */
const SCAN_REGIONS = 2048;

// /proc/self/pagemap entry bits, as bits of the entry's high 32-bit word.
const PM_PRESENT = 1 << 31; // bit 63
const PM_SWAPPED = 1 << 30; // bit 62
const PM_FILE = 1 << 29; // bit 61 (file page or shared anonymous)
const PM_EXCLUSIVE = 1 << 24; // bit 56 (mapped exactly once: never the zero page)
/** Entries read from /proc/self/pagemap at a time. */
const READ_ENTRIES = 1 << 16;

/** The fields of struct pm_scan_arg the caller chooses (the size is fixed and walk_end is output). */
export interface ScanArg {
  /** PM_SCAN_* operation flags (0: only report). */
  flags: bigint;
  /** Start and end of the address range to walk. */
  start: bigint;
  end: bigint;
  /** Address of the struct page_region array the kernel fills, and how many it holds. */
  vec: bigint;
  vecLength: number;
  /** Most pages to report (0: no limit). */
  maxPages: bigint;
  /** Categories whose sense is inverted before the masks apply. */
  categoryInverted: bigint;
  /** Categories a page must all have. */
  categoryMask: bigint;
  /** Categories a page must have at least one of. */
  categoryAnyofMask: bigint;
  /** Categories reported with each region. */
  returnMask: bigint;
}

/** Writes `arg` into `into` as struct pm_scan_arg (12 × u64, in the kernel's field order). */
export function encodeScanArg(into: BigUint64Array, arg: ScanArg): void {
  into[0] = BigInt(PM_SCAN_ARG_SIZE); // size
  into[1] = arg.flags;
  into[2] = arg.start;
  into[3] = arg.end;
  into[4] = 0n; // walk_end (out)
  into[5] = arg.vec;
  into[6] = BigInt(arg.vecLength);
  into[7] = arg.maxPages;
  into[8] = arg.categoryInverted;
  into[9] = arg.categoryMask;
  into[10] = arg.categoryAnyofMask;
  into[11] = arg.returnMask;
}

/**
 * The PAGEMAP_SCAN question for [start, end): pages present or swapped that
 * are neither file pages nor the zero page (written: `all` false), or every
 * page present or swapped with its file and zero-page categories (`all` true).
 */
export function scanArgFor(start: bigint, end: bigint, vec: bigint, vecLength: number, all: boolean): ScanArg {
  const filter = all ? 0n : PAGE_IS_FILE | PAGE_IS_PFNZERO;
  return {
    flags: 0n,
    start,
    end,
    vec,
    vecLength,
    maxPages: 0n,
    categoryInverted: filter,
    categoryMask: filter,
    categoryAnyofMask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
    returnMask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED | PAGE_IS_WRITTEN | (all ? PAGE_IS_FILE | PAGE_IS_PFNZERO : 0n),
  };
}

/**
 * The PAGEMAP_SCAN question for [start, end) of a private file mapping:
 * pages whose page-table entry maps their file's page (present, a file
 * page, not the zero page), so dropping the entry changes no byte: the
 * next fault maps the same page again.
 */
export function fileMappedArg(start: bigint, end: bigint, vec: bigint, vecLength: number): ScanArg {
  return {
    ...scanArgFor(start, end, vec, vecLength, true),
    categoryInverted: PAGE_IS_PFNZERO,
    categoryMask: PAGE_IS_PRESENT | PAGE_IS_FILE | PAGE_IS_PFNZERO,
    categoryAnyofMask: 0n,
    returnMask: PAGE_IS_PRESENT | PAGE_IS_FILE,
  };
}

/**
 * Whether a region PAGEMAP_SCAN reports as present or swapped holds pages
 * written since their segment's last freeze: present ones do; a swapped
 * entry still write-protected (not PAGE_IS_WRITTEN) does not. It is the
 * marker the kernel leaves where a protected page was dropped (a page a
 * WriteTracker protected, then frozen in place, track.ts), or a protected
 * page swapped out, which holds what its run list says. Where nothing is
 * registered, every entry counts as written.
 */
export function holdsWrites(categories: bigint): boolean {
  return (categories & (PAGE_IS_PRESENT | PAGE_IS_WRITTEN)) !== 0n;
}

/**
 * The PAGEMAP_SCAN question for [start, end) of a mapping registered for
 * asynchronous write-protect (track.ts): private pages (present or
 * swapped, neither file pages nor the zero page) written since they were
 * last protected; and protect them again, in the same walk, so the next
 * scan reports only what is written after this one.
 */
export function writtenSinceArg(start: bigint, end: bigint, vec: bigint, vecLength: number): ScanArg {
  const written = scanArgFor(start, end, vec, vecLength, false);
  return { ...written, flags: PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC, categoryMask: written.categoryMask | PAGE_IS_WRITTEN, returnMask: PAGE_IS_WRITTEN };
}

/**
 * Whether a /proc/self/pagemap entry (its high 32-bit word) is a page the
 * process wrote: not a file page, and either present and mapped exactly once
 * (so not the zero page) or swapped out.
 */
export function isWrittenEntry(hi: number): boolean {
  return (hi & PM_FILE) === 0 && ((hi & PM_PRESENT) !== 0 ? (hi & PM_EXCLUSIVE) !== 0 : (hi & PM_SWAPPED) !== 0);
}

/** Whether a /proc/self/pagemap entry (its high word) of a page only ever read shows the shared zero page. */
export function isZeroPageEntry(hi: number): boolean {
  return (hi & PM_PRESENT) !== 0 && (hi & PM_EXCLUSIVE) === 0 && (hi & PM_FILE) === 0;
}

/**
 * Appends to `out` the written pages among `count` pagemap entries (pairs of
 * 32-bit words, low then high) for pages `first`, `first + 1`, …
 */
export function decodeEntries(entries: Uint32Array, count: number, first: number, out: Range[]): void {
  for (let i = 0; i < count; i++) {
    if (isWrittenEntry(entries[i * 2 + 1]!)) appendRange(out, first + i, first + i + 1);
  }
}

/** A PAGEMAP_SCAN question for a range, its regions written to `vec` (scanArgFor, fileMappedArg, writtenSinceArg). */
type Question = (start: bigint, end: bigint, vec: bigint, vecLength: number) => ScanArg;
/** Written pages (scanArgFor). */
const askWritten: Question = (start, end, vec, vecLength) => scanArgFor(start, end, vec, vecLength, false);
/** Every page in memory, with its categories (scanArgFor). */
const askInMemory: Question = (start, end, vec, vecLength) => scanArgFor(start, end, vec, vecLength, true);

/** Finds written pages for one backend: the chosen method and its descriptor and scratch memory. */
export class Scanner {
  /** How this scanner finds written pages. */
  readonly method: ScanMethod;
  readonly #pageSize: number;
  #pagemapFd = -1;
  /** Scratch memory for PAGEMAP_SCAN: the argument struct, then the result array. */
  #scratch = 0n;
  #scratchArg: BigUint64Array | undefined;
  #scratchVec: BigUint64Array | undefined;

  /** Uses `wanted`, or the best method that works here; throws only when PAGEMAP_SCAN is wanted and fails. */
  constructor(pageSize: number, wanted: ScanMethod | undefined) {
    this.#pageSize = pageSize;
    this.method = this.#choose(wanted);
  }

  #choose(wanted: ScanMethod | undefined): ScanMethod {
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
      // Safety: the scratch mapping lives until close(), which drops these views' last use.
      this.#scratchArg = new BigUint64Array(sys.view(this.#scratch, PM_SCAN_ARG_SIZE));
      this.#scratchVec = new BigUint64Array(sys.view(this.#scratch + BigInt(PM_SCAN_ARG_SIZE), SCAN_REGIONS * PAGE_REGION_SIZE));
      this.#walk(this.#scratch, askWritten, [{ start: 0, end: 1 }], () => {});
      return 'pagemap-scan';
    } catch (err) {
      if (wanted === 'pagemap-scan') throw err;
      return 'pagemap-read';
    }
  }

  /**
   * Page ranges of the `pages` pages from `addr` written since they were
   * mapped: all of them when no method works here. Sorted, disjoint, merged.
   */
  written(addr: bigint, pages: number): Range[] {
    return this.writtenList(addr, pages).toArray();
  }

  /**
   * written(), as a list. With `protectedToo`, swapped entries still
   * write-protected count as written too (holdsWrites): markers of dropped
   * pages among them, so a superset, for when a write-tracked scan failed
   * after protecting pages it never reported.
   */
  writtenList(addr: bigint, pages: number, protectedToo = false): RangeList {
    switch (this.method) {
      case 'pagemap-scan': {
        const out = new RangeList();
        const vec = this.#scratchVec!;
        this.#walk(addr, askWritten, [{ start: 0, end: pages }], (start, end, i) => {
          if (protectedToo || holdsWrites(vec[i * 3 + 2]!)) out.push(start, end);
        });
        return out;
      }
      case 'pagemap-read':
        return RangeList.from(this.#scanRead(addr, pages));
      default:
        return RangeList.from([{ start: 0, end: pages }]);
    }
  }

  /**
   * The private pages of the `pages` pages from `addr` written since the
   * last call over them, each protected again as it is reported: the range
   * must be registered with a WriteTracker (track.ts). Throws where the
   * kernel refuses (the caller falls back to written(), which reports
   * every private page: a superset). Pages protected by a call that then
   * fails are still private, so written() still reports them.
   */
  writtenSince(addr: bigint, pages: number): RangeList {
    if (this.method !== 'pagemap-scan') throw systemError('ioctl', sys.EINVAL, 'PAGEMAP_SCAN is not available');
    return this.#regions(addr, writtenSinceArg, [{ start: 0, end: pages }]);
  }

  /**
   * Pages within the sorted `windows` of pages from `addr` mapping their
   * file's page (fileMappedArg), one walk a window: their entries can be
   * dropped without changing a byte. Empty where PAGEMAP_SCAN is not available.
   */
  fileMapped(addr: bigint, windows: readonly Range[]): RangeList {
    if (this.method !== 'pagemap-scan') return new RangeList();
    return this.#regions(addr, fileMappedArg, windows);
  }

  /**
   * Pages within the sorted `windows` of pages from `addr` that may be
   * private copies: written, or swapped, or marked where a protected page
   * was dropped (writtenList with `protectedToo`), one walk a window. The
   * others map their file's page, or nothing yet: mapping another file's
   * page over them loses no write. Null where PAGEMAP_SCAN is not
   * available (no page can be told apart).
   */
  privateIn(addr: bigint, windows: readonly Range[]): RangeList | null {
    if (this.method !== 'pagemap-scan') return null;
    return this.#regions(addr, askWritten, windows);
  }

  /** The written ranges of the `pages` pages from `addr`, and how many of them are in memory at all (written or read). */
  forDrop(addr: bigint, pages: number): { written: Range[]; present: number } {
    if (this.method !== 'pagemap-scan') {
      const written = this.written(addr, pages);
      return { written, present: pageCount(written) };
    }
    let present = 0;
    const written: Range[] = [];
    const vec = this.#scratchVec!;
    this.#walk(addr, askInMemory, [{ start: 0, end: pages }], (start, end, i) => {
      const categories = vec[i * 3 + 2]!;
      if (!holdsWrites(categories)) return;
      present += end - start;
      if ((categories & (PAGE_IS_FILE | PAGE_IS_PFNZERO)) === 0n) appendRange(written, start, end);
    });
    return { written, present };
  }

  /** Every region #walk finds, as a list. */
  #regions(addr: bigint, question: Question, windows: readonly Range[]): RangeList {
    const out = new RangeList();
    this.#walk(addr, question, windows, (start, end) => out.push(start, end));
    return out;
  }

  /**
   * Asks `question` of each of the sorted `windows` of pages from `addr`,
   * one walk a window, and gives each region found to `region`, in pages
   * from `addr`, with its index in the result array (its categories are
   * word `3i + 2` there). The question is encoded once; each window
   * changes only its range, as numbers, and the regions are read the same
   * way: a window is often one page (fileMapped, privateIn), where a BigInt
   * a field and an argument object a call cost more than the walk.
   */
  #walk(addr: bigint, question: Question, windows: readonly Range[], region: (start: number, end: number, i: number) => void): void {
    if (windows.length === 0) return;
    const arg = this.#scratchArg!;
    const page = this.#pageSize;
    encodeScanArg(arg, question(addr, addr, this.#scratch + BigInt(PM_SCAN_ARG_SIZE), SCAN_REGIONS));
    const setAt = wordSetter(arg, addr);
    const offset = offsetReader(this.#scratchVec!, addr);
    for (const w of windows) {
      const end = w.end * page;
      let start = w.start * page;
      while (start < end) {
        setAt(2, start);
        setAt(3, end);
        const n = sys.ioctl(this.#pagemapFd, PAGEMAP_SCAN, this.#scratch);
        for (let i = 0; i < n; i++) region(offset(i * 3) / page, offset(i * 3 + 1) / page, i);
        // walk_end is unreliable once many regions come back (seen on
        // 6.18): a short array means the walk reached the window's end; a
        // full one, that it goes on after its last region.
        if (n < SCAN_REGIONS) break;
        start = offset((n - 1) * 3 + 1);
      }
    }
  }

  #scanRead(addr: bigint, pages: number): Range[] {
    const entries = new Uint32Array(Math.min(pages, READ_ENTRIES) * 2);
    const first = Number(addr / BigInt(this.#pageSize));
    const out: Range[] = [];
    for (let done = 0; done < pages; ) {
      const want = Math.min(pages - done, READ_ENTRIES);
      const got = sys.pread(this.#pagemapFd, entries, want * 8, (first + done) * 8) / 8;
      if (got <= 0) throw systemError('pread', sys.EIO, 'short read of /proc/self/pagemap');
      decodeEntries(entries, got, done, out);
      done += got;
    }
    return out;
  }

  /** Whether the page at `addr`, only ever read, maps the shared zero page (true when pagemap cannot be read). */
  isZeroPage(addr: bigint): boolean {
    if (this.#pagemapFd < 0) return true;
    const entry = new Uint32Array(2);
    sys.pread(this.#pagemapFd, entry, 8, Number(addr / BigInt(this.#pageSize)) * 8);
    return isZeroPageEntry(entry[1]!);
  }

  /** Closes the pagemap descriptor and unmaps the scratch memory. */
  close(): void {
    if (this.#pagemapFd >= 0) sys.closeFd(this.#pagemapFd);
    this.#pagemapFd = -1;
    if (this.#scratch !== 0n) {
      try {
        sys.munmap(this.#scratch, PM_SCAN_ARG_SIZE + SCAN_REGIONS * PAGE_REGION_SIZE);
      } catch {
        // Nothing can be reported from an exiting thread.
      }
      this.#scratch = 0n;
    }
  }
}
