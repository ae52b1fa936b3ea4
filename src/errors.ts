import { getSystemErrorName } from 'node:util';

/**
 * A failure reported by the operating system (or by memfork about a closed
 * segment). Bad arguments are never a `SegmentError`: they throw `TypeError`
 * or `RangeError`.
 *
 * @example
 * ```ts
 * try {
 *   Segment.create(2 ** 52);
 * } catch (err) {
 *   if (err instanceof SegmentError && err.code === 'ENOMEM') console.log(err.message);
 * }
 * ```
 */
export class SegmentError extends Error {
  /** `'ENOMEM'`, `'EMFILE'`, …, `'KERN_NO_SPACE'`, …, or `'ERR_SEGMENT_CLOSED'`. */
  readonly code: string;
  /** The error number the OS gave (`errno` on Linux, `kern_return_t` on macOS), where there was one. */
  readonly errno: number | undefined;
  /** The system call that failed, e.g. `'mmap'`; `undefined` for `ERR_SEGMENT_CLOSED`. */
  readonly syscall: string | undefined;

  constructor(message: string, code: string, errno?: number, syscall?: string) {
    super(message);
    this.name = 'SegmentError';
    this.code = code;
    this.errno = errno;
    this.syscall = syscall;
  }
}

/** The errno of a failure: a `SegmentError`'s, 0 for anything else or an error without one. */
export function errnoOf(err: unknown): number {
  return err instanceof SegmentError ? (err.errno ?? 0) : 0;
}

/** Name of a positive errno, e.g. 12 → `'ENOMEM'`. */
export function errnoName(errno: number): string {
  try {
    return getSystemErrorName(-Math.abs(errno));
  } catch {
    return `E${errno}`;
  }
}

/**
 * The error for a failed libc call, worded the way Node.js words system errors:
 * `mmap ENOMEM: cannot map 1099511627776 bytes`.
 */
export function systemError(syscall: string, errno: number, detail: string): SegmentError {
  const code = errnoName(errno);
  return new SegmentError(`${syscall} ${code}: ${detail}`, code, errno, syscall);
}

/** The error every method but `close()` throws on a closed segment. */
export function closedError(operation: string): SegmentError {
  return new SegmentError(
    `Cannot ${operation}: segment is closed`,
    'ERR_SEGMENT_CLOSED',
  );
}
