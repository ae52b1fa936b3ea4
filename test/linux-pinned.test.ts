// Pinned pages (platform/linux/engine.ts, freeze.ts, history.ts): a
// segment being written keeps freezing in place, into its one layer, while
// snapshots that map that layer hold private copies of the pages rewritten
// under them. Behaviour only: bytes, mappings and private memory, never time.
import { describe, it } from 'node:test';
import * as assert from 'node:assert/strict';
import { callCounts, EINVAL, EIO, injectFault } from '../platform/libc.ts';
import { Segment } from '../src/index.ts';
import { anonymousIn, linuxOnly } from './helpers/proc.ts';
import { rng } from './helpers/model.ts';
import { withLinux } from './helpers/linux.ts';

const PAGE = 4096;


/** The pages a round writes: every `stride`th from `shift`, or `count` at random. */
function pagesOf(pattern: 'stride' | 'random', pages: number, round: number, random: () => number): number[] {
  if (pattern === 'stride') {
    const out: number[] = [];
    for (let p = round % 3; p < pages; p += 8) out.push(p);
    return out;
  }
  const set = new Set<number>();
  while (set.size < pages / 10) set.add(Math.floor(random() * pages));
  return [...set];
}

/**
 * Rounds of writes and clones, every snapshot mapped and read at once and
 * kept; checks every snapshot's bytes after every round, then hands the
 * segment and the snapshots to `after`, if given, before closing them.
 * Returns each snapshot's stats.
 */
function keptAndRead(
  pattern: 'stride' | 'random',
  pages: number,
  rounds: number,
  after?: (seg: Segment, kept: { snap: Segment; want: Uint8Array }[]) => void,
) {
  const random = rng(11);
  const seg = Segment.create(pages * PAGE);
  const bytes = new Uint8Array(seg.buffer);
  bytes.fill(1);
  const kept: { snap: Segment; want: Uint8Array }[] = [];
  try {
    for (let round = 0; round < rounds; round++) {
      const written = pagesOf(pattern, pages, round, random);
      for (const p of written) bytes[p * PAGE + (round % PAGE)] = round + 2;
      const snap = seg.clone();
      kept.push({ snap, want: bytes.slice() });
      assert.deepEqual(new Uint8Array(snap.buffer), bytes, `round ${round}: the new snapshot reads what was cloned`);
      for (const [i, k] of kept.entries()) {
        assert.ok(Buffer.from(k.snap.buffer).equals(Buffer.from(k.want)), `round ${round}: snapshot ${i} changed`);
      }
      assert.equal(seg.stats().mappings, 1, `round ${round}: the segment written keeps one mapping`);
      assert.equal(seg.stats().privateBytes, 0, `round ${round}: its writes all went into its layer`);
    }
    after?.(seg, kept);
    return { snapshots: kept.map((k) => k.snap.stats()) };
  } finally {
    for (const k of kept) k.snap.close();
    seg.close();
  }
}

/** A segment of `pages` pages, the first byte of page p holding p. */
function numbered(pages: number): { seg: Segment; bytes: Uint8Array } {
  const seg = Segment.create(pages * PAGE);
  const bytes = new Uint8Array(seg.buffer);
  for (let p = 0; p < pages; p++) bytes[p * PAGE] = p;
  return { seg, bytes };
}

