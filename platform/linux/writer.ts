// Copying segment memory into layers, the four ways: a memory copy through a
// layer's moved-aside mapping (window), vmsplice(2) and splice(2) through a
// pipe, pwrite(2), and copy_file_range(2) from one layer to another; and
// back, pread(2) from a layer into segment memory. The batching of memory
// ranges into iovecs is pure.
import * as sys from '../libc.ts';
import { errnoOf, systemError } from '../../src/errors.ts';
import { pageCount, RangeList, type Range, type Run } from '../../src/runs.ts';
import { CheaperWay } from './cost.ts';
import type { Features } from './features.ts';
import type { Layer } from './layers.ts';
import { exactNumber, iovecSetter } from './words.ts';

/** Most (address, length) pairs one vectored call takes (UIO_MAXIOV). */
export const UIO_MAXIOV = 1024;
/** Capacity asked for the copying pipe: the most an unprivileged process gets by default (fs.pipe-max-size). */
const PIPE_BYTES = 1 << 20;
/** Most bytes one pwritev call is asked to write (below Linux's largest single write). */
const GATHER_BYTES = 1 << 30;
/** Fewest pages copied through the pipe rather than with pwrite. */
const PIPE_MIN_PAGES = 64;
/** How a kernel or sandbox refuses copy_file_range between memory files, or vmsplice and splice. */
const NO_FILE_COPY = new Set([sys.EXDEV, sys.EINVAL, sys.ENOSYS, sys.EOPNOTSUPP, sys.EPERM]);

/**
 * How Writer.gather copies: through the pipe (pwritev where the kernel
 * refuses it), or whichever of the pipe and pwritev has been cheaper here
 * (CheaperWay), learned apart for the two kinds of memory it reads: a
 * layer's window ('window') and the pages a segment has just written
 * ('own').
 */
export type GatherWay = 'pipe' | 'window' | 'own';

/** A position in sorted page ranges: the index of the range reached, and the byte offset reached in it. */
export interface Cursor {
  index: number;
  at: number;
}

/**
 * Fills `iov` with (address, length) pairs for the memory under the sorted
 * page `ranges` of the segment at `base`, from `from` on: at most
 * `maxEntries` pairs and `maxBytes` bytes, the last pair cut short to fit.
 * Returns how many pairs and bytes it filled.
 */
export function fillIovec(
  iov: BigUint64Array,
  base: bigint,
  ranges: RangeList,
  pageSize: number,
  from: Cursor,
  maxEntries: number,
  maxBytes: number,
): { count: number; bytes: number } {
  let n = 0;
  let bytes = 0;
  const set = iovecSetter(iov, base);
  const { starts, ends } = ranges;
  for (let j = from.index, pos = from.at; j < ranges.length && n < maxEntries && bytes < maxBytes; ) {
    const end = ends[j]! * pageSize;
    const length = Math.min(end - pos, maxBytes - bytes);
    set(n, pos, length);
    n++;
    bytes += length;
    pos += length;
    if (pos === end && ++j < ranges.length) pos = starts[j]! * pageSize;
  }
  return { count: n, bytes };
}

/**
 * Moves `cursor` forward over `bytes` bytes of the sorted page `ranges`,
 * adding to `pieces`, where given, the (byte offset, length) pieces it
 * passed, in order, one per range touched.
 */
export function advance(ranges: RangeList, pageSize: number, cursor: Cursor, bytes: number, pieces?: [number, number][]): void {
  const { starts, ends } = ranges;
  while (bytes > 0) {
    const end = ends[cursor.index]! * pageSize;
    const length = Math.min(end - cursor.at, bytes);
    pieces?.push([cursor.at, length]);
    bytes -= length;
    cursor.at += length;
    if (cursor.at === end && ++cursor.index < ranges.length) cursor.at = starts[cursor.index]! * pageSize;
  }
}

/**
 * copy_file_range(2) of `length` bytes at `offset` from file `from` into file
 * `to` at `toOffset` (the same offset if not given). Returns false when the
 * kernel or a sandbox will not copy between memory files, and from then on
 * `features.fileCopy` says so; other failures throw.
 */
export function copyFileToFile(features: Features, from: number, to: number, offset: number, length: number, toOffset = offset): boolean {
  try {
    sys.copyFileRange(from, to, offset, length, toOffset);
  } catch (err) {
    if (!NO_FILE_COPY.has(errnoOf(err))) throw err;
    features.fileCopy = false;
    return false;
  }
  return true;
}

