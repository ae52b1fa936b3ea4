// Descriptors, like mappings, are a per-process resource: every layer is an
// open memfd, and RLIMIT_NOFILE counts the descriptors of every thread, other
// workers' memfork layers included. A backend that counted only its own
// layers would let several workers together take the whole limit, leaving the
// program nothing to open a file with. So the budget is worked out from the
// process's real count, read from /proc/self/fd: memfork as a whole may hold
// half of the soft limit, less what the rest of the process holds beyond the
// other half. The count is read again once this backend's layers have grown by
// RECHECK since the last reading, and at every decision within RECHECK of the
// budget, so it is cheap far from the limit and exact near it.
import * as sys from '../libc.ts';

/** Growth of this backend's own layers after which the process's count is read again. */
export const RECHECK = 32;
/** Fewest layers a backend may always hold (a freeze needs a few at once). */
export const FLOOR = 4;

/**
 * The most layers one backend may hold: half of the descriptor limit
 * `nofile`, less what the rest of the process holds (`processFds - ours` at
 * the reading), never below FLOOR. Pure; the reading is the caller's.
 */
export function fdBudgetFrom(nofile: number, processFds: number, ours: number): number {
  return Math.max(FLOOR, Math.floor(nofile / 2) - Math.max(0, processFds - ours));
}

/** The process-wide descriptor budget as one backend sees it. */
export class ProcessFdBudget {
  readonly #count: () => number | undefined;
  readonly #nofile: () => number | undefined;
  /** The soft limit at the last reading. */
  #limit = 1024;
  /** What the rest of the process held at the last reading. */
  #others = 0;
  /** This backend's own layers at the last reading; -Infinity before the first. */
  #oursThen = -Infinity;

  /**
   * @param count reads how many descriptors the process has open (tests pass their own)
   * @param nofile reads the soft RLIMIT_NOFILE, which may change while the process runs
   */
  constructor(count: () => number | undefined = sys.countOpenFds, nofile: () => number | undefined = sys.fdLimit) {
    this.#count = count;
    this.#nofile = nofile;
  }

  /**
   * The most layers this backend may hold, given it holds `ours` now and is
   * about to open `needed` more. Reads the process's count again when due.
   */
  limit(ours: number, needed = 0): number {
    const cached = fdBudgetFrom(this.#limit, this.#others + ours, ours);
    if (Math.abs(ours + needed - this.#oursThen) < RECHECK && ours + needed + RECHECK <= cached) return cached;
    this.#limit = this.#nofile() ?? this.#limit;
    const total = this.#count();
    // Unreadable (no /proc): nothing known of the rest of the process.
    if (total !== undefined) this.#others = Math.max(0, total - ours);
    this.#oursThen = ours;
    return fdBudgetFrom(this.#limit, this.#others + ours, ours);
  }
}