describe('pinned pages', { skip: linuxOnly }, () => {
  for (const pattern of ['stride', 'random'] as const) {
    it(`kept snapshots that are read keep one mapping each while the segment freezes in place under them (${pattern} writes)`, () => {
      // Each takes its own copies (with history shared, two or more map one: below).
      withLinux({ shareHistory: false }, () => {
        const { snapshots } = keptAndRead(pattern, 512, 8);
        for (const [i, s] of snapshots.entries()) assert.equal(s.mappings, 1, `snapshot ${i}: ${s.mappings} mappings`);
        // Each older snapshot holds private copies of the pages rewritten
        // under it: its own, as fork()'s child would share them.
        assert.ok(snapshots[0]!.privateBytes > 0, 'the oldest snapshot holds private copies');
        assert.equal(snapshots[snapshots.length - 1]!.privateBytes, 0, 'the newest holds none');
      });
    });
  }

  it('read snapshots of random writes copy about the segment in all before it moves to a new layer, which leaves them the old one (not n/2 copies each)', () => {
    // Private copies only (no history mapped between snapshots): the copies the move bounds.
    withLinux({ shareHistory: false }, () => {
      const pages = 64;
      keptAndRead('random', pages, 24, (seg, kept) => {
        // Copying each page rewritten into every older snapshot takes about
        // 7 × (1 + 2 + ... + 23) pages over 24 rounds (1,011 here,
        // pages repeating); moving once the copies beyond the first of each
        // page reach the segment's 64 pages keeps each stretch of rounds to
        // about that (361 here; 488 moving at twice the segment).
        let copies = 0;
        for (const k of kept) copies += anonymousIn(k.snap.address, k.snap.byteLength) / PAGE;
        assert.ok(copies > 0 && copies <= 6 * pages, `${copies} private copies in the snapshots`);
        // Every snapshot still clones to its bytes, and restores.
        for (const [i, k] of kept.entries()) {
          const copy = k.snap.clone();
          assert.ok(Buffer.from(copy.buffer).equals(Buffer.from(k.want)), `a clone of snapshot ${i}`);
          copy.close();
        }
        seg.restore(kept[3]!.snap);
        assert.ok(Buffer.from(seg.buffer).equals(Buffer.from(kept[3]!.want)));
      });
    });
  });

  it('a snapshot holds private copies of exactly the pages rewritten under it, and they are its bytes', () => {
    withLinux({}, () => {
      const pages = 64;
      const seg = Segment.create(pages * PAGE);
      const bytes = new Uint8Array(seg.buffer);
      bytes.fill(7);
      const snap = seg.clone();
      const view = new Uint8Array(snap.buffer); // mapped
      assert.equal(snap.stats().privateBytes, 0);
      const written = [1, 2, 9, 40, 63];
      for (const p of written) bytes[p * PAGE] = 8;
      seg.clone().close();
      assert.equal(anonymousIn(snap.address, snap.byteLength), written.length * PAGE, 'private copies of the pages rewritten, and only those');
      assert.equal(snap.stats().mappings, 1);
      assert.ok(view.every((x) => x === 7));
      snap.close();
      seg.close();
    });
  });

  it('pages a snapshot wrote since its last freeze stay its own when the same pages are rewritten under it (only its read pages are dropped before the copies)', () => {
    withLinux({}, () => {
      const pages = 64;
      const { seg, bytes } = numbered(pages);
      const snap = seg.clone();
      const view = new Uint8Array(snap.buffer);
      const original = view.slice(); // every page read: its entries map the layer's pages
      const own = [2, 5, 40];
      for (const p of own) view[p * PAGE + 1] = 99;
      const want = view.slice();
      for (const p of [1, 2, 3, 5, 8, 40, 41]) bytes[p * PAGE] = 200;
      const next = seg.clone();
      assert.deepEqual(view, want, 'its own writes, and the old bytes of the pages rewritten');
      assert.equal(anonymousIn(snap.address, snap.byteLength), 7 * PAGE, 'a private copy of each page rewritten under it, its own writes among them');
      assert.deepEqual(new Uint8Array(next.buffer), bytes);
      const copy = snap.clone();
      assert.deepEqual(new Uint8Array(copy.buffer), want);
      snap.restore(copy);
      assert.deepEqual(view, want);
      assert.notDeepEqual(want, original);
      for (const s of [copy, next, snap, seg]) s.close();
    });
  });

  for (const twinMapped of [false, true]) {
    it(`a snapshot with pinned pages, written, cloned and restored, reads right every way (${twinMapped ? 'every sharer mapped: the old pages kept in their copies alone' : 'a sharer never mapped: the old pages copied to history'})`, () => {
      // Two mapped sharers would map one history copy instead (below).
      withLinux({ shareHistory: false }, (b) => {
        const pages = 96;
        const random = rng(3);
        const seg = Segment.create(pages * PAGE);
        const bytes = new Uint8Array(seg.buffer);
        bytes.fill(1);
        const snap = seg.clone();
        const twin = seg.clone(); // shares snap's run list
        const original = new Uint8Array(snap.buffer).slice();
        if (twinMapped) assert.deepEqual(new Uint8Array(twin.buffer), original);
        const layerBytes = b.memory().layerBytes;
        for (let p = 0; p < pages; p += 3) bytes[p * PAGE] = 2;
        seg.clone().close(); // every 3rd page pinned in snap
        const history = b.memory().layerBytes - layerBytes;
        if (twinMapped) assert.equal(history, 0, 'no history layer: the old pages are in the snapshots alone');
        else assert.equal(history, (pages / 3) * PAGE, 'the old pages copied once, into history');
        const view = new Uint8Array(snap.buffer);
        assert.deepEqual(view, original);
        // Written over pinned pages and others, then cloned.
        for (let k = 0; k < 20; k++) view[Math.floor(random() * pages) * PAGE + 5] = 9;
        const written = view.slice();
        const copy = snap.clone();
        assert.deepEqual(new Uint8Array(copy.buffer), written);
        assert.deepEqual(view, written);
        // Restored from the twin (same run list: the fast path reads pinned pages back).
        for (let k = 0; k < 20; k++) view[Math.floor(random() * pages) * PAGE + 6] = 10;
        snap.restore(twin);
        assert.deepEqual(view, original);
        // The segment restored from the snapshot, the snapshot from the copy.
        seg.restore(snap);
        assert.deepEqual(bytes, original);
        snap.restore(copy);
        assert.deepEqual(view, written);
        for (const s of [copy, twin, snap, seg]) s.close();
      });
    });
  }

  it('without process_madvise, and without MADV_POPULATE_WRITE, pages are made private by touching them: bytes unchanged', () => {
    withLinux({}, () => {
      const pages = 64;
      const { seg, bytes } = numbered(pages);
      const snap = seg.clone();
      const want = new Uint8Array(snap.buffer).slice();
      for (let p = 0; p < pages; p += 2) bytes[p * PAGE] = 200;
      injectFault('process_madvise', 1, EINVAL, true);
      injectFault('madvise', 1, EINVAL);
      callCounts(true);
      const next = seg.clone();
      const calls = callCounts();
      assert.ok((calls.get('madvise') ?? 0) >= 2, 'madvise tried for populating, then used for dropping');
      assert.deepEqual(new Uint8Array(snap.buffer), want);
      assert.equal(anonymousIn(snap.address, snap.byteLength), (pages / 2) * PAGE, 'the pages rewritten under it are its private copies');
      assert.equal(snap.stats().mappings, 1);
      assert.deepEqual(new Uint8Array(next.buffer), bytes);
      // Learned: the next round goes straight to touching.
      for (let p = 1; p < pages; p += 2) bytes[p * PAGE] = 201;
      callCounts(true);
      const third = seg.clone();
      assert.deepEqual(new Uint8Array(snap.buffer), want);
      assert.deepEqual(new Uint8Array(next.buffer).subarray(PAGE, PAGE + 1)[0], 1);
      assert.deepEqual(new Uint8Array(third.buffer), bytes);
      for (const s of [third, next, snap, seg]) s.close();
    });
  });

  it('where private copies would take more than a quarter of the memory free, the written pages go to a new layer instead', () => {
    // 8,192 pages (32 MiB) to privatize: past the size made without asking.
    withLinux({ availableMemory: () => 64 * 2 ** 20 }, () => {
      const pages = 8192;
      const seg = Segment.create(pages * PAGE);
      const bytes = new Uint8Array(seg.buffer);
      bytes.fill(3);
      const snap = seg.clone();
      void snap.buffer;
      for (let p = 0; p < pages; p++) bytes[p * PAGE] = 4;
      const next = seg.clone();
      assert.equal(anonymousIn(snap.address, snap.byteLength), 0, 'the snapshot made no private copies');
      assert.ok(new Uint8Array(snap.buffer).every((x) => x === 3));
      assert.deepEqual(new Uint8Array(next.buffer), bytes);
      for (const s of [next, snap, seg]) s.close();
    });
  });

  it('a target whose pinned pages are held in it alone, restored by copy, reads as before when a read fails', () => {
    withLinux({ mapBudget: 48 }, (b) => {
      const pages = 256;
      const seg = Segment.create(pages * PAGE);
      const bytes = new Uint8Array(seg.buffer);
      for (let p = 0; p < pages; p++) bytes[p * PAGE] = p & 0xff;
      const every4th = Array.from({ length: pages / 4 }, (_, i) => i * 4);
      // `old`, never mapped: its pages under every 4th go to history, one run each.
      const old = seg.clone();
      const oldBytes = bytes.slice();
      for (const p of every4th) bytes[p * PAGE] = 100;
      seg.clone().close();
      // `snap`, mapped: the same pages rewritten under it again, which only it
      // uses now, so they are kept in its memory alone (a virtual layer).
      const snap = seg.clone();
      const view = new Uint8Array(snap.buffer);
      for (const p of every4th) bytes[p * PAGE] = 200;
      const layerBytes = b.memory().layerBytes;
      seg.clone().close();
      assert.equal(b.memory().layerBytes, layerBytes, 'no history copy');
      for (const p of [0, 4, 8]) view[p * PAGE + 9] = 77; // written over pinned pages
      const want = view.slice();
      // Restoring from `old`, 128 runs, copies the pages that differ (the
      // budget has room for fewer runs), once the target's own pages,
      // pinned ones too, are in a layer; the second read fails.
      injectFault('pread', 2, EIO);
      callCounts(true);
      assert.throws(() => snap.restore(old), (err: Error) => (err as { code?: string }).code === 'EIO');
      assert.ok((callCounts().get('pread') ?? 0) >= 2, 'restored by copy');
      assert.ok(Buffer.from(view).equals(Buffer.from(want)), 'the target reads as before, its pinned pages too');
      snap.restore(old);
      assert.ok(Buffer.from(view).equals(Buffer.from(oldBytes)));
      for (const s of [old, snap, seg]) s.close();
    });
  });
});

