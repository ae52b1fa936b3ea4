// Copy backend: the portable fallback, with eager copies instead of
// copy-on-write. It makes no operating-system calls of its own.
//
// - clone() allocates new memory and copies every byte of the source;
//   restore() copies every byte of the source over the target, in place, so
//   the target keeps its address and its views. Both cost O(size), and every
//   clone holds its own private copy: nothing is ever shared.
// - Memory comes from one of two places, chosen when the backend is built:
//   * 'heap' (the default): zero-filled memory from the C library's
//     `calloc` (found through koffi in the running process, or in
//     ucrtbase.dll/msvcrt.dll on Windows; failing both, `koffi.alloc`, which
//     allocates at most 2 GiB), with views made by `koffi.view`. Views alias
//     any range, `address` is the real start address (aligned to `pageSize`),
//     and a failed allocation is `SegmentError` ENOMEM (syscall 'calloc').
//   * 'arraybuffer': a plain ArrayBuffer per segment, for runtimes that refuse
//     ArrayBuffers over outside memory (Electron), or when koffi cannot
//     allocate. JavaScript cannot make one ArrayBuffer alias part of another,
//     so the only view that aliases is the whole segment — the ArrayBuffer
//     itself, which `buffer` returns. `view()` of any other range throws
//     RangeError saying so. `pageSize` is 1 here (lengths are not rounded),
//     so that `buffer` covers exactly `byteLength` bytes. `address` is 0n.
//     A failed allocation is `SegmentError` ENOMEM (syscall 'ArrayBuffer').
//     Because the view *is* the memory, detaching it (close() does) drops the
//     contents: that is only right at close().
//
// stats(): every byte of a segment is private (`privateBytes` = its page-
// rounded length, `sharedBytes` 0); `mappings` is 0 because heap memory and
// ArrayBuffers are not mappings of their own. memory(): one layer per live
// segment, `layerBytes` the bytes allocated for them (alignment included).
import * as os from 'node:os';
import koffi from 'koffi';
import type { Backend, BackendMemory, BackendStats } from '../src/backend.ts';
import { SegmentError } from '../src/errors.ts';
import { maxViewLength } from '../src/runtime.ts';

/** Where the copy backend keeps segment memory (see the file header). */
export type CopyMemory = 'heap' | 'arraybuffer';

export interface CopyOptions {
  /** Force a memory kind; by default 'heap' when this runtime allows it, else 'arraybuffer'. */
  memory?: CopyMemory;
  /** Test seam: the allocator heap mode uses instead of the C library's. */
  heap?: CopyHeap;
}

/** The copy backend's handle for one segment. */
export interface CopySegment {
  /** Bytes of the segment; always a multiple of the backend's page size. */
  readonly length: number;
  /** Heap mode: what the allocator returned (freed on release); 0n otherwise. */
  readonly base: bigint;
  /** Heap mode: the segment's start, `base` rounded up to the page size; 0n otherwise. */
  readonly addr: bigint;
  /** Bytes asked of the allocator: `length`, plus alignment slack in heap mode. */
  readonly allocated: number;
  /** The allocator that owns `base` (memory goes back to the one it came from). */
  readonly heap: CopyHeap | undefined;
  /** Arraybuffer mode: the memory itself; undefined once released. */
  mem: ArrayBuffer | undefined;
  released: boolean;
}

/** A C-style allocator: zero-filled memory, and its release. */
export interface CopyHeap {
  /** The call named in errors, e.g. 'calloc'. */
  readonly name: string;
  /** Zero-filled memory of `bytes` bytes, or null when there is none. */
  calloc(bytes: number): bigint | null;
  free(ptr: bigint): void;
}

/** ENOMEM as this platform numbers it (12 on Linux, macOS and Windows alike). */
const ENOMEM = os.constants.errno.ENOMEM ?? 12;

/** Heap pages are copied through windows of this many bytes, well under any view limit. */
const COPY_WINDOW = 64 << 20;

/** Page size of the heap mode: it only rounds lengths and aligns starts, so any power of two works. */
const HEAP_PAGE = 4096;

