// The mapping budget. Each run of a mapped segment costs the process a kernel
// mapping (VMA), and vm.max_map_count is per process, shared with V8 and
// everything else: at the limit the process can abort inside V8, not just
// fail an mmap. All segments together stay under a budget (the process's,
// map-budget.ts, or one fixed by an option), and the most fragmented are
// compacted to make room before an operation that needs more.
import * as sys from '../libc.ts';
import { systemError } from '../../src/errors.ts';
import { COMPACT_WINDOWS, duplicateLimit } from './cost.ts';
import { ProcessMapBudget } from './map-budget.ts';
import type { Windows } from './move-aside.ts';

/** What room-making needs of a segment. */
interface Compactable {
  readonly mapped: boolean;
  /** What its mappings show: one mapping each. */
  readonly maps: { readonly length: number };
}

/** The mappings one backend's segments use, against its budget. */
export class MapBudget {
  /** The budget fixed by the `mapBudget` option, or undefined: the process's (see map-budget.ts). */
  readonly #fixed: number | undefined;
  readonly #process: ProcessMapBudget | undefined;
  /**
   * Mappings all live segments use: the sum of the mapping counts of the mapped
   * ones, and one reservation for each one not mapped.
   */
  segments = 0;
  readonly #windows: Windows;

  /** `fixed`: a budget of its own (at least 16); undefined: the process's. */
  constructor(fixed: number | undefined, windows: Windows) {
    this.#fixed = fixed === undefined ? undefined : Math.max(16, fixed);
    this.#process = fixed === undefined ? new ProcessMapBudget() : undefined;
    this.#windows = windows;
  }

  /** The most mappings all segments of this backend may use, as it stands for a decision that needs `needed` more. */
  limit(needed = 0): number {
    if (this.#fixed !== undefined) return this.#fixed;
    return Math.max(16, this.#process!.limit(this.used, needed));
  }

  /** Mappings in use: the segments', and one per moved-aside mapping. */
  get used(): number {
    return this.segments + this.#windows.count;
  }

  /** Whether `needed` more mappings fit. */
  fits(needed: number): boolean {
    return this.used + needed <= this.limit(needed);
  }

  /**
   * Makes room for `needed` more mappings under the budget by compacting the
   * most fragmented of `segments`; throws ENOMEM when even that cannot. The
   * compactions together may duplicate at most `pages` shared pages: never
   * more memory than copying the segment at hand would take. `compact`
   * rewrites a segment down to a number of windows, duplicating at most a
   * number of shared pages, and returns how many it duplicated.
   */
  ensureRoom<S extends Compactable>(
    needed: number,
    pages: number,
    segments: Iterable<S>,
    compact: (seg: S, windows: number, limit: number) => number,
  ): void {
    if (this.fits(needed)) return;
    let allowance = Math.max(pages, duplicateLimit(pages));
    // First the cheap way: a few windows off the main layer; then flatten.
    for (const windows of [COMPACT_WINDOWS, 0]) {
      const bySize = [...segments].filter((s) => s.mapped && s.maps.length > 2 * windows + 1).sort((a, b) => b.maps.length - a.maps.length);
      for (const seg of bySize) {
        allowance -= compact(seg, windows, allowance);
        if (this.fits(needed)) return;
      }
    }
    throw systemError(
      'mmap',
      sys.ENOMEM,
      `mapping budget exhausted (${this.used} of ${this.limit(needed)} mappings in use, ${needed} more needed; ` +
        'compacting further would copy pages other segments share)',
    );
  }
}
