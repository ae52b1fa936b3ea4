// iovec batching of the Linux backend (platform/linux/writer.ts, drop.ts):
// page ranges cut into (address, length) pairs for vmsplice and
// process_madvise, checked against the bytes the ranges cover.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { RangeList, type Range } from '../src/runs.ts';
import { advance, fillIovec, type Cursor } from '../platform/linux/writer.ts';
import { exactNumber, iovecSetter, offsetReader } from '../platform/linux/words.ts';
import { fillRanges } from '../platform/linux/drop.ts';

/** Sorted ranges, not touching (as coalesced written pages are). */
const rangesArb: fc.Arbitrary<Range[]> = fc
  .array(fc.record({ gap: fc.integer({ min: 1, max: 5 }), len: fc.integer({ min: 1, max: 8 }) }), { minLength: 1, maxLength: 40 })
  .map((parts) => {
    const out: Range[] = [];
    let at = 0;
    for (const p of parts) {
      out.push({ start: at + p.gap, end: at + p.gap + p.len });
      at += p.gap + p.len;
    }
    return out;
  });

/** Every byte under `ranges`, as [offset, length) pieces, one per range. */
function bytesOf(ranges: readonly Range[], page: number): [number, number][] {
  return ranges.map((r) => [r.start * page, (r.end - r.start) * page]);
}

/** Joins touching pieces, so two ways of cutting the same bytes compare equal. */
function joined(pieces: readonly [number, number][]): [number, number][] {
  const out: [number, number][] = [];
  for (const [o, n] of pieces) {
    const last = out[out.length - 1];
    if (last !== undefined && last[0] + last[1] === o) last[1] += n;
    else out.push([o, n]);
  }
  return out;
}

describe('fillIovec() and advance()', () => {
  it('pass every byte of the ranges once, in order, in batches within both limits, however little each call takes', () => {
    fc.assert(
      fc.property(
        rangesArb,
        fc.constantFrom(64, 4096),
        fc.integer({ min: 1, max: 6 }),
        fc.integer({ min: 1, max: 20 }),
        fc.array(fc.double({ min: 0.01, max: 1, noNaN: true }), { minLength: 1, maxLength: 8 }),
        (ranges, page, maxEntries, maxPages, fractions) => {
          const base = 1n << 40n;
          const maxBytes = maxPages * page;
          const iov = new BigUint64Array(maxEntries * 2);
          const list = RangeList.from(ranges);
          const cursor: Cursor = { index: 0, at: ranges[0]!.start * page };
          // A second cursor advanced without collecting pieces keeps step with it.
          const bare: Cursor = { ...cursor };
          const passed: [number, number][] = [];
          for (let round = 0; cursor.index < list.length; round++) {
            const { count, bytes } = fillIovec(iov, base, list, page, cursor, maxEntries, maxBytes);
            assert.ok(count >= 1 && count <= maxEntries && bytes >= 1 && bytes <= maxBytes);
            const pairs: [number, number][] = [];
            for (let i = 0; i < count; i++) pairs.push([Number(iov[i * 2]! - base), Number(iov[i * 2 + 1]!)]);
            assert.equal(
              pairs.reduce((n, [, l]) => n + l, 0),
              bytes,
            );
            assert.equal(pairs[0]![0], cursor.at, 'a batch starts at the cursor');
            // The kernel may take less than offered (a pipe fills), never nothing here.
            const taken = Math.max(1, Math.floor(bytes * fractions[round % fractions.length]!));
            const pieces: [number, number][] = [];
            advance(list, page, cursor, taken, pieces);
            advance(list, page, bare, taken);
            assert.deepEqual(bare, cursor);
            assert.equal(
              pieces.reduce((n, [, l]) => n + l, 0),
              taken,
            );
            // What was taken is the start of what was offered.
            const offered = joined(pairs);
            const took = joined(pieces);
            took.forEach(([o, l], i) => {
              assert.equal(o, offered[i]![0]);
              assert.ok(l <= offered[i]![1]);
            });
            passed.push(...pieces);
          }
          assert.deepEqual(joined(passed), joined(bytesOf(ranges, page)));
        },
      ),
    );
  });

  it('never passes a byte between ranges', () => {
    fc.assert(
      fc.property(rangesArb, fc.integer({ min: 1, max: 4 }), (ranges, maxEntries) => {
        const page = 64;
        const iov = new BigUint64Array(maxEntries * 2);
        const { count } = fillIovec(iov, 0n, RangeList.from(ranges), page, { index: 0, at: ranges[0]!.start * page }, maxEntries, Infinity);
        for (let i = 0; i < count; i++) {
          const [o, l] = [Number(iov[i * 2]!), Number(iov[i * 2 + 1]!)];
          assert.ok(ranges.some((r) => r.start * page <= o && o + l <= r.end * page));
        }
      }),
    );
  });
});

