// Dropping a segment's private pages (madvise(2) MADV_DONTNEED), so each
// reads its layer's contents again: by ranges in one process_madvise(2) call
// where the kernel takes it, else the caller falls back to madvise.
import * as sys from '../libc.ts';
import { errnoOf } from '../../src/errors.ts';
import type { Range } from '../../src/runs.ts';
import type { Features } from './features.ts';
import { UIO_MAXIOV } from './writer.ts';

/** How a kernel without process_madvise(MADV_DONTNEED) on itself refuses it. */
const UNSUPPORTED = new Set([sys.EBADF, sys.EINVAL, sys.ENOSYS, sys.EPERM]);

/**
 * Fills `iov` with an (address, length) pair for each page range of
 * `ranges` in the segment at `base`; returns their total bytes.
 */
export function fillRanges(iov: BigUint64Array, base: bigint, ranges: readonly Range[], pageSize: number): number {
  let bytes = 0;
  for (const [i, r] of ranges.entries()) {
    const length = (r.end - r.start) * pageSize;
    iov[i * 2] = base + BigInt(r.start * pageSize);
    iov[i * 2 + 1] = BigInt(length);
    bytes += length;
  }
  return bytes;
}

/** Drops private pages of one backend's segments by ranges: its iovec scratch. */
export class Dropper {
  readonly #pageSize: number;
  readonly #features: Features;
  /** (address, length) pairs for process_madvise. */
  #iov: BigUint64Array | undefined;

  constructor(pageSize: number, features: Features) {
    this.#pageSize = pageSize;
    this.#features = features;
  }

  /**
   * Drops the private pages under `ranges` of the segment at `base` with
   * process_madvise(2), up to UIO_MAXIOV ranges a call; false if the kernel
   * refused or stopped short. Naming only these ranges matters twice over:
   * the other private pages stay, and the kernel flushes only their TLB
   * entries (one madvise over a whole segment flushes the whole TLB, which
   * costs more than the dropping where page tables are shadowed: virtual
   * machines without nested paging, see the bench notes).
   */
  ranges(base: bigint, ranges: readonly Range[]): boolean {
    if (!this.#features.vectorAdvise) return false;
    const iov = (this.#iov ??= new BigUint64Array(UIO_MAXIOV * 2));
    for (let from = 0; from < ranges.length; from += UIO_MAXIOV) {
      const batch = ranges.slice(from, from + UIO_MAXIOV);
      const bytes = fillRanges(iov, base, batch, this.#pageSize);
      try {
        if (sys.processMadvise(iov, batch.length, sys.MADV_DONTNEED) !== bytes) return false;
      } catch (err) {
        // Before Linux 6.15 (no PIDFD_SELF) or 6.13 (no MADV_DONTNEED here):
        // stop trying. Any other failure: the caller decides.
        if (UNSUPPORTED.has(errnoOf(err))) this.#features.vectorAdvise = false;
        return false;
      }
    }
    return true;
  }
}
