// Sharing a layer again (platform/linux/reshare.ts): a segment whose clones
// are all closed maps its layer shared once more, as before its first
// clone. Behaviour only: bytes, mappings and private memory, never time.
import { describe, it } from 'node:test';
import * as assert from 'node:assert/strict';
import { Segment } from '../src/index.ts';
import { anonymousIn, layerMapsCount, linuxOnly, mappingAt } from './helpers/proc.ts';
import { rng } from './helpers/model.ts';
import { withLinux } from './helpers/linux.ts';

const PAGE = 4096;

/** The mapping covering all of `seg`, as its /proc/self/maps line; fails if several cover it. */
function oneMapping(seg: Segment): string {
  const line = mappingAt(seg.address);
  assert.ok(line !== undefined, 'mapped');
  const end = BigInt(`0x${line.slice(line.indexOf('-') + 1, line.indexOf(' '))}`);
  assert.ok(end >= seg.address + BigInt(seg.byteLength), `one mapping covers the segment: ${line}`);
  return line;
}

const shared = (line: string): boolean => line.split(' ')[1]!.endsWith('s');

/** A new segment of 2 MiB (its first clone moves its page tables aside) holding `value` in every byte. */
function filled(value: number): { seg: Segment; bytes: Uint8Array; pages: number } {
  const seg = Segment.create(2 << 20);
  const bytes = new Uint8Array(seg.buffer);
  bytes.fill(value);
  return { seg, bytes, pages: (2 << 20) / PAGE };
}

function write(bytes: Uint8Array, pages: readonly number[], value: number): void {
  for (const p of pages) bytes.fill(value, p * PAGE, p * PAGE + 64);
}

