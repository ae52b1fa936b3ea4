// Page-table span math of the Linux backend (platform/linux/move-aside.ts),
// for several page sizes: the functions are pure, any multiple of 8 works.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { spanFor, spanPieces, spans } from '../platform/linux/move-aside.ts';

const pageSizeArb = fc.constantFrom(64, 512, 4096, 16384);

describe('spans()', () => {
  it('are the bytes one middle- and one upper-directory entry map: 2 MiB and 1 GiB with 4 KiB pages', () => {
    assert.deepEqual(spans(4096), { pmd: 2 << 20, pud: 1 << 30 });
    fc.assert(
      fc.property(pageSizeArb, (page) => {
        const { pmd, pud } = spans(page);
        assert.equal(pmd, page * (page / 8));
        assert.equal(pud, pmd * (page / 8));
      }),
    );
  });
});

describe('spanFor()', () => {
  it('is the largest span not longer than the length, or 0', () => {
    fc.assert(
      fc.property(pageSizeArb, fc.nat(3 << 20), (page, pages) => {
        const length = pages * page;
        const { pmd, pud } = spans(page);
        const s = spanFor(length, page);
        assert.ok(s <= length);
        assert.ok([0, pmd, pud].includes(s));
        for (const bigger of [pmd, pud]) if (bigger > s) assert.ok(bigger > length);
      }),
    );
  });
});

describe('spanPieces()', () => {
  it('tiles the range with aligned spans, the biggest that fit, then one piece for the rest', () => {
    fc.assert(
      fc.property(pageSizeArb, fc.nat(1 << 16), fc.integer({ min: 1, max: 1 << 12 }), fc.nat(3), (page, at, pages, pmdsBefore) => {
        const { pmd, pud } = spans(page);
        // Addresses near span boundaries, not only page-aligned anywhere.
        const addr = BigInt(at) * BigInt(page) + BigInt(pmdsBefore * pmd);
        const length = pages * page * (1 + (at % 5) * ((pmd / page) >> 2));
        const pieces = spanPieces(addr, length, page);
        let offset = 0;
        pieces.forEach(([o, n], i) => {
          assert.equal(o, offset, 'pieces are contiguous');
          assert.ok(n > 0);
          const start = addr + BigInt(o);
          const isSpan = (s: number) => n === s && start % BigInt(s) === 0n;
          if (i < pieces.length - 1) {
            assert.ok(isSpan(pud) || isSpan(pmd), `piece ${i} is a whole aligned span`);
          }
          // A piece that could have been an upper-directory span is one.
          if (start % BigInt(pud) === 0n && o + pud <= length) assert.equal(n, pud);
          offset += n;
        });
        assert.equal(offset, length, 'pieces cover the range');
        // The rest piece, if any, is one that no span starts at.
        const [lo, ln] = pieces[pieces.length - 1]!;
        const start = addr + BigInt(lo);
        if (!(ln === pud && start % BigInt(pud) === 0n) && !(ln === pmd && start % BigInt(pmd) === 0n)) {
          assert.ok(!(start % BigInt(pmd) === 0n && lo + pmd <= length));
        }
      }),
    );
  });

  it('is one piece for a range that starts off every span', () => {
    assert.deepEqual(spanPieces(4096n, 8 << 20, 4096), [[0, 8 << 20]]);
    assert.deepEqual(spanPieces(2n << 20n, (4 << 20) + 4096, 4096), [
      [0, 2 << 20],
      [2 << 20, 2 << 20],
      [4 << 20, 4096],
    ]);
  });
});
