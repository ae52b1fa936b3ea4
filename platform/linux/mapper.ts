// Every mapping the Linux backend makes of segment memory: run lists mapped
// at a segment's address, reservations of address space, and aligned
// reservations for page-table moves.
//
// Safety: every MAP_FIXED goes through `map`, and only ever at an address the
// backend owns: a segment's own mapping or reservation, a moved-aside window,
// or a range `map` itself just returned. MAP_FIXED replaces whatever is mapped
// there without a gap, so each caller guarantees one of two things: either
// every address a view can read shows the same bytes before and after (a
// freeze, a first clone, a failed restore put back), or the bytes change
// exactly as the operation intends (restore) or no view aliases the range yet
// (a reservation, a scratch range). Views keep their addresses throughout.
import * as sys from '../libc.ts';
import { largestLayer } from './cost.ts';
import type { Range } from '../../src/runs.ts';
import type { Layer, Runs } from './layers.ts';

/** Readable and writable, as every mapping of segment memory is. */
const RW = sys.PROT_READ | sys.PROT_WRITE;

/**
 * mmap(2) of `length` bytes at `at` (MAP_FIXED) or anywhere (`at` null);
 * see the Safety contract above for `at`.
 */
export function map(at: bigint | null, length: number, prot: number, flags: number, fd: number, offset: number): bigint {
  return sys.mmap(at, length, prot, flags | (at === null ? 0 : sys.MAP_FIXED), fd, offset);
}

/** Maps shared, readable and writable, all of `fd` at `at` (MAP_FIXED) or anywhere (`at` null). */
export function mapShared(at: bigint | null, length: number, fd: number): bigint {
  return map(at, length, RW, sys.MAP_SHARED | sys.MAP_NORESERVE, fd, 0);
}

/** Maps all of `fd` private, readable and writable, at `at`, replacing what was there. */
export function mapPrivate(at: bigint, length: number, fd: number): bigint {
  return map(at, length, RW, sys.MAP_PRIVATE | sys.MAP_NORESERVE, fd, 0);
}

/**
 * Maps `runs` at `at` (MAP_FIXED) or anywhere (`at` null): the layer with
 * the most pages in one call over the whole length, the other runs on top.
 * On failure a new mapping is unmapped; a fixed one is left to the caller.
 */
export function mapRuns(pageSize: number, at: bigint | null, runs: Runs, length: number, onFirstMapped?: () => void): bigint {
  const base = baseLayer(runs);
  const flags = sys.MAP_PRIVATE | sys.MAP_NORESERVE | (base === null ? sys.MAP_ANONYMOUS : 0);
  const addr = map(at, length, RW, flags, base === null ? -1 : base.fd, 0);
  onFirstMapped?.();
  try {
    for (let i = 0; i < runs.length; i++) {
      const layer = runs.layers[i]!;
      if (layer !== base) mapRange(pageSize, addr, { start: runs.starts[i]!, end: runs.ends[i]! }, layer);
    }
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

/**
 * The layer a run list is mapped over whole, its other runs on top: the one
 * with the most pages, but never a packed layer (Packing), whose file holds
 * only its own pages, not page i at offset i.
 */
export function baseLayer(runs: Runs): Layer | null {
  return largestLayer(runs, (layer) => layer === null || layer.packing === null);
}

/** Maps one page range of `layer` (or anonymous memory) at its place in the segment at `base`. */
export function mapRange(pageSize: number, base: bigint, r: Range, layer: Layer | null): void {
  const off = r.start * pageSize;
  const flags = sys.MAP_PRIVATE | sys.MAP_NORESERVE | (layer === null ? sys.MAP_ANONYMOUS : 0);
  map(base + BigInt(off), (r.end - r.start) * pageSize, RW, flags, layer === null ? -1 : layer.fd, layer === null ? 0 : layer.filePage(r.start) * pageSize);
}

/** Maps PROT_NONE reserved address space at `addr` (MAP_FIXED), or anywhere when `addr` is null. */
export function reserve(addr: bigint | null, length: number): bigint {
  return map(addr, length, sys.PROT_NONE, sys.MAP_PRIVATE | sys.MAP_ANONYMOUS | sys.MAP_NORESERVE, -1, 0);
}

/** Unmaps memory memfork mapped for itself; a failure leaves it mapped, which only costs address space. */
export function unreserve(addr: bigint, length: number): void {
  try {
    sys.munmap(addr, length);
  } catch {
    // Nothing else to do.
  }
}

/**
 * Reserves `length` bytes of address space (PROT_NONE, nothing committed)
 * at an address `phase` past a multiple of `span`; null when `span` is 0 or
 * it cannot be had, which only costs speed.
 */
export function reserveAligned(length: number, span: number, phase: bigint): bigint | null {
  if (span === 0) return null;
  let base: bigint;
  try {
    base = reserve(null, length + span);
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
    unreserve(base, length + span);
    return null;
  }
  try {
    if (end > start + BigInt(length)) sys.munmap(start + BigInt(length), Number(end - start) - length);
  } catch {
    unreserve(start, Number(end - start));
    return null;
  }
  return start;
}