describe('sharing a layer again once every clone is closed', { skip: linuxOnly }, () => {
  // 2 MiB, and 4 MiB and 3 pages (past its last page-table span); the pages
  // written since the clone found both ways and copied both ways (through
  // the moved-aside mapping, or a pipe).
  const variants: { pages: number; scan: 'pagemap-scan' | 'pagemap-read'; windowCopy: boolean }[] = [
    { pages: (2 << 20) / PAGE, scan: 'pagemap-scan', windowCopy: true },
    { pages: (4 << 20) / PAGE + 3, scan: 'pagemap-scan', windowCopy: true },
    { pages: (2 << 20) / PAGE, scan: 'pagemap-read', windowCopy: false },
  ];
  for (const { pages, scan, windowCopy } of variants) {
    it(`the segment maps its layer shared again, keeps what it wrote, and writes straight to it (${pages} pages, ${scan}, ${windowCopy ? 'through the moved-aside mapping' : 'through a pipe'})`, (t) => {
      withLinux({ scan, windowCopy }, (b) => {
        if (b.scanMethod !== scan) {
          t.skip(`${scan} is not available here`);
          return;
        }
        const layerMaps = layerMapsCount();
        const seg = Segment.create(pages * PAGE);
        const bytes = new Uint8Array(seg.buffer);
        for (let p = 0; p < pages; p += 3) bytes.fill(p & 0xff, p * PAGE, p * PAGE + 100);
        const want = bytes.slice();
        const c = seg.clone();
        assert.ok(!shared(oneMapping(seg)), 'private while the clone lives');
        const after = [1, 2, (pages >> 1) + 88, pages - 1];
        write(bytes, after, 0xab); // written while the clone lives: private copies
        write(want, after, 0xab);
        assert.equal(anonymousIn(seg.address, seg.byteLength), after.length * PAGE);
        c.close();
        assert.ok(shared(oneMapping(seg)), 'shared once the clone is closed');
        assert.equal(layerMapsCount(), layerMaps + 1, 'the moved-aside mapping went back: one mapping of the layer');
        assert.equal(anonymousIn(seg.address, seg.byteLength), 0, 'no private copy left');
        assert.deepEqual(bytes, want, 'the pages written while the clone lived are kept');
        // Writes go to the layer: nothing private, and the next clone sees them.
        write(bytes, [0, 5, pages - 2], 0xcd);
        write(want, [0, 5, pages - 2], 0xcd);
        assert.equal(anonymousIn(seg.address, seg.byteLength), 0, 'written straight to the layer');
        assert.equal(seg.stats().mappings, 1);
        const d = seg.clone();
        assert.deepEqual(new Uint8Array(d.buffer), want, 'the next clone reads what was cloned');
        write(bytes, [0, 9], 0xef);
        new Uint8Array(d.buffer)[5 * PAGE] = 1;
        assert.equal(new Uint8Array(d.buffer)[0], want[0], 'the clone does not see the segment’s writes');
        assert.equal(bytes[5 * PAGE], want[5 * PAGE], 'the segment does not see the clone’s');
        d.close();
        assert.ok(shared(oneMapping(seg)), 'shared again');
        seg.close();
        assert.equal(layerMapsCount(), layerMaps, 'nothing left mapped');
      });
    });
  }

  it('not while another clone still uses the layer, mapped or not', () => {
    withLinux({}, () => {
      const { seg, bytes, pages } = filled(3);
      const kept = seg.clone();
      const read = seg.clone();
      void read.buffer; // mapped
      seg.clone().close();
      assert.ok(!shared(oneMapping(seg)), 'two clones still use the layer');
      read.close();
      assert.ok(!shared(oneMapping(seg)), 'one never mapped still does');
      write(bytes, [4, 7], 9);
      kept.close();
      assert.ok(shared(oneMapping(seg)));
      const want = new Uint8Array(pages * PAGE).fill(3);
      write(want, [4, 7], 9);
      assert.deepEqual(bytes, want);
      seg.close();
    });
  });

  it('also once its last clone is restored from another segment', () => {
    withLinux({}, () => {
      const { seg, bytes, pages } = filled(4);
      const c = seg.clone();
      write(bytes, [3], 5);
      const other = filled(6).seg;
      const snap = other.clone();
      assert.ok(!shared(oneMapping(seg)));
      c.restore(snap); // c no longer uses seg's layer
      assert.ok(shared(oneMapping(seg)), 'shared once its clone moved off its layer');
      const want = new Uint8Array(pages * PAGE).fill(4);
      write(want, [3], 5);
      assert.deepEqual(bytes, want);
      assert.deepEqual(new Uint8Array(c.buffer), new Uint8Array(pages * PAGE).fill(6));
      for (const s of [c, snap, other, seg]) s.close();
    });
  });

  it('a mapped clone left the only user of the layer when its source closes shares it too', () => {
    withLinux({}, () => {
      const { seg, pages } = filled(7);
      const c = seg.clone();
      const view = new Uint8Array(c.buffer); // mapped, at an address placed without regard to page-table spans
      write(view, [2, pages - 1], 8);
      seg.close();
      assert.ok(shared(oneMapping(c)), 'the clone maps the layer shared');
      const want = new Uint8Array(pages * PAGE).fill(7);
      write(want, [2, pages - 1], 8);
      assert.deepEqual(view, want);
      const d = c.clone();
      write(view, [2], 9);
      assert.deepEqual(new Uint8Array(d.buffer), want, 'its own clone is isolated from it');
      d.close();
      c.close();
    });
  });

  it('not with reshare turned off: the segment stays private and freezes in place', () => {
    withLinux({ reshare: false }, () => {
      const seg = Segment.create(2 << 20);
      seg.clone().close();
      assert.ok(!shared(oneMapping(seg)));
      seg.close();
    });
  });

  // Rounds of writes and clones, each kept for a while and closed in a
  // random order: every clone reads what was cloned, whenever the segment
  // went back to sharing its layer in between.
  it('rounds of clones kept a while and closed out of order read what was cloned', () => {
    withLinux({}, () => {
      const pages = (2 << 20) / PAGE + 5;
      const random = rng(21);
      const seg = Segment.create(pages * PAGE);
      const bytes = new Uint8Array(seg.buffer);
      bytes.fill(1);
      const live: { snap: Segment; want: Uint8Array }[] = [];
      let reshared = 0;
      for (let round = 0; round < 40; round++) {
        const n = 1 + Math.floor(random() * 40);
        for (let i = 0; i < n; i++) bytes[Math.floor(random() * pages) * PAGE + (round % 64)] = round + 2;
        live.push({ snap: seg.clone(), want: bytes.slice() });
        if (random() < 0.3) void live[live.length - 1]!.snap.buffer;
        while (live.length > 0 && random() < 0.5) {
          const [{ snap, want }] = live.splice(Math.floor(random() * live.length), 1);
          assert.deepEqual(new Uint8Array(snap!.buffer), want, `round ${round}: a clone reads what was cloned`);
          snap!.close();
          if (live.length === 0 && shared(oneMapping(seg))) reshared++;
        }
        // Written with clones alive or not: the segment reads its own bytes.
        write(bytes, [Math.floor(random() * pages)], round);
      }
      for (const { snap, want } of live) {
        assert.deepEqual(new Uint8Array(snap.buffer), want);
        snap.close();
      }
      assert.ok(reshared > 0, 'the layer was shared again at some point');
      seg.close();
    });
  });
});