describe('history freed', { skip: linuxOnly }, () => {
  it('a snapshot closed frees the old contents kept for it a stretch of the history file at a time, not a page at a time', () => {
    withLinux({}, (b) => {
      const pages = 512;
      const seg = Segment.create(pages * PAGE);
      const bytes = new Uint8Array(seg.buffer);
      bytes.fill(1);
      // Never read: the old contents rewritten under it go to history,
      // every 4th page then every 4th from 2: two histories packed one
      // after the other into one file, 128 pages apart in the segment each.
      const first = seg.clone();
      for (let p = 0; p < pages; p += 4) bytes[p * PAGE] = 2;
      const second = seg.clone();
      const wantSecond = bytes.slice();
      for (let p = 2; p < pages; p += 4) bytes[p * PAGE] = 3;
      const third = seg.clone();
      const held = b.memory().layerBytes;
      callCounts(true);
      // The first history is the first snapshot's alone: freed whole.
      first.close();
      const punches = callCounts().get('fallocate') ?? 0;
      assert.ok(punches >= 1 && punches <= 2, `${punches} calls to free 128 pages`);
      assert.ok(b.memory().layerBytes <= held - 128 * PAGE, 'the pages are freed');
      assert.deepEqual(new Uint8Array(second.buffer), wantSecond);
      assert.deepEqual(new Uint8Array(third.buffer), bytes);
      for (const s of [second, third]) s.close();
      assert.deepEqual(new Uint8Array(seg.buffer), bytes);
      seg.close();
      assert.equal(b.memory().mappings, 0);
    });
  });
});

