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
  // Math.log2 is exact on powers of two; `&` would cut n to 32 bits.
  return Number.isSafeInteger(n) && n > 0 && Number.isInteger(Math.log2(n)) && 2 ** Math.log2(n) === n;
}
