// The kernel's limit on mappings (vm.max_map_count) is per process, shared by
// every thread: V8's heaps, libraries, and each worker's memfork backend. A
// backend that only counted its own mappings would let several workers
// together pass the limit, where V8 aborts. So the budget is worked out from
// the process's real mapping count, read from /proc/self/maps: memfork as a
// whole may use half of vm.max_map_count, less a reserve, less what the rest
// of the process (other threads' memfork included) maps. The count is read
// again after this backend's own use has grown by RECHECK mappings since the
// last reading, and at every decision within RECHECK of the limit, so the
// reading is cheap far from the limit and exact near it. Under a large limit
// (vm.max_map_count raised), the interval grows with it (RECHECK_PART): the
// reading costs about 0.25 µs a mapping (100 ms for 400,000, measured here),
// and a process that may hold hundreds of thousands reads them seldom.
import * as sys from '../libc.ts';

/** Mappings left for the rest of the process (V8, libraries, other FFI code), and for threads deciding at the same moment. */
export const RESERVE = 4096;
/** Growth of this backend's own mappings after which the process's count is read again (at least). */
export const RECHECK = 512;
/** Or this part of the budget, where more: the interval a large limit allows. */
export const RECHECK_PART = 64;

/**
 * The most mappings one backend may use: half of `maxMapCount`, less the
 * reserve, less what the rest of the process maps (`processMaps - ours`
 * when the count was read). Pure; the reading is the caller's.
 */
export function budgetFrom(maxMapCount: number, processMaps: number, ours: number): number {
  return Math.floor(maxMapCount / 2) - RESERVE - Math.max(0, processMaps - ours);
}

/**
 * The buffer countLines reads into, kept: an array buffer allocated while
 * segments' buffers count as much external memory brings on a garbage
 * collection.
 */
let chunk: Uint8Array | undefined;

/** Lines of a /proc file (one mapping per line for /proc/self/maps), counted without decoding; undefined when unreadable. */
export function countLines(path: string): number | undefined {
  let fd: number;
  try {
    fd = sys.open(path, sys.O_RDONLY | sys.O_CLOEXEC);
  } catch {
    return undefined;
  }
  try {
    chunk ??= new Uint8Array(1 << 16);
    let lines = 0;
    for (let offset = 0; ; ) {
      const n = sys.pread(fd, chunk, chunk.byteLength, offset);
      if (n <= 0) break;
      for (let i = 0; i < n; i++) if (chunk[i] === 10) lines++;
      offset += n;
    }
    return lines;
  } catch {
    return undefined;
  } finally {
    sys.closeFd(fd);
  }
}

/** The process-wide mapping budget as one backend sees it. */
export class ProcessMapBudget {
  readonly maxMapCount: number;
  readonly #count: () => number | undefined;
  /** What the rest of the process mapped at the last reading. */
  #others = 0;
  /** This backend's own mappings at the last reading; -Infinity before the first. */
  #oursThen = -Infinity;

  /**
   * @param count reads the process's mapping count (tests pass their own)
   * @param maxMapCount vm.max_map_count
   */
  constructor(count: () => number | undefined = () => countLines('/proc/self/maps'), maxMapCount = readMaxMapCount()) {
    this.#count = count;
    this.maxMapCount = maxMapCount;
  }

  /**
   * The most mappings this backend may use, given it uses `ours` now and is
   * about to need `needed` more. Reads the process's count again when due.
   */
  limit(ours: number, needed = 0): number {
    const cached = budgetFrom(this.maxMapCount, this.#others + ours, ours);
    const recheck = Math.max(RECHECK, Math.floor(cached / RECHECK_PART));
    if (ours + needed - this.#oursThen < recheck && ours + needed + recheck <= cached) return cached;
    const total = this.#count();
    if (total === undefined) {
      // Unreadable (no /proc): what the rest of the process had at load, or 1,024.
      if (this.#oursThen === -Infinity) this.#others = 1024;
    } else {
      this.#others = Math.max(0, total - ours);
    }
    this.#oursThen = ours;
    return budgetFrom(this.maxMapCount, this.#others + ours, ours);
  }
}

/** vm.max_map_count, or the kernel's default where it cannot be read. */
function readMaxMapCount(): number {
  return Number.parseInt(sys.readSmallFile('/proc/sys/vm/max_map_count') ?? '', 10) || 65530;
}
