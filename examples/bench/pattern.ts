// The write patterns of the bench's matrix, and the random numbers that pick
// their pages. fork-peer.c implements exactly the same generator and the same
// patterns, so that memfork and the fork() peer write the same pages in the
// same order; both report a checksum of the pages they wrote, and the bench
// compares them.
//
// Pure: no memory is touched here.

/** The patterns, in table order. `id` is what fork-peer.c is given. */
export const patterns = [
  { id: 'stride2', label: 'every 2nd page' },
  { id: 'stride3', label: 'every 3rd page' },
  { id: 'stride8', label: 'every 8th page' },
  { id: 'random1', label: '1% random' },
  { id: 'random10', label: '10% random' },
  { id: 'random30', label: '30% random' },
  { id: 'run1', label: '1% one moving run' },
] as const;
export type PatternId = (typeof patterns)[number]['id'];

/** What happens to each round's snapshot. */
export const modes = [
  { id: 'letgo', label: 'let go' },
  { id: 'kept', label: 'kept' },
  { id: 'read', label: 'kept and read' },
] as const;
export type ModeId = (typeof modes)[number]['id'];

/** The value round `round` writes into the first byte of each of its pages (never the fill value 1). */
export const roundValue = (round: number): number => (round % 250) + 2;
/** The value every byte holds before the first round. */
export const FILL = 1;

/** The seed of a pattern: the same for its three modes, so that they write the same pages. */
export function patternSeed(base: number, id: PatternId): number {
  const i = patterns.findIndex((p) => p.id === id);
  const s = (Math.imul(base >>> 0, 0x9e3779b1) ^ Math.imul(i + 1, 0x85ebca6b)) >>> 0;
  return s === 0 ? 1 : s;
}

/** xorshift32 (Marsaglia, shifts 13, 17, 5); `next()` returns an unsigned 32-bit integer. */
export class XorShift32 {
  state: number;
  constructor(seed: number) {
    this.state = seed >>> 0 || 1;
  }
  next(): number {
    let x = this.state;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.state = x >>> 0;
    return this.state;
  }
}

/**
 * Pages written per round: every round writes this many (the strided
 * patterns always the same pages; random ones new pages each round).
 */
export function pagesPerRound(id: PatternId, pages: number): number {
  switch (id) {
    case 'stride2':
      return Math.ceil(pages / 2);
    case 'stride3':
      return Math.ceil(pages / 3);
    case 'stride8':
      return Math.ceil(pages / 8);
    case 'random1':
    case 'run1':
      return Math.max(1, Math.floor(pages / 100));
    case 'random10':
      return Math.max(1, Math.floor(pages / 10));
    case 'random30':
      return Math.max(1, Math.floor((pages * 3) / 10));
  }
}

/**
 * Picks one round's pages: fills `out` (at least `pagesPerRound` long) and
 * returns how many. Random pages are distinct within a round, drawn as
 * `next() % pages` and redrawn when taken (`mark`: one byte per page, all
 * zero on entry and on return). The run starts at `next() % (pages - n + 1)`.
 */
export function pickPages(id: PatternId, pages: number, rng: XorShift32, out: Uint32Array, mark: Uint8Array): number {
  const n = pagesPerRound(id, pages);
  switch (id) {
    case 'stride2':
    case 'stride3':
    case 'stride8': {
      const k = id === 'stride2' ? 2 : id === 'stride3' ? 3 : 8;
      let c = 0;
      for (let p = 0; p < pages; p += k) out[c++] = p;
      return c;
    }
    case 'run1': {
      const first = rng.next() % (pages - n + 1);
      for (let i = 0; i < n; i++) out[i] = first + i;
      return n;
    }
    default: {
      let c = 0;
      while (c < n) {
        const p = rng.next() % pages;
        if (mark[p] === 0) {
          mark[p] = 1;
          out[c++] = p;
        }
      }
      for (let i = 0; i < c; i++) mark[out[i]] = 0;
      return c;
    }
  }
}

/** Folds page numbers into a checksum, as fork-peer.c does: h = h * 31 + page (mod 2^32). */
export function foldPages(h: number, list: Uint32Array, count: number): number {
  for (let i = 0; i < count; i++) h = (Math.imul(h, 31) + list[i]) >>> 0;
  return h;
}

/** Runs of consecutive pages in a page list (in list order), as [first, count] pairs. */
export function runsOf(list: Uint32Array, count: number): Array<[number, number]> {
  const runs: Array<[number, number]> = [];
  let i = 0;
  while (i < count) {
    let j = i + 1;
    while (j < count && list[j] === list[j - 1] + 1) j++;
    runs.push([list[i], j - i]);
    i = j;
  }
  return runs;
}
