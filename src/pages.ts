// Page math, free of system calls so it can be tested on its own.

/** `n` rounded up to a multiple of `page` (a power of two). */
export function roundUp(n: number, page: number): number {
  return Math.ceil(n / page) * page;
}

/** Number of pages needed to hold `bytes`. */
export function pagesFor(bytes: number, page: number): number {
  return Math.ceil(bytes / page);
}

/** True when `n` is a power of two (page sizes always are). */
export function isPowerOfTwo(n: number): boolean {
  return Number.isSafeInteger(n) && n > 0 && (n & (n - 1)) === 0;
}