let heapCache: CopyHeap | null | undefined;

/** The C library's calloc/free through koffi, or koffi's own allocator; null when none loads. */
export function nativeHeap(): CopyHeap | null {
  if (heapCache !== undefined) return heapCache;
  heapCache = null;
  // POSIX: null opens the running program, whose global symbols include the C library.
  const places: (string | null)[] = process.platform === 'win32' ? ['ucrtbase.dll', 'msvcrt.dll'] : [null];
  for (const place of places) {
    try {
      const lib = koffi.load(place);
      const calloc = lib.func('void *calloc(size_t nmemb, size_t size)') as (n: number, size: number) => bigint | null;
      const free = lib.func('void free(void *ptr)') as (ptr: bigint) => void;
      heapCache = { name: 'calloc', calloc: (bytes) => calloc(1, bytes), free };
      return heapCache;
    } catch {
      // Not here: try the next place.
    }
  }
  try {
    // koffi.alloc is calloc inside koffi, limited to INT32_MAX bytes.
    const probe: unknown = koffi.alloc('uint8', 1);
    koffi.free(probe);
    heapCache = {
      name: 'calloc',
      calloc: (bytes) => (bytes > 0x7fffffff ? null : koffi.address(koffi.alloc('uint8', bytes))),
      free: (ptr) => koffi.free(ptr),
    };
  } catch {
    // No native heap at all.
  }
  return heapCache;
}

/** An ArrayBuffer aliasing `length` bytes of native memory at `addr`. */
function nativeView(addr: bigint, length: number): ArrayBuffer {
  return koffi.view(addr as unknown as never, length) as ArrayBuffer;
}

function outOfMemory(syscall: string, bytes: number): SegmentError {
  return new SegmentError(`${syscall} ENOMEM: cannot allocate ${bytes} bytes`, 'ENOMEM', ENOMEM, syscall);
}

/**
 * The portable backend: correct everywhere, with eager copies instead of
 * copy-on-write.
 *
 * @example
 * ```ts
 * setBackend(new CopyBackend());                  // tests
 * const ab = new CopyBackend({ memory: 'arraybuffer' });
 * ```
 */
export class CopyBackend implements Backend<CopySegment> {
  readonly name = 'copy' as const;
  /** 4096 in heap mode, 1 in arraybuffer mode (see the file header). */
  readonly pageSize: number;
  readonly maxViewLength = maxViewLength;
  /** Where segment memory lives. */
  readonly memoryKind: CopyMemory;
  /** Why heap mode was not used, when it was wanted but could not be. */
  readonly fallbackReason: string | undefined;

  readonly #heap: CopyHeap | undefined;
  readonly #segments = new Set<CopySegment>();

  constructor(options: CopyOptions = {}) {
    let reason: string | undefined;
    let heap: CopyHeap | undefined;
    if (options.memory !== 'arraybuffer') {
      const h = options.heap ?? nativeHeap();
      if (h === null) {
        reason = 'koffi cannot allocate memory here';
      } else {
        const probe = h.calloc(HEAP_PAGE);
        if (probe === null) {
          reason = `${h.name} cannot allocate ${HEAP_PAGE} bytes`;
        } else {
          try {
            // Electron refuses ArrayBuffers over outside memory: koffi.view throws there.
            nativeView(probe, 1);
            heap = h;
          } catch (err) {
            reason = (err as Error).message;
          } finally {
            h.free(probe);
          }
        }
      }
      if (heap === undefined && options.memory === 'heap') {
        throw new Error(`The copy backend cannot use heap memory: ${reason}`);
      }
    }
    this.#heap = heap;
    this.memoryKind = heap === undefined ? 'arraybuffer' : 'heap';
    this.fallbackReason = reason;
    this.pageSize = heap === undefined ? 1 : HEAP_PAGE;
  }

  // ---- Backend ---------------------------------------------------------------

  create(length: number): CopySegment {
    const seg = this.#allocate(length);
    this.#segments.add(seg);
    return seg;
  }

