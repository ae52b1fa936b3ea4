// 64-bit words the kernel reads and writes (iovecs, PAGEMAP_SCAN regions)
// handled as numbers through their 32-bit halves: a BigInt per word costs
// more than the system call saves where there is one per page (a strided
// write gives a range per page), and an address of user space is exact
// as a number (below 2^47, or 2^56 with five-level page tables, where
// these fall back to BigInts past 2^52).

/** Whether a 64-bit word is stored low half first here (every machine memfork runs on, checked). */
const LOW_HALF_FIRST = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;
/** Addresses below this, plus any offset into a segment, are exact as numbers. */
const EXACT_BELOW = 2n ** 52n;
const TWO_32 = 2 ** 32;

/** `addr` as a number where it and any offset into a segment from it are exact as one; else null. */
export function exactNumber(addr: bigint): number | null {
  return addr >= 0n && addr < EXACT_BELOW ? Number(addr) : null;
}

/** The 32-bit halves of `words`, where `base` and the offsets from it are exact as numbers; null where not (BigInts then). */
function halves(words: BigUint64Array, base: bigint): Uint32Array | null {
  return LOW_HALF_FIRST && base >= 0n && base < EXACT_BELOW ? new Uint32Array(words.buffer, words.byteOffset, words.length * 2) : null;
}

/** A setter of word `i` of `words` as `base` + offset: an address in a segment, or a length from 0. */
export function wordSetter(words: BigUint64Array, base: bigint): (i: number, offset: number) => void {
  const w = halves(words, base);
  if (w === null) {
    return (i, offset) => {
      words[i] = base + BigInt(offset);
    };
  }
  const b = Number(base);
  return (i, offset) => {
    const value = b + offset;
    w[2 * i] = value >>> 0;
    w[2 * i + 1] = Math.floor(value / TWO_32);
  };
}

/** A setter of (address, length) pair `i` of iovec array `iov` as (`base` + offset, length). */
export function iovecSetter(iov: BigUint64Array, base: bigint): (i: number, offset: number, length: number) => void {
  const setAddress = wordSetter(iov, base);
  const setLength = wordSetter(iov, 0n);
  return (i, offset, length) => {
    setAddress(2 * i, offset);
    setLength(2 * i + 1, length);
  };
}

/** A reader of word `i` of `words` as its distance from `base` (an address at or below every word read). */
export function offsetReader(words: BigUint64Array, base: bigint): (i: number) => number {
  const w = halves(words, base);
  if (w === null) return (i) => Number(words[i]! - base);
  const b = Number(base);
  return (i) => w[2 * i + 1]! * TWO_32 + w[2 * i]! - b;
}
