// Clones are mapped only when their memory is first asked for (Linux): a
// snapshot kept to be restored from, or never looked at, is a run list only
// and costs no kernel mapping.
import { describe, it } from 'node:test';
import * as assert from 'node:assert/strict';
import * as util from 'node:util';
import { Segment, SegmentError, memoryStats } from '../src/index.ts';
import * as sys from '../platform/libc.ts';
import { withLinux } from './helpers/linux.ts';

const linuxOnly = process.platform !== 'linux' && 'Linux only';


/** Writes `value` into byte 0 of every `stride`-th page from `first`. */
function writePages(seg: Segment, first: number, stride: number, value: number): void {
  const bytes = new Uint8Array(seg.buffer);
  const page = 4096;
  for (let p = first; p * page < bytes.length; p += stride) bytes[p * page] = value;
}

describe('clones mapped on first use', { skip: linuxOnly }, () => {
  it('a clone uses one mapping (its reserved address range) until buffer, view() or address is read, and then reads its contents', () => {
    withLinux({}, (b) => {
      for (const ask of ['buffer', 'view', 'address'] as const) {
        const seg = Segment.create(64 * 4096);
        writePages(seg, 0, 3, 7);
        const clone = seg.clone();
        const before = b.memory().mappings;
        assert.equal(clone.stats().mappings, 1);
        writePages(seg, 0, 3, 8);
        const again = seg.clone();
        // The second clone's reservation; the origin froze its writes in place.
        assert.equal(b.memory().mappings, before + 1, 'cloning added more than a reservation');
        assert.equal(seg.stats().mappings, 1);
        assert.match(util.inspect(clone), /address: 0x[0-9a-f]+n/);
        assert.equal(clone.stats().mappings, 1, 'showing the segment mapped it');
        let address = 0n;
        if (ask === 'buffer') void clone.buffer;
        else if (ask === 'view') void clone.view(4096, 4096);
        else address = clone.address;
        // The clone's pages are now mapped (the reservation replaced), at the same address.
        assert.equal(b.memory().mappings, before + clone.stats().mappings);
        if (ask === 'address') {
          // Other FFI code reads the bytes at the address it was given.
          const seen = new Uint8Array(sys.view(address, 64 * 4096));
          for (let p = 0; p < 64; p++) assert.equal(seen[p * 4096], p % 3 === 0 ? 7 : 0);
        }
        const bytes = new Uint8Array(clone.buffer);
        if (address !== 0n) assert.equal(clone.address, address);
        for (let p = 0; p < 64; p++) assert.equal(bytes[p * 4096], p % 3 === 0 ? 7 : 0);
        assert.equal(new Uint8Array(again.buffer)[0], 8);
        clone.close();
        again.close();
        seg.close();
      }
    });
  });

  it('restores from and into snapshots never mapped, and clones them', () => {
    withLinux({}, () => {
      const seg = Segment.create(32 * 4096);
      writePages(seg, 0, 2, 1);
      const first = seg.clone();
      writePages(seg, 1, 2, 2);
      const second = seg.clone();
      const third = second.clone(); // a clone of a clone never mapped
      second.restore(first); // into a snapshot never mapped
      seg.restore(second); // from one
      const bytes = new Uint8Array(seg.buffer);
      for (let p = 0; p < 32; p++) assert.equal(bytes[p * 4096], p % 2 === 0 ? 1 : 0);
      const t = new Uint8Array(third.buffer);
      for (let p = 0; p < 32; p++) assert.equal(t[p * 4096], p % 2 === 0 ? 1 : 2);
      const stats = first.stats();
      assert.equal(stats.mappings, 1);
      assert.equal(stats.privateBytes + stats.sharedBytes, 32 * 4096);
      for (const s of [first, second, third, seg]) s.close();
    });
  });

  it('keeps many snapshots of scattered writes within a small mapping budget, and maps each correctly when read', () => {
    const budget = 64;
    withLinux({ mapBudget: budget }, (b) => {
      const pages = 256;
      const seg = Segment.create(pages * 4096);
      const kept: { snap: Segment; round: number }[] = [];
      for (let round = 1; round <= 40; round++) {
        // Every 8th page, shifted each round: scattered runs in every snapshot.
        writePages(seg, round % 8, 8, round);
        kept.push({ snap: seg.clone(), round });
        assert.ok(b.memory().mappings <= budget, `${b.memory().mappings} mappings over ${budget}`);
      }
      // Page p was last written in the latest round r <= R with r % 8 === p % 8.
      const expected = (p: number, upTo: number): number => {
        for (let r = upTo; r >= 1; r--) if (r % 8 === p % 8) return r;
        return 0;
      };
      for (const { snap, round } of kept) {
        const bytes = new Uint8Array(snap.buffer);
        for (let p = 0; p < pages; p++) assert.equal(bytes[p * 4096], expected(p, round), `round ${round}, page ${p}`);
        assert.ok(b.memory().mappings <= budget, `${b.memory().mappings} mappings over ${budget}`);
      }
      for (const { snap } of kept) snap.close();
      seg.close();
      assert.equal(b.layerCount(), 0);
    });
  });

  it('frees descriptors from snapshots never mapped by rewriting them file to file', () => {
    withLinux({ fdBudget: 6 }, (b) => {
      const pages = 64;
      const seg = Segment.create(pages * 4096);
      const kept: Segment[] = [];
      for (let round = 1; round <= 12; round++) {
        writePages(seg, round % 4, 4, round);
        kept.push(seg.clone());
      }
      assert.ok(b.layerCount() <= 8, `${b.layerCount()} layers open`);
      kept.forEach((snap, i) => {
        const round = i + 1;
        const bytes = new Uint8Array(snap.buffer);
        for (let p = 0; p < pages; p++) {
          let want = 0;
          for (let r = round; r >= 1; r--) if (r % 4 === p % 4) { want = r; break; }
          assert.equal(bytes[p * 4096], want, `round ${round}, page ${p}`);
        }
      });
      for (const s of kept) s.close();
      seg.close();
      assert.equal(memoryStats().segments >= 0, true);
      assert.equal(b.layerCount(), 0);
    });
  });
});