/**
 * copyFileToFile for the pages under `r` of layer `from`, wherever its file
 * holds them (Layer.filePage), into file `to` from page `toPage` on.
 */
export function copyPages(features: Features, pageSize: number, from: Layer, r: Range, to: number, toPage: number): boolean {
  return copyFileToFile(features, from.fd, to, from.filePage(r.start) * pageSize, (r.end - r.start) * pageSize, toPage * pageSize);
}

/** Reads `length` bytes of file `fd` at `offset` into memory at `at`, through short reads. */
export function readInto(fd: number, at: bigint, length: number, offset: number): void {
  for (let done = 0; done < length; ) {
    const n = sys.pread(fd, at + BigInt(done), length - done, offset + done);
    if (n <= 0) throw systemError('pread', sys.EIO, 'short read of a memory file');
    done += n;
  }
}

/** Reads `into.length` bytes of file `fd` at `offset` into `into`, through short reads. */
export function readAside(fd: number, into: Uint8Array, offset: number): void {
  for (let done = 0; done < into.length; ) {
    const n = sys.pread(fd, into.subarray(done), into.length - done, offset + done);
    if (n <= 0) throw systemError('pread', sys.EIO, 'short read of a memory file');
    done += n;
  }
}

/** Most bytes zeroed through one view (below every runtime's largest ArrayBuffer). */
const ZERO_CHUNK = 2 ** 30;

/**
 * Reads the contents `runs` describe into the memory at `base`, run by run:
 * pread(2) from each run's layer at the run's own offset, zeros for an
 * anonymous run. Each page written so becomes a private page of the mapping
 * at `base`.
 */
export function readRuns(pageSize: number, base: bigint, runs: readonly Run<Layer | null>[]): void {
  for (const r of runs) {
    const offset = r.start * pageSize;
    const length = (r.end - r.start) * pageSize;
    const at = base + BigInt(offset);
    if (r.layer !== null) {
      readInto(r.layer.fd, at, length, r.layer.filePage(r.start) * pageSize);
      continue;
    }
    for (let done = 0; done < length; done += ZERO_CHUNK) {
      // Safety: the caller's mapping covers [base + offset, base + offset + length).
      new Uint8Array(sys.view(at + BigInt(done), Math.min(ZERO_CHUNK, length - done))).fill(0);
    }
  }
}

/** Writes segment memory into layers for one backend: its pipe and iovec scratch. */
export class Writer {
  readonly #pageSize: number;
  readonly #features: Features;
  /** A pipe that copies segment memory into layers (vmsplice, then splice); null: none, use pwrite. */
  #pipe: { read: number; write: number; size: number } | null = openPipe();
  /** (address, length) pairs for vmsplice. */
  #iov: BigUint64Array | undefined;

  /** Which of pwritev (0) and the pipe (1) has been cheaper for gathers that may take either, by what they read. */
  readonly #ways = { window: new CheaperWay(), own: new CheaperWay() };
  /** The way such gathers take, fixed (tests); undefined: learned. */
  readonly #fixedWay: 'pipe' | 'pwritev' | undefined;

  constructor(pageSize: number, features: Features, fixedWay?: 'pipe' | 'pwritev') {
    this.#pageSize = pageSize;
    this.#features = features;
    this.#fixedWay = fixedWay;
  }

  /**
   * Writes the memory under `ranges` of pages from `base` into `layer`
   * through its moved-aside mapping (see move-aside.ts): a memory copy, no
   * system call, and the mapping already has page-table entries for every
   * page the segment wrote before its first clone (1 GiB, 1% of pages at
   * random: 1.4 µs a page, against 4.4 µs through a pipe).
   */
  toWindow(layer: Layer, base: bigint, ranges: RangeList): void {
    const page = this.#pageSize;
    const { starts, ends } = ranges;
    const to = exactNumber(layer.window);
    const from = exactNumber(base);
    // Safety: both ranges lie inside mappings of `layer.length` bytes that
    // stay mapped for the call: the segment's own and the layer's window.
    if (to !== null && from !== null) {
      for (let i = 0; i < ranges.length; i++) {
        const off = starts[i]! * page;
        sys.copyMemoryAt(to + off, from + off, (ends[i]! - starts[i]!) * page);
      }
      return;
    }
    for (let i = 0; i < ranges.length; i++) {
      const off = BigInt(starts[i]! * page);
      sys.copyMemory(layer.window + off, base + off, (ends[i]! - starts[i]!) * page);
    }
  }

