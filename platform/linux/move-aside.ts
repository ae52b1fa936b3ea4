// Moving a fresh segment's page tables aside at its first clone. Replacing a
// mapping tears down its page-table entries one by one, most of a first
// clone's cost; moved aside to a new MAP_SHARED mapping of the segment's
// layer (its "window", mremap with MREMAP_DONTUNMAP), they go with the layer
// instead, and the window lets pages frozen in place be written by a memory
// copy. The span math is pure; Windows counts and unmaps the windows.
import * as sys from '../libc.ts';
import { errnoOf } from '../../src/errors.ts';
import { reserveAligned, unreserve } from './mapper.ts';
import type { Features } from './features.ts';
import type { Layer } from './layers.ts';
import type { MapBudget } from './budget.ts';

/**
 * Page-table spans: a page of page tables holds `pageSize / 8` entries, so an
 * entry of the page middle directory maps pageSize² / 8 bytes (2 MiB with
 * 4 KiB pages) and one of the upper directory pageSize³ / 64 (1 GiB). A
 * segment placed at a multiple of its span has its page tables moved by
 * `mremap` a directory entry at a time, not page by page.
 */
export function spans(pageSize: number): { pmd: number; pud: number } {
  const pmd = (pageSize * pageSize) / 8;
  return { pmd, pud: (pmd * pageSize) / 8 };
}

/** The largest span not longer than `length`; 0 when even a middle-directory entry is. */
export function spanFor(length: number, pageSize: number): number {
  const { pmd, pud } = spans(pageSize);
  return length >= pud ? pud : length >= pmd ? pmd : 0;
}

/** The moved-aside mappings (Layer.window) of one backend. */
export class Windows {
  /** Moved-aside mappings still mapped, strays included: one mapping each, counted in the budget. */
  count = 0;
  /** Moved-aside mappings whose unmapping failed, retried with the next. */
  readonly #strays: { addr: bigint; length: number }[] = [];

  /** Whether some moved-aside mapping could not be unmapped yet. */
  get strays(): boolean {
    return this.#strays.length > 0;
  }

  /** Unmaps a layer's moved-aside mapping; one that will not go is retried with the next, and by release(). */
  drop(layer: Layer): void {
    this.#strays.push({ addr: layer.window, length: layer.length });
    layer.window = 0n;
    layer.windowFull = false;
    try {
      this.unmapStrays();
    } catch {
      // Kept for later.
    }
  }

  /** Unmaps the moved-aside mappings left over; throws the last failure, after trying each. */
  unmapStrays(): void {
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
      this.count--;
    }
    if (failure !== undefined) throw failure;
  }
}

/**
 * Moves the page tables of the fresh segment at `addr` (`length` bytes) to a
 * new mapping of its `layer` (mremap with MREMAP_DONTUNMAP), leaving the
 * segment mapped, with no page-table entries, at its address; the layer's
 * close tears them down later. Nothing changes when it fails.
 *
 * In one call, to a reservation placed like the segment relative to its
 * page-table span, so the kernel moves whole page-table pages. Measured on
 * Linux 6.18 (C, a memory file written through): 256 MiB in 0.03 ms, in
 * 2 MiB calls 0.2 ms; 4 GiB in 0.013 ms, in 1 GiB calls 0.04 ms; the
 * mapping as fast to use after either way. From Node.js, a first clone of
 * 256 MiB took 5.6 ms in 2 MiB calls, 0.8–2.4 ms in one. (An earlier
 * measurement here had one call moving entries one by one; a garbage
 * collection landing in the next clone looked like that too.)
 */
export function moveAside(
  addr: bigint,
  length: number,
  layer: Layer,
  pageSize: number,
  features: Features,
  budget: MapBudget,
  windows: Windows,
): void {
  const span = spanFor(length, pageSize);
  if (span === 0 || !features.moveAside || layer.window !== 0n) return;
  // The move splits the mapping it leaves behind until the remap that follows.
  if (!budget.fits(3)) return;
  const aside = reserveAligned(length, span, addr % BigInt(span));
  if (aside === null) return;
  try {
    sys.mremap(addr, length, length, sys.MREMAP_MAYMOVE | sys.MREMAP_FIXED | sys.MREMAP_DONTUNMAP, aside);
  } catch (err) {
    // Before Linux 5.13 only private anonymous mappings could be moved so.
    if (errnoOf(err) === sys.EINVAL) features.moveAside = false;
    unreserve(aside, length);
    return;
  }
  layer.window = aside;
  windows.count++;
}