describe('restoring to an old snapshot whose pages moved to history', { skip: linuxOnly }, () => {
  /** A segment with every other page written, a snapshot of it, then the other pages written and cloned. */
  function scene(): { seg: Segment; old: Segment; newer: Segment; pages: number } {
    const pages = 512;
    const seg = Segment.create(pages * 4096);
    writePages(seg, 0, 2, 1);
    const old = seg.clone();
    writePages(seg, 1, 2, 2);
    const newer = seg.clone(); // freezes seg in place: old's odd pages go to a history layer, a run each
    return { seg, old, newer, pages };
  }

  it('copies the differing pages into the target, adding no mapping, under a budget the source\'s runs would not fit', () => {
    withLinux({ mapBudget: 64 }, (b) => {
      const { seg, old, newer, pages } = scene();
      const before = b.memory().mappings;
      assert.ok(old.stats().mappings === 1 && pages > 64);
      seg.restore(old);
      assert.equal(b.memory().mappings, before);
      assert.equal(seg.stats().mappings, 1);
      const bytes = new Uint8Array(seg.buffer);
      for (let p = 0; p < pages; p++) assert.equal(bytes[p * 4096], p % 2 === 0 ? 1 : 0, `page ${p}`);
      // The restored contents are the segment's own from then on: clone and write again.
      writePages(seg, 1, 4, 9);
      const again = seg.clone();
      const a = new Uint8Array(again.buffer);
      for (let p = 0; p < pages; p++) assert.equal(a[p * 4096], p % 4 === 1 ? 9 : p % 2 === 0 ? 1 : 0, `clone, page ${p}`);
      const n = new Uint8Array(newer.buffer);
      for (let p = 0; p < pages; p++) assert.equal(n[p * 4096], p % 2 === 0 ? 1 : 2, `newer, page ${p}`);
      for (const s of [again, newer, old, seg]) s.close();
    });
  });

  it('leaves the target as it was when a read fails midway', () => {
    withLinux({ mapBudget: 64 }, () => {
      const { seg, old, newer, pages } = scene();
      writePages(seg, 5, 16, 7); // written since the last clone: must survive the failure
      sys.injectFault('pread', 100, sys.EIO);
      try {
        assert.throws(() => seg.restore(old), (e: unknown) => e instanceof SegmentError && e.code === 'EIO' && e.syscall === 'pread');
      } finally {
        sys.clearFaults();
      }
      const bytes = new Uint8Array(seg.buffer);
      for (let p = 0; p < pages; p++) {
        const want = p % 16 === 5 ? 7 : p % 2 === 0 ? 1 : 2;
        assert.equal(bytes[p * 4096], want, `page ${p}`);
      }
      seg.restore(old);
      for (let p = 0; p < pages; p++) assert.equal(bytes[p * 4096], p % 2 === 0 ? 1 : 0, `restored, page ${p}`);
      for (const s of [newer, old, seg]) s.close();
    });
  });
});

