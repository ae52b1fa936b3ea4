// Dropping a segment's private pages (madvise(2) MADV_DONTNEED), so each
// reads its layer's contents again: by ranges in one process_madvise(2) call
// where the kernel takes it, else the caller falls back to madvise. And the
// reverse, making pages private copies without changing a byte
// (MADV_POPULATE_WRITE), so the layer under them can be rewritten.
import * as sys from '../libc.ts';
import { errnoOf } from '../../src/errors.ts';
import { RangeList, type Range } from '../../src/runs.ts';
import type { Features } from './features.ts';
import { UIO_MAXIOV } from './writer.ts';
import { iovecSetter } from './words.ts';

/** How a kernel without process_madvise(MADV_DONTNEED) on itself refuses it. */
const UNSUPPORTED = new Set([sys.EBADF, sys.EINVAL, sys.ENOSYS, sys.EPERM]);

/**
 * Fills `iov` with an (address, length) pair for each page range of
 * `ranges` from index `from` to `to` in the segment at `base`; returns
 * their total bytes.
 */
export function fillRanges(iov: BigUint64Array, base: bigint, ranges: RangeList, pageSize: number, from = 0, to = ranges.length): number {
  let bytes = 0;
  const set = iovecSetter(iov, base);
  const { starts, ends } = ranges;
  for (let i = from; i < to; i++) {
    const length = (ends[i]! - starts[i]!) * pageSize;
    set(i - from, starts[i]! * pageSize, length);
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
  ranges(base: bigint, ranges: RangeList): boolean {
    if (!this.#features.vectorAdvise) return false;
    for (let from = 0; from < ranges.length; from += UIO_MAXIOV) {
      try {
        if (!this.#advise(base, ranges, from, Math.min(ranges.length, from + UIO_MAXIOV), sys.MADV_DONTNEED)) return false;
      } catch (err) {
        // Before Linux 6.15 (no PIDFD_SELF) or 6.13 (no MADV_DONTNEED here):
        // stop trying. Any other failure: the caller decides.
        if (UNSUPPORTED.has(errnoOf(err))) this.#features.vectorAdvise = false;
        return false;
      }
    }
    return true;
  }

  /**
   * Drops the private pages under `ranges` of the segment at `base`, and only
   * those: by ranges() where the kernel takes it, else one madvise(2) a range.
   */
  rangesEach(base: bigint, ranges: RangeList): void {
    if (this.ranges(base, ranges)) return;
    const page = this.#pageSize;
    const { starts, ends } = ranges;
    for (let i = 0; i < ranges.length; i++) sys.madvise(base + BigInt(starts[i]! * page), (ends[i]! - starts[i]!) * page, sys.MADV_DONTNEED);
  }

  /**
   * Makes every page under `ranges` of the segment at `base` a private copy
   * of what it reads now, bytes unchanged: a write fault on each
   * (MADV_POPULATE_WRITE), by ranges in one process_madvise(2) call where
   * the kernel takes it, else one madvise(2) per range, else (before Linux
   * 5.14) by writing each page's first byte back. Throws SegmentError
   * (ENOMEM where the memory is not there); pages made private before the
   * failure stay so, which changes no byte.
   *
   * `fileMapped`: pages among them whose entries map their file's page
   * (Scanner.fileMapped), dropped first by ranges(). A write fault that
   * replaces an entry in place flushes that entry from the TLB of every
   * core running another thread of the process, an interrupt each; one
   * that fills an empty entry flushes nothing, and ranges() flushes once a
   * call. Measured in C here, 8,192 pages of 256 MiB: 2.7 µs a page alone,
   * 18.7 with a second thread running; dropped first, 1.8 to 2.1 either
   * way (a runtime's compiler and collector threads are such threads).
   * Dropping such an entry changes no byte as long as the file page under
   * it is not rewritten before the fault maps it again.
   */
  privatize(base: bigint, ranges: readonly Range[], fileMapped?: RangeList): void {
    const page = this.#pageSize;
    if (fileMapped !== undefined && fileMapped.length > 0) this.ranges(base, fileMapped);
    const list = RangeList.from(ranges);
    let from = 0;
    while (from < ranges.length && this.#features.vectorPopulate) {
      const to = Math.min(ranges.length, from + UIO_MAXIOV);
      try {
        // A short count: the rest of this batch goes one range at a time.
        if (!this.#advise(base, list, from, to, sys.MADV_POPULATE_WRITE)) break;
      } catch (err) {
        if (!UNSUPPORTED.has(errnoOf(err))) throw err;
        this.#features.vectorPopulate = false;
        break;
      }
      from = to;
    }
    for (const r of ranges.slice(from)) {
      const at = base + BigInt(r.start * page);
      const length = (r.end - r.start) * page;
      if (this.#features.populate) {
        try {
          sys.madvise(at, length, sys.MADV_POPULATE_WRITE);
          continue;
        } catch (err) {
          if (errnoOf(err) !== sys.EINVAL) throw err;
          this.#features.populate = false;
        }
      }
      // Safety: the range lies inside the segment's own mapping; each byte is
      // written with the value it holds, so only the page's ownership changes.
      const bytes = new Uint8Array(sys.view(at, length));
      for (let off = 0; off < length; off += page) bytes[off] = bytes[off]!;
    }
  }

  /** One process_madvise(2) call over `ranges` from index `from` to `to` (at most UIO_MAXIOV of them); false if the kernel stopped short. */
  #advise(base: bigint, ranges: RangeList, from: number, to: number, advice: number): boolean {
    const iov = (this.#iov ??= new BigUint64Array(UIO_MAXIOV * 2));
    const bytes = fillRanges(iov, base, ranges, this.#pageSize, from, to);
    return sys.processMadvise(iov, to - from, advice) === bytes;
  }
}