  /**
   * Writes the memory under the sorted `ranges` of pages from `base` into
   * `layer`, each page at its own place there (Layer.filePage). Through a pipe: vmsplice(2) takes the
   * pages by reference and splice(2) copies them into the file, so the kernel
   * never reads them through the process's page tables. That is what pwrite
   * does, and where page tables are shadowed by a hypervisor each first
   * access costs a trap (see the bench notes); pwrite is the fallback.
   */
  write(layer: Layer, base: bigint, ranges: readonly Range[]): void {
    if (ranges.length === 0) return;
    const page = this.#pageSize;
    const fd = layer.fd;
    // The file offset of byte `offset` of the segment (in a page the layer holds).
    const fileOffset = (offset: number) => {
      const p = Math.floor(offset / page);
      return layer.filePage(p) * page + offset - p * page;
    };
    // A pipe has a fixed cost per copy (up to a millisecond for the first into
    // a file, measured): a few pages go with pwrite.
    const many = this.#features.splice && pageCount(ranges) >= PIPE_MIN_PAGES;
    if (many && this.#pipe === null) this.#pipe = openPipe();
    const pipe = many ? this.#pipe : null;
    const pwriteAll = () => {
      for (const r of ranges) {
        sys.pwriteAll(fd, base + BigInt(r.start * page), (r.end - r.start) * page, fileOffset(r.start * page));
      }
    };
    if (pipe === null) {
      pwriteAll();
      return;
    }
    const list = RangeList.from(ranges);
    const cursor: Cursor = { index: 0, at: ranges[0]!.start * page };
    const pieces: [number, number][] = [];
    const done = this.#throughPipe(pipe, base, list, cursor, pieces, () => {
      for (const [offset, length] of pieces) sys.spliceAll(pipe.read, fd, fileOffset(offset), length);
    });
    // Refused: these ranges again, all of them (the same bytes twice is harmless).
    if (!done) pwriteAll();
  }

  /**
   * Writes the memory under the sorted `ranges` of pages from `base` into
   * file `fd` one after another from byte `offset`. Through the pipe where
   * there is one (as write() does): vmsplice(2) finds the pages by walking
   * the page tables in software, splice(2) copies them through the
   * kernel's own mapping. Else pwritev(2), up to UIO_MAXIOV ranges a call,
   * where the kernel reads them through the process's page tables: where a
   * hypervisor shadows those, the first read of each page from the kernel
   * traps (measured in C on the bench's VM, 2,621 pages at random of a
   * 1 GiB memory file, new ones each round: pwritev 7.1 µs a page, vmsplice
   * and splice through a 1 MiB pipe 1.4; the same pages again: pwritev
   * 0.8). One call a page costs more than either (copy_file_range 4.9 µs).
   * `how` 'pipe' needs the pipe where the kernel has it: the pages may
   * have no entry. Where every page has one, which is cheaper depends on
   * the machine and on whether those entries are in use: a segment's own
   * private copies, just written (1 GiB, every 2nd page: pwritev 1.26 µs a
   * page, the pipe 2.3 on one VM; 256 MiB, every 8th page: the pipe ahead
   * on another), or a layer's window, read where it was last written
   * perhaps long ago. So 'own' and 'window' take the one that has been
   * cheaper for that kind, timed (CheaperWay, cost.ts); a way being tried
   * takes at most TRIAL_PAGES of a copy, the rest going the cheaper.
   */
  gather(fd: number, base: bigint, ranges: RangeList, offset: number, how: GatherWay = 'pipe'): void {
    if (ranges.length === 0) return;
    const ways = how === 'pipe' || !this.#features.splice ? undefined : this.#ways[how];
    if (ways === undefined || this.#fixedWay !== undefined) {
      this.#gatherBy(ways === undefined ? how === 'pipe' : this.#fixedWay === 'pipe', fd, base, ranges, offset);
      return;
    }
    // Part by part: a way being tried takes a sample of the copy, the rest
    // goes the way found cheaper (CheaperWay.part); each part timed.
    let rest = ranges;
    let at = offset;
    while (rest.length > 0) {
      const left = rest.pages;
      const { way, pages } = ways.part(left);
      const [part, after] = pages >= left ? [rest, new RangeList(0)] : rest.splitAtPages(pages);
      const started = performance.now();
      if (this.#gatherBy(way === 1, fd, base, part, at)) ways.record(way, pages, performance.now() - started);
      at += pages * this.#pageSize;
      rest = after;
    }
  }

  /**
   * Copies the memory under `ranges` of the segment at `base` into `fd`
   * from byte `offset` on, through the pipe (`viaPipe`, where the kernel
   * has it) or by pwritev. False where the pipe was asked for and pwritev
   * copied some or all of it instead (no pipe, or the kernel refused it):
   * a time that says neither way's cost.
   */
  #gatherBy(viaPipe: boolean, fd: number, base: bigint, ranges: RangeList, offset: number): boolean {
    const page = this.#pageSize;
    const iov = (this.#iov ??= new BigUint64Array(UIO_MAXIOV * 2));
    const cursor: Cursor = { index: 0, at: ranges.starts[0]! * page };
    let at = offset;
    // Asked for the pipe and copied otherwise, the time says nothing.
    const clean = !viaPipe;
    if (viaPipe && this.#features.splice) {
      this.#pipe ??= openPipe();
      const pipe = this.#pipe;
      const done =
        pipe !== null &&
        this.#throughPipe(pipe, base, ranges, cursor, undefined, (taken) => {
          sys.spliceAll(pipe.read, fd, at, taken);
          at += taken;
        });
      if (done) return true;
      // Refused: pwritev from the first page not known written (the cursor and `at`).
    }
    while (cursor.index < ranges.length) {
      const { count } = fillIovec(iov, base, ranges, page, cursor, UIO_MAXIOV, GATHER_BYTES);
      const n = sys.pwritev(fd, iov, count, at);
      if (n <= 0) throw systemError('pwritev', sys.EIO, `write to a memory file stopped after ${at - offset} bytes`);
      advance(ranges, page, cursor, n);
      at += n;
    }
    return clean;
  }

  /**
   * Copies the memory under `ranges` from `cursor` on through `pipe`:
   * vmsplice takes as much as the pipe holds, then `put` empties it (given
   * the bytes taken; `pieces`, where given, holds them as segment offsets
   * and lengths).
   * True when all is copied. False where the kernel refuses vmsplice or
   * splice outright (a sandbox without them, say): from then on this
   * writer uses none, and `cursor` is back at the first page not put.
   * Other failures throw. Either way the pipe, which may hold pages still,
   * is closed (a new one is made next time).
   */
  #throughPipe(
    pipe: { read: number; write: number; size: number },
    base: bigint,
    ranges: RangeList,
    cursor: Cursor,
    pieces: [number, number][] | undefined,
    put: (taken: number) => void,
  ): boolean {
    const page = this.#pageSize;
    const iov = (this.#iov ??= new BigUint64Array(UIO_MAXIOV * 2));
    let mark = { index: cursor.index, at: cursor.at };
    try {
      while (cursor.index < ranges.length) {
        mark = { index: cursor.index, at: cursor.at };
        // As much as the pipe holds, from the cursor on.
        const { count } = fillIovec(iov, base, ranges, page, cursor, UIO_MAXIOV, pipe.size);
        const taken = sys.vmsplice(pipe.write, iov, count);
        if (taken <= 0) throw systemError('vmsplice', sys.EIO, 'the pipe took no pages');
        if (pieces !== undefined) pieces.length = 0;
        advance(ranges, page, cursor, taken, pieces);
        put(taken);
      }
      return true;
    } catch (err) {
      this.close();
      if (!NO_FILE_COPY.has(errnoOf(err))) throw err;
      this.#features.splice = false;
      cursor.index = mark.index;
      cursor.at = mark.at;
      return false;
    }
  }

  /** Closes the pipe; the next copy through one makes a new one. */
  close(): void {
    if (this.#pipe === null) return;
    sys.closeFd(this.#pipe.read);
    sys.closeFd(this.#pipe.write);
    this.#pipe = null;
  }
}

/** The copying pipe, 1 MiB where the system allows; null when none can be had. */
function openPipe(): { read: number; write: number; size: number } | null {
  try {
    return sys.pipe(PIPE_BYTES);
  } catch {
    return null;
  }
}