describe('history shared between read snapshots', { skip: linuxOnly }, () => {
  it('snapshots that show the pages rewritten under them, two or more to a page, map one history copy between them: no private copies', () => {
    withLinux({}, (b) => {
      const pages = 96;
      const { seg, bytes } = numbered(pages);
      const snaps = [seg.clone(), seg.clone(), seg.clone()];
      const original = bytes.slice();
      for (const s of snaps) assert.deepEqual(new Uint8Array(s.buffer), original);
      const layerBytes = b.memory().layerBytes;
      const rewritten = [3, 10, 11, 40, 41, 42, 77]; // four runs
      for (const p of rewritten) bytes[p * PAGE] = 200;
      const next = seg.clone();
      assert.equal(b.memory().layerBytes - layerBytes, rewritten.length * PAGE, 'the old contents copied once, into history');
      for (const [i, s] of snaps.entries()) {
        assert.deepEqual(new Uint8Array(s.buffer), original, `snapshot ${i}`);
        assert.equal(anonymousIn(s.address, s.byteLength), 0, `snapshot ${i} holds no private copy`);
        assert.equal(s.stats().mappings, 1 + 2 * 4, `snapshot ${i}: the history mapped over each run rewritten`);
      }
      assert.equal(seg.stats().mappings, 1, 'the segment keeps one mapping');
      assert.equal(seg.stats().privateBytes, 0, 'its writes all went into its layer');
      assert.deepEqual(new Uint8Array(next.buffer), bytes);
      // Written, cloned, restored, the snapshots with history runs read right every way.
      const view = new Uint8Array(snaps[0]!.buffer);
      for (const p of [3, 4, 41]) view[p * PAGE + 7] = 9;
      const written = view.slice();
      const copy = snaps[0]!.clone();
      assert.deepEqual(new Uint8Array(copy.buffer), written);
      snaps[0]!.restore(snaps[1]!);
      assert.deepEqual(view, original);
      seg.restore(copy);
      assert.deepEqual(bytes, written);
      snaps[2]!.restore(next);
      assert.deepEqual(new Uint8Array(snaps[2]!.buffer), new Uint8Array(next.buffer));
      for (const s of [copy, next, ...snaps, seg]) s.close();
      assert.equal(b.memory().mappings, 0);
    });
  });

  it("a snapshot's own writes under the pages rewritten stay its own; the pages it did not write come from the shared history", () => {
    withLinux({}, () => {
      const pages = 64;
      const { seg, bytes } = numbered(pages);
      const [c1, c2] = [seg.clone(), seg.clone()];
      const v1 = new Uint8Array(c1.buffer);
      const v2 = new Uint8Array(c2.buffer);
      v1[40 * PAGE + 1] = 41; // c1's own, not yet frozen
      v2[10 * PAGE + 1] = 11; // c2's
      const w1 = v1.slice();
      const w2 = v2.slice();
      for (const p of [10, 40, 50]) bytes[p * PAGE] = 222;
      const next = seg.clone();
      assert.deepEqual(v1, w1);
      assert.deepEqual(v2, w2);
      assert.deepEqual(new Uint8Array(next.buffer), bytes);
      assert.equal(anonymousIn(c1.address, c1.byteLength), PAGE, 'c1: its own written page alone is private');
      assert.equal(anonymousIn(c2.address, c2.byteLength), PAGE, 'c2: its own written page alone is private');
      // Frozen, cloned: still their own.
      const d1 = c1.clone();
      const d2 = c2.clone();
      assert.deepEqual(new Uint8Array(d1.buffer), w1);
      assert.deepEqual(new Uint8Array(d2.buffer), w2);
      for (const s of [d1, d2, next, c1, c2, seg]) s.close();
    });
  });

  it('read snapshots of scattered writes hold fewer copies sharing history than each copying, and every byte is right', () => {
    const copies = (shareHistory: boolean) =>
      withLinux({ shareHistory }, () => {
        let held = 0;
        keptAndRead('random', 512, 8, (_, kept) => {
          for (const k of kept) held += anonymousIn(k.snap.address, k.snap.byteLength);
        });
        return held / PAGE;
      });
    const alone = copies(false);
    const shared = copies(true);
    assert.ok(shared < alone / 2, `${shared} private copies sharing history, ${alone} each copying`);
  });

  it('sharing history keeps the mappings of all segments to half their budget; past it, snapshots copy', () => {
    withLinux({ mapBudget: 64 }, (b) => {
      const pages = 128;
      const random = rng(5);
      const seg = Segment.create(pages * PAGE);
      const bytes = new Uint8Array(seg.buffer);
      bytes.fill(1);
      const kept: { snap: Segment; want: Uint8Array }[] = [];
      let historyRuns = 0;
      let lastShared = 0;
      for (let round = 0; round < 10; round++) {
        // Three pages at random, apart: up to three runs rewritten under each snapshot.
        for (let k = 0; k < 3; k++) bytes[Math.floor(random() * (pages / 2)) * 2 * PAGE] = round + 2;
        const snap = seg.clone();
        kept.push({ snap, want: bytes.slice() });
        void snap.buffer;
        let runs = 0;
        for (const k of kept) runs += k.snap.stats().mappings - 1;
        if (runs > historyRuns) lastShared = round;
        historyRuns = runs;
        // At most half the budget once shared, with the new clone's mapping;
        // then one more for each clone made since.
        assert.ok(b.memory().mappings <= 33 + round - lastShared, `round ${round}: ${b.memory().mappings} mappings`);
        for (const [i, k] of kept.entries()) assert.deepEqual(new Uint8Array(k.snap.buffer), k.want, `round ${round}: snapshot ${i}`);
      }
      const mapped = kept.filter((k) => k.snap.stats().mappings > 1).length;
      const copying = kept.filter((k) => anonymousIn(k.snap.address, k.snap.byteLength) > 0).length;
      assert.ok(mapped > 0 && copying > 0, `${mapped} snapshots map history, ${copying} hold copies`);
      for (const k of kept) k.snap.close();
      seg.close();
    });
  });

  it('with room for few history runs, only the pages those runs take are scanned for private copies', () => {
    // 40 pages rewritten under three read snapshots, far enough apart that
    // each is a scan of its own; the budget leaves room to share one run
    // (before, all 120 were scanned for it: twice the scans).
    const runs = 40;
    const apart = 100;
    const cloneScans = (shareHistory: boolean) =>
      withLinux({ mapBudget: 24, shareHistory }, (b) => {
        const seg = Segment.create(runs * apart * PAGE);
        const bytes = new Uint8Array(seg.buffer);
        bytes.fill(1);
        const snaps = [seg.clone(), seg.clone(), seg.clone()];
        for (const s of snaps) void new Uint8Array(s.buffer).reduce((a, x) => a + x, 0);
        const original = bytes.slice();
        for (let r = 0; r < runs; r++) bytes[(r * apart + 50) * PAGE] = 9;
        callCounts(true);
        const next = seg.clone();
        const scans = callCounts().get('ioctl') ?? 0;
        for (const [i, s] of snaps.entries()) assert.ok(Buffer.from(s.buffer).equals(Buffer.from(original)), `snapshot ${i}`);
        assert.ok(Buffer.from(next.buffer).equals(Buffer.from(bytes)));
        const shared = snaps.filter((s) => s.stats().mappings > 1).length;
        for (const s of [next, ...snaps, seg]) s.close();
        assert.equal(b.memory().mappings, 0);
        return { scans, shared };
      });
    const without = cloneScans(false);
    const withRoom = cloneScans(true);
    assert.ok(withRoom.shared > 0, 'some history was shared');
    // Without sharing, each snapshot's pages are scanned once (for the
    // entries to drop before copying); sharing may add a scan of the pages
    // it takes, not of all 120.
    assert.ok(withRoom.scans <= without.scans + 3 * 4, `${withRoom.scans} scans sharing, ${without.scans} without`);
  });
});