  clone(source: CopySegment): CopySegment {
    if (source.mem !== undefined) {
      let mem: ArrayBuffer;
      try {
        mem = source.mem.slice(0);
      } catch {
        throw outOfMemory('ArrayBuffer', source.length);
      }
      const seg: CopySegment = { ...source, mem, released: false };
      this.#segments.add(seg);
      return seg;
    }
    const seg = this.#allocate(source.length);
    copyNative(seg.addr, source.addr, source.length);
    this.#segments.add(seg);
    return seg;
  }

  restore(target: CopySegment, source: CopySegment): void {
    // Nothing is allocated, so nothing can fail halfway.
    if (target.mem !== undefined && source.mem !== undefined) {
      new Uint8Array(target.mem).set(new Uint8Array(source.mem));
    } else {
      copyNative(target.addr, source.addr, target.length);
    }
  }

  release(seg: CopySegment): void {
    if (seg.released) return;
    seg.released = true;
    this.#segments.delete(seg);
    // Safety: src/segment.ts has detached every view of this segment, and the
    // backend's own copy windows never outlive the call that made them.
    if (seg.heap !== undefined) seg.heap.free(seg.base);
    seg.mem = undefined;
  }

  shutdown(): void {
    // A worker that exits runs no more JavaScript: nothing can read a view now.
    for (const seg of [...this.#segments]) this.release(seg);
  }

  address(seg: CopySegment): bigint {
    return seg.addr;
  }

  view(seg: CopySegment, offset: number, length: number): ArrayBuffer {
    if (seg.mem !== undefined) {
      if (seg.mem.byteLength !== seg.length) {
        // Only close() may detach it: anything else has dropped the contents.
        throw new Error('Cannot create view: the memory of this segment was detached (in arraybuffer mode the view is the memory itself)');
      }
      if (offset === 0 && length === seg.length) return seg.mem;
      throw new RangeError(
        `Cannot create view(${offset}, ${length}): this runtime does not allow ArrayBuffers over outside memory, so the copy backend can only alias the whole segment (use buffer)`,
      );
    }
    // Safety: the range lies inside the allocation, which is freed only by
    // release(); src/segment.ts detaches every view before that.
    return nativeView(seg.addr + BigInt(offset), length);
  }

  stats(seg: CopySegment): BackendStats {
    return { privateBytes: seg.length, sharedBytes: 0, mappings: 0 };
  }

  memory(): BackendMemory {
    let layerBytes = 0;
    let privateBytes = 0;
    for (const seg of this.#segments) {
      layerBytes += seg.allocated;
      privateBytes += seg.length;
    }
    return { layers: this.#segments.size, layerBytes, privateBytes, mappings: 0 };
  }

  // ---- allocation --------------------------------------------------------------

  #allocate(length: number): CopySegment {
    const heap = this.#heap;
    if (heap === undefined) {
      let mem: ArrayBuffer;
      try {
        mem = new ArrayBuffer(length);
      } catch {
        // V8 and JSC throw RangeError when they cannot allocate the buffer.
        throw outOfMemory('ArrayBuffer', length);
      }
      return { length, base: 0n, addr: 0n, allocated: length, heap: undefined, mem, released: false };
    }
    // One page of slack so the start can be aligned like a mapping's would be.
    const allocated = length + HEAP_PAGE;
    const base = Number.isSafeInteger(allocated) ? heap.calloc(allocated) : null;
    if (base === null || base === 0n) throw outOfMemory(heap.name, length);
    const page = BigInt(HEAP_PAGE);
    const addr = ((base + page - 1n) / page) * page;
    return { length, base, addr, allocated, heap, mem: undefined, released: false };
  }
}

/** Copies `length` bytes of native memory from `from` to `to` (distinct allocations). */
function copyNative(to: bigint, from: bigint, length: number): void {
  for (let off = 0; off < length; off += COPY_WINDOW) {
    const n = Math.min(COPY_WINDOW, length - off);
    // Safety: both windows lie inside live allocations, and neither escapes
    // this loop iteration.
    new Uint8Array(nativeView(to + BigInt(off), n)).set(new Uint8Array(nativeView(from + BigInt(off), n)));
  }
}
