// Page-table span math of the Linux backend (platform/linux/move-aside.ts),
// for several page sizes: the functions are pure, any multiple of 8 works.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { spanFor, spans } from '../platform/linux/move-aside.ts';

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
