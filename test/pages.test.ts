// Page math, checked without touching the kernel.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { isPowerOfTwo, pagesFor, roundUp } from '../src/pages.ts';

const pageSizes = fc.integer({ min: 0, max: 24 }).map((k) => 2 ** k);
/** Lengths up to where rounding to the largest page size still gives a safe integer. */
const lengths = fc.oneof(
  fc.integer({ min: 0, max: 1 << 20 }),
  fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER - 2 ** 24 }),
);

describe('roundUp()', () => {
  it('gives the smallest multiple of the page size that is not below n', () => {
    fc.assert(
      fc.property(lengths, pageSizes, (n, page) => {
        const r = roundUp(n, page);
        assert.ok(Number.isSafeInteger(r));
        assert.equal(r % page, 0);
        assert.ok(r >= n);
        assert.ok(r - n < page);
      }),
      { numRuns: 2000 },
    );
  });

  it('leaves multiples of the page size and zero unchanged', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 2 ** 28 }), pageSizes, (k, page) => {
        assert.equal(roundUp(k * page, page), k * page);
      }),
    );
    assert.equal(roundUp(0, 4096), 0);
  });

  it('rounds the usual cases as expected', () => {
    assert.equal(roundUp(1, 4096), 4096);
    assert.equal(roundUp(4095, 4096), 4096);
    assert.equal(roundUp(4096, 4096), 4096);
    assert.equal(roundUp(4097, 4096), 8192);
    assert.equal(roundUp(3 * 4096 + 5, 4096), 4 * 4096);
    assert.equal(roundUp(1, 16384), 16384);
    assert.equal(roundUp(2 ** 40 + 1, 4096), 2 ** 40 + 4096);
  });
});

describe('pagesFor()', () => {
  it('counts the pages that roundUp() covers', () => {
    fc.assert(
      fc.property(lengths, pageSizes, (n, page) => {
        assert.equal(pagesFor(n, page) * page, roundUp(n, page));
      }),
      { numRuns: 2000 },
    );
  });

  it('counts zero pages for zero bytes and one page for one byte', () => {
    assert.equal(pagesFor(0, 4096), 0);
    assert.equal(pagesFor(1, 4096), 1);
    assert.equal(pagesFor(4096, 4096), 1);
    assert.equal(pagesFor(4097, 4096), 2);
    assert.equal(pagesFor(2 ** 52, 4096), 2 ** 40);
  });
});

describe('isPowerOfTwo()', () => {
  it('accepts every power of two from 1 to 2^52', () => {
    for (let k = 0; k <= 52; k++) assert.equal(isPowerOfTwo(2 ** k), true, `2^${k}`);
  });

  it('rejects zero, negatives, fractions, non-finite numbers and other integers below 2^31', () => {
    for (const n of [0, -1, -2, -4096, 0.5, 1.5, NaN, Infinity, -Infinity, 3, 6, 4095, 4097, 12288, 2 ** 31 - 1]) {
      assert.equal(isPowerOfTwo(n), false, String(n));
    }
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 2 ** 31 - 1 }), (n) => {
        assert.equal(isPowerOfTwo(n), Number.isInteger(Math.log2(n)));
      }),
      { numRuns: 2000 },
    );
  });

  it('rejects integers at or above 2^32 that are not powers of two', () => {
    for (const n of [3 * 2 ** 32, 2 ** 32 + 2 ** 31, 5 * 2 ** 40, Number.MAX_SAFE_INTEGER]) {
      assert.equal(isPowerOfTwo(n), false, String(n));
    }
  });
});