describe('iovecSetter()', () => {
  it('stores each pair exactly, for addresses and lengths past 32 bits and bases past what a number holds exactly', () => {
    fc.assert(
      fc.property(
        fc.oneof(fc.bigInt({ min: 0n, max: 1n << 47n }), fc.bigInt({ min: (1n << 52n) - 4096n, max: (1n << 63n) - 1n }), fc.constant(0xffff_f000n)),
        fc.array(fc.tuple(fc.integer({ min: 0, max: 2 ** 44 }), fc.integer({ min: 0, max: 2 ** 40 })), { minLength: 1, maxLength: 8 }),
        (base, pairs) => {
          const iov = new BigUint64Array(pairs.length * 2 + 2).fill(7n);
          const set = iovecSetter(iov, base);
          pairs.forEach(([offset, length], i) => set(i, offset, length));
          pairs.forEach(([offset, length], i) => {
            assert.equal(iov[2 * i], BigInt.asUintN(64, base + BigInt(offset)));
            assert.equal(iov[2 * i + 1], BigInt(length));
          });
          assert.deepEqual([...iov.subarray(pairs.length * 2)], [7n, 7n], 'wrote past its pairs');
        },
      ),
    );
  });
});

describe('exactNumber()', () => {
  it('gives an address as a number only where it and offsets past it are exact', () => {
    fc.assert(
      fc.property(fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }), (addr) => {
        const n = exactNumber(addr);
        if (addr < 1n << 52n) assert.equal(n, Number(addr));
        else assert.equal(n, null);
        if (n !== null) assert.ok(Number.isSafeInteger(n + 2 ** 50));
      }),
    );
  });
});

describe('offsetReader()', () => {
  it('reads each word as its exact distance from the base, past 32 bits and for bases past what a number holds exactly', () => {
    fc.assert(
      fc.property(
        fc.oneof(fc.bigInt({ min: 0n, max: 1n << 47n }), fc.bigInt({ min: (1n << 52n) - 4096n, max: (1n << 62n) }), fc.constant(0xffff_f000n)),
        fc.array(fc.integer({ min: 0, max: 2 ** 46 }), { minLength: 1, maxLength: 8 }),
        (base, offsets) => {
          const words = BigUint64Array.from(offsets, (o) => base + BigInt(o));
          const read = offsetReader(words, base);
          offsets.forEach((o, i) => assert.equal(read(i), o));
        },
      ),
    );
  });
});

describe('fillRanges()', () => {
  it('fills from index `from` to `to` only, from the first pair', () => {
    fc.assert(
      fc.property(rangesArb, fc.nat(), fc.nat(), (ranges, a, b) => {
        const from = a % (ranges.length + 1);
        const to = from + (b % (ranges.length - from + 1));
        const iov = new BigUint64Array(ranges.length * 2);
        const base = 1n << 44n;
        const bytes = fillRanges(iov, base, RangeList.from(ranges), 4096, from, to);
        for (let i = from; i < to; i++) {
          assert.equal(iov[(i - from) * 2], base + BigInt(ranges[i]!.start * 4096));
          assert.equal(iov[(i - from) * 2 + 1], BigInt((ranges[i]!.end - ranges[i]!.start) * 4096));
        }
        assert.equal(bytes, ranges.slice(from, to).reduce((n, r) => n + (r.end - r.start) * 4096, 0));
      }),
    );
  });

  it('names each range by address and length, and returns their bytes', () => {
    fc.assert(
      fc.property(rangesArb, fc.constantFrom(4096, 16384), fc.bigInt({ min: 0n, max: 1n << 46n }), (ranges, page, base) => {
        const iov = new BigUint64Array(ranges.length * 2);
        const bytes = fillRanges(iov, base, RangeList.from(ranges), page);
        ranges.forEach((r, i) => {
          assert.equal(iov[i * 2], base + BigInt(r.start * page));
          assert.equal(iov[i * 2 + 1], BigInt((r.end - r.start) * page));
        });
        assert.equal(bytes, ranges.reduce((n, r) => n + (r.end - r.start) * page, 0));
      }),
    );
  });
});