describe('a snapshot too fragmented for the mapping budget, read', { skip: linuxOnly }, () => {
  /** A segment written on every 8th page (512 runs, budget 64), its old snapshot, and the segment rewritten there since. */
  function scattered(): { seg: Segment; snap: Segment; pages: number } {
    const pages = 4096;
    const seg = Segment.create(pages * 4096);
    new Uint8Array(seg.buffer).fill(1);
    const snap = seg.clone();
    writePages(seg, 0, 8, 2);
    void seg.clone().close(); // old contents of every 8th page move to a history layer for `snap`
    return { seg, snap, pages };
  }

  it('is mapped as its largest layer with the other pages read in: one mapping, those pages private, and its bytes right', () => {
    withLinux({ mapBudget: 64 }, (b) => {
      const { seg, snap, pages } = scattered();
      assert.equal(snap.stats().mappings, 1);
      const layersBefore = b.memory().layerBytes;
      const bytes = new Uint8Array(snap.buffer);
      for (let p = 0; p < pages; p++) assert.equal(bytes[p * 4096], 1, `page ${p}`);
      const st = snap.stats();
      assert.equal(st.mappings, 1, 'one mapping');
      // The pages that differ from its largest layer (every 8th: the segment's
      // layer was rewritten there) are its own now; nothing was rewritten into a
      // new layer, and the history pages nothing else used were freed.
      assert.equal(st.privateBytes, (pages / 8) * 4096);
      assert.ok(b.memory().layerBytes <= layersBefore, `layers grew from ${layersBefore} to ${b.memory().layerBytes} bytes`);
      // It stays a correct segment: written, cloned, restored.
      writePages(snap, 3, 8, 9);
      const again = snap.clone();
      snap.restore(seg);
      for (let p = 0; p < pages; p++) assert.equal(bytes[p * 4096], p % 8 === 0 ? 2 : 1, `restored from the segment, page ${p}`);
      snap.restore(again);
      for (let p = 0; p < pages; p++) assert.equal(bytes[p * 4096], p % 8 === 3 ? 9 : 1, `restored from its clone, page ${p}`);
      for (const s of [again, snap, seg]) s.close();
      assert.equal(b.layerCount(), 0);
    });
  });

  it('is refused with ENOMEM, and stays usable, where the copies would take more memory than the machine has free', () => {
    withLinux({ mapBudget: 64, availableMemory: () => 0 }, () => {
      const { seg, snap, pages } = scattered();
      assert.throws(() => snap.buffer, (e: unknown) => e instanceof SegmentError && e.code === 'ENOMEM');
      assert.equal(snap.stats().mappings, 1);
      // Still a source to restore from: its contents come back through the target's mapping.
      seg.restore(snap);
      const bytes = new Uint8Array(seg.buffer);
      for (let p = 0; p < pages; p++) assert.equal(bytes[p * 4096], 1, `restored from the refused snapshot, page ${p}`);
      for (const s of [snap, seg]) s.close();
    });
  });

  it('stays unmapped and intact when a read fails midway, and maps on the next try', () => {
    withLinux({ mapBudget: 64 }, () => {
      const { seg, snap, pages } = scattered();
      sys.injectFault('pread', 200, sys.EIO);
      try {
        assert.throws(() => snap.buffer, (e: unknown) => e instanceof SegmentError && e.code === 'EIO' && e.syscall === 'pread');
      } finally {
        sys.clearFaults();
      }
      assert.equal(snap.stats().mappings, 1);
      const bytes = new Uint8Array(snap.buffer);
      for (let p = 0; p < pages; p++) assert.equal(bytes[p * 4096], 1, `page ${p}`);
      for (const s of [snap, seg]) s.close();
    });
  });
});

describe('scattered writes with every snapshot kept and read', { skip: linuxOnly }, () => {
  for (const privatize of [true, false]) {
    it(`never exhaust a small mapping budget: ${privatize ? 'snapshots take private copies of the pages written under them' : 'written runs too many for it are frozen joined'}, and every snapshot reads what it was cloned from`, () => {
      withLinux({ mapBudget: 256, privatize }, (b) => {
        const pages = 4096;
        const seg = Segment.create(pages * 4096);
        const kept: { snap: Segment; round: number }[] = [];
        // Each round writes every 8th page (512 runs, too far apart to join
        // for free, where the budget is 256 mappings), shifted, and keeps a
        // mapped snapshot.
        for (let round = 1; round <= 6; round++) {
          writePages(seg, round % 8, 8, round);
          const snap = seg.clone();
          void snap.buffer;
          kept.push({ snap, round });
          assert.ok(b.memory().mappings <= b.mapBudget, `round ${round}: ${b.memory().mappings} mappings, budget ${b.mapBudget}`);
        }
        const want = (round: number, p: number): number => {
          for (let r = round; r >= 1; r--) if (p % 8 === r % 8) return r;
          return 0;
        };
        for (const { snap, round } of [...kept, { snap: seg, round: 6 }]) {
          const bytes = new Uint8Array(snap.buffer);
          for (let p = 0; p < pages; p++) assert.equal(bytes[p * 4096], want(round, p), `snapshot of round ${round}, page ${p}`);
        }
        for (const { snap } of kept) snap.close();
        seg.close();
      });
    });
  }

  it('are refused with ENOMEM, every segment intact, where joining them would copy more than the machine has free', () => {
    // Without pinned pages: the snapshot's copies would take no budget at all.
    withLinux({ mapBudget: 256, availableMemory: () => 0, privatize: false }, () => {
      const pages = 4096;
      const seg = Segment.create(pages * 4096);
      writePages(seg, 0, 1, 1);
      const snap = seg.clone();
      void snap.buffer;
      writePages(seg, 3, 8, 2);
      assert.throws(() => seg.clone(), (e: unknown) => e instanceof SegmentError && e.code === 'ENOMEM');
      const a = new Uint8Array(seg.buffer);
      const b = new Uint8Array(snap.buffer);
      for (let p = 0; p < pages; p++) {
        assert.equal(a[p * 4096], p % 8 === 3 ? 2 : 1, `segment, page ${p}`);
        assert.equal(b[p * 4096], 1, `snapshot, page ${p}`);
      }
      snap.close();
      seg.close();
    });
  });
});