describe('restores among read snapshots under a tight mapping budget', { skip: linuxOnly }, () => {
  // Restoring from a snapshot with pinned pages: freezing the target first
  // may move the snapshot's pages to a virtual layer, held in its memory
  // alone, which cannot be read from a file or mapped (this read EBADF).
  for (const [budget, shareHistory] of [[120, true], [400, true], [120, false]] as const) {
    it(`clones, writes, closes and restores, every snapshot and the segment read right (budget ${budget}${shareHistory ? '' : ', no shared history'})`, () => {
      for (let seed = 1; seed <= 6; seed++) {
        withLinux({ mapBudget: budget, shareHistory }, () => {
          const random = rng(seed * 7 + budget);
          const pages = 256;
          const seg = Segment.create(pages * PAGE);
          const bytes = new Uint8Array(seg.buffer);
          bytes.fill(1);
          const kept: { snap: Segment; want: Uint8Array }[] = [];
          const pick = () => Math.floor(random() * kept.length);
          for (let round = 0; round < 60; round++) {
            const n = 1 + Math.floor(random() * 12);
            for (let k = 0; k < n; k++) bytes[Math.floor(random() * pages) * PAGE + (round % 100)] = (round * 7 + k) & 0xff;
            const op = random();
            if (op < 0.6 || kept.length < 2) {
              const snap = seg.clone();
              kept.push({ snap, want: bytes.slice() });
              if (random() < 0.8) void snap.buffer;
            } else if (op < 0.7) {
              kept.splice(pick(), 1)[0]!.snap.close();
            } else if (op < 0.8) {
              const k = kept[pick()]!;
              const at = Math.floor(random() * pages) * PAGE + 3;
              new Uint8Array(k.snap.buffer)[at] = 99;
              k.want[at] = 99;
            } else if (op < 0.9) {
              const k = kept[pick()]!;
              seg.restore(k.snap);
              bytes.set(k.want);
            } else {
              const k = kept[pick()]!;
              const snap = k.snap.clone();
              kept.push({ snap, want: k.want.slice() });
              void snap.buffer;
            }
            for (const [i, k] of kept.entries()) {
              assert.ok(Buffer.from(k.snap.buffer).equals(Buffer.from(k.want)), `seed ${seed}, round ${round}: snapshot ${i}`);
            }
            assert.ok(Buffer.from(new Uint8Array(seg.buffer)).equals(Buffer.from(bytes)), `seed ${seed}, round ${round}: the segment`);
          }
          for (const k of kept) k.snap.close();
          seg.close();
        });
      }
    });
  }
});
