// Write tracking (platform/linux/track.ts) and the deferred freeze it makes
// safe (freeze.ts): a segment that rewrites the same pages round after
// round, under snapshots nobody maps, keeps its private copies and gives
// each clone a copy of the new contents, leaving the old ones where they
// are. Behaviour only: bytes, private memory and mappings, never time.
import { describe, it } from 'node:test';
import * as assert from 'node:assert/strict';
import { openSync, readSync, closeSync } from 'node:fs';
import { Segment } from '../src/index.ts';
import * as sys from '../platform/libc.ts';
import { Scanner } from '../platform/linux/scan.ts';
import { WriteTracker } from '../platform/linux/track.ts';
import { TRIAL_PAGES } from '../platform/linux/cost.ts';
import type { RangeList } from '../src/runs.ts';
import { anonymousIn, linuxOnly } from './helpers/proc.ts';
import { rng } from './helpers/model.ts';
import { withLinux } from './helpers/linux.ts';
import { randomStep } from './helpers/steps.ts';

const PAGE = 4096;

/** The pages of `list`, one by one. */
function pagesOf(list: RangeList): number[] {
  const out: number[] = [];
  for (let i = 0; i < list.length; i++) for (let p = list.starts[i]!; p < list.ends[i]!; p++) out.push(p);
  return out;
}

describe('write tracking', { skip: linuxOnly }, () => {
  it('reports the private pages written since the last report, rewrites and kernel writes included, and nothing a drop left behind', (t) => {
    sys.loadLibc();
    const tracker = WriteTracker.open(PAGE);
    const scanner = new Scanner(PAGE, undefined);
    if (tracker === null || scanner.method !== 'pagemap-scan') {
      tracker?.close();
      scanner.close();
      t.skip('asynchronous userfaultfd write-protect is not available here');
      return;
    }
    const pages = 64;
    const fd = sys.memfdCreate('track-test', sys.MFD_CLOEXEC);
    sys.ftruncate(fd, pages * PAGE);
    const shared = sys.mmap(null, pages * PAGE, sys.PROT_READ | sys.PROT_WRITE, sys.MAP_SHARED, fd, 0);
    const addr = sys.mmap(null, pages * PAGE, sys.PROT_READ | sys.PROT_WRITE, sys.MAP_PRIVATE, fd, 0);
    try {
      new Uint8Array(sys.view(shared, pages * PAGE)).fill(1);
      const bytes = new Uint8Array(sys.view(addr, pages * PAGE));
      void bytes[20 * PAGE]; // read only: a file page, never reported
      for (const p of [2, 3, 9]) bytes[p * PAGE] = 2;
      tracker.register(addr, pages * PAGE);
      // Written before registering: reported once.
      assert.deepEqual(pagesOf(scanner.writtenSince(addr, pages)), [2, 3, 9]);
      assert.deepEqual(pagesOf(scanner.writtenSince(addr, pages)), []);
      // A private page written again, and a new one.
      bytes[3 * PAGE + 5] = 7;
      bytes[40 * PAGE] = 7;
      assert.deepEqual(pagesOf(scanner.writtenSince(addr, pages)), [3, 40]);
      // A write by the kernel (read(2) into the mapping).
      const file = openSync('/proc/self/stat', 'r');
      try {
        assert.ok(readSync(file, bytes.subarray(9 * PAGE + 100, 9 * PAGE + 108)) > 0);
      } finally {
        closeSync(file);
      }
      assert.deepEqual(pagesOf(scanner.writtenSince(addr, pages)), [9]);
      // Registering again changes nothing.
      tracker.register(addr, pages * PAGE);
      assert.deepEqual(pagesOf(scanner.writtenSince(addr, pages)), []);
      // Dropping protected pages leaves markers: not private, not written.
      sys.madvise(addr + BigInt(2 * PAGE), 2 * PAGE, sys.MADV_DONTNEED);
      assert.deepEqual(pagesOf(scanner.writtenList(addr, pages)), [9, 40]);
      assert.equal(bytes[2 * PAGE], 1, 'a dropped page reads its layer again');
      assert.deepEqual(pagesOf(scanner.writtenSince(addr, pages)), []);
      bytes[2 * PAGE] = 5;
      assert.deepEqual(pagesOf(scanner.writtenSince(addr, pages)), [2]);
    } finally {
      sys.munmap(addr, pages * PAGE);
      sys.munmap(shared, pages * PAGE);
      sys.closeFd(fd);
      tracker.close();
      tracker.close();
      scanner.close();
    }
  });
});

/** A segment of `pages` pages, each byte 1, with its bytes and a copy to check against. */
function filled(pages: number): { seg: Segment; bytes: Uint8Array; model: Uint8Array } {
  const seg = Segment.create(pages * PAGE);
  const bytes = new Uint8Array(seg.buffer);
  bytes.fill(1);
  return { seg, bytes, model: new Uint8Array(pages * PAGE).fill(1) };
}

/** Writes `value` at three places of each page in `pages`, in the segment and in its model. */
function write(bytes: Uint8Array, model: Uint8Array, pages: readonly number[], value: number): void {
  for (const p of pages) {
    for (const at of [p * PAGE, p * PAGE + 1000, (p + 1) * PAGE - 1]) {
      bytes[at] = value;
      model[at] = value;
    }
  }
}

/** Whether `seg` holds exactly `want`; names the first page that differs. */
function assertHolds(seg: Segment, want: Uint8Array, what: string): void {
  const got = new Uint8Array(seg.buffer);
  if (Buffer.from(got).equals(want)) return;
  let p = 0;
  while (Buffer.from(got.subarray(p * PAGE, (p + 1) * PAGE)).equals(want.subarray(p * PAGE, (p + 1) * PAGE))) p++;
  assert.fail(`${what}: page ${p} differs`);
}

/** A snapshot never mapped, checked through a clone of it (read, then closed), which leaves it unmapped. */
function assertSnapshot(snap: Segment, want: Uint8Array, what: string): void {
  const look = snap.clone();
  try {
    assertHolds(look, want, what);
  } finally {
    look.close();
  }
}

describe('freezing deferred for pages rewritten under snapshots nobody maps', { skip: linuxOnly }, () => {
  // The private copies gathered the way found cheaper (each tried), and through the pipe alone.
  for (const [track, windowGather] of [[true, undefined], [false, undefined], [true, 'pipe']] as const) {
    it(`keeps every snapshot exact and the segment one mapping, and gives the private copies back once the snapshots go (track: ${track}${windowGather === undefined ? '' : `, gathered through the ${windowGather}`})`, (t) => {
      withLinux({ track, windowGather }, (b) => {
        if (track && !b.tracksWrites) {
          t.skip('asynchronous userfaultfd write-protect is not available here');
          return;
        }
        // 2 MiB and a page: the first clone moves page tables aside, and a page past the last span.
        const pages = 513;
        const { seg, bytes, model } = filled(pages);
        const every2nd = Array.from({ length: pages >> 1 }, (_, i) => 2 * i + 1);
        const kept: { snap: Segment; want: Uint8Array }[] = [{ snap: seg.clone(), want: model.slice() }];
        try {
          sys.callCounts(true);
          for (let round = 1; round <= 6; round++) {
            write(bytes, model, every2nd, round + 1);
            kept.push({ snap: seg.clone(), want: model.slice() });
            assert.equal(seg.stats().mappings, 1, `round ${round}: one mapping`);
            assertHolds(seg, model, `round ${round}: the segment`);
          }
          const calls = sys.callCounts();
          if (track && windowGather === 'pipe') assert.equal(calls.get('pwritev') ?? 0, 0, 'nothing gathered by pwritev');
          if (track) assert.ok((calls.get('vmsplice') ?? 0) > 0, 'gathered through the pipe');
          // From the second round on, the pages it rewrites are frozen deferred:
          // its private copies stay (without tracking, none do).
          const held = anonymousIn(seg.address, pages * PAGE) * 1024;
          if (track) assert.ok(held >= every2nd.length * PAGE, `${held} bytes of private copies kept`);
          else assert.equal(held, 0, 'no private copies kept');
          for (const [i, k] of kept.entries()) assertSnapshot(k.snap, k.want, `snapshot ${i}`);
          // A snapshot read while pages are deferred, and other pages written.
          assertHolds(kept[3]!.snap, kept[3]!.want, 'snapshot 3, mapped');
          write(bytes, model, [0, 2, 4], 41);
          kept.push({ snap: seg.clone(), want: model.slice() });
          // Every snapshot closed: the next clone writes the private copies
          // back into the segment's layer and drops them.
          for (const k of kept.splice(0)) k.snap.close();
          write(bytes, model, [5], 42);
          const last = seg.clone();
          kept.push({ snap: last, want: model.slice() });
          assert.equal(anonymousIn(seg.address, pages * PAGE), 0, 'no private copies left');
          assert.equal(seg.stats().privateBytes, 0, 'nothing of it private: the new clone shares every page');
          assertSnapshot(last, model, 'the last snapshot');
          // Restored from a snapshot, then rewriting the same pages again.
          for (let round = 1; round <= 3; round++) {
            write(bytes, model, every2nd, 50 + round);
            kept.push({ snap: seg.clone(), want: model.slice() });
          }
          seg.restore(kept[2]!.snap);
          model.set(kept[2]!.want);
          assertHolds(seg, model, 'restored from a snapshot');
          for (let round = 1; round <= 3; round++) {
            write(bytes, model, every2nd, 60 + round);
            kept.push({ snap: seg.clone(), want: model.slice() });
          }
          for (const [i, k] of kept.entries()) assertSnapshot(k.snap, k.want, `snapshot ${i} after the restore`);
          assertHolds(seg, model, 'the segment at the end');
        } finally {
          for (const k of kept) k.snap.close();
          seg.close();
        }
        assert.equal(b.memory().layers, 0, 'every layer closed with the last segment using it');
      });
    });
  }

  it(`gathers a large deferred freeze both ways in its first clone, each on a sample of TRIAL_PAGES, and the rest the way found cheaper`, (t) => {
    withLinux({ track: true }, (b) => {
      if (!b.tracksWrites) {
        t.skip('asynchronous userfaultfd write-protect is not available here');
        return;
      }
      // Every 2nd page of 32 MiB: 4,096 pages rewritten a round, four samples' worth.
      const pages = 4 * 2 * TRIAL_PAGES + 1;
      const { seg, bytes, model } = filled(pages);
      const every2nd = Array.from({ length: pages >> 1 }, (_, i) => 2 * i + 1);
      const kept: { snap: Segment; want: Uint8Array }[] = [{ snap: seg.clone(), want: model.slice() }];
      try {
        for (let round = 1; round <= 3; round++) {
          write(bytes, model, every2nd, round + 1);
          sys.callCounts(true);
          kept.push({ snap: seg.clone(), want: model.slice() });
          const calls = sys.callCounts(true);
          // Round 2 is the first deferred freeze: neither way timed yet.
          if (round === 2) {
            assert.ok((calls.get('pwritev') ?? 0) > 0, `round 2: a sample by pwritev (${calls.get('pwritev') ?? 0} calls)`);
            assert.ok((calls.get('vmsplice') ?? 0) > 0, `round 2: a sample through the pipe (${calls.get('vmsplice') ?? 0} calls)`);
          }
          assertHolds(seg, model, `round ${round}: the segment`);
        }
        for (const [i, k] of kept.entries()) assertSnapshot(k.snap, k.want, `snapshot ${i}`);
      } finally {
        for (const k of kept) k.snap.close();
        seg.close();
      }
    });
  });

  for (const track of [true, false]) {
    it(`agrees with plain arrays over rounds of repeated, moving and random writes, snapshots kept, read, restored from and closed out of order (track: ${track})`, (t) => {
      withLinux({ track }, (b) => {
        if (track && !b.tracksWrites) {
          t.skip('asynchronous userfaultfd write-protect is not available here');
          return;
        }
        const random = rng(track ? 11 : 12);
        const pages = 96;
        const { seg, bytes, model } = filled(pages);
        const kept: { snap: Segment; want: Uint8Array }[] = [];
        let fixed = Array.from({ length: 20 }, (_, i) => 3 * i + 1);
        try {
          for (let round = 0; round < 60; round++) {
            const value = (round % 200) + 2;
            const pick = random();
            if (pick < 0.5) write(bytes, model, fixed, value);
            else if (pick < 0.7) write(bytes, model, Array.from({ length: 8 }, () => Math.floor(random() * pages)).sort((x, y) => x - y), value);
            else if (pick < 0.8) fixed = Array.from({ length: 12 }, (_, i) => (5 * i + round) % pages).sort((x, y) => x - y);
            else if (pick < 0.85 && kept.length > 0) {
              const k = kept[Math.floor(random() * kept.length)]!;
              seg.restore(k.snap);
              model.set(k.want);
            } else if (pick < 0.9 && kept.length > 0) {
              const k = kept[Math.floor(random() * kept.length)]!;
              assertHolds(k.snap, k.want, `round ${round}: a snapshot read`);
            } else if (kept.length > 0) {
              kept.splice(Math.floor(random() * kept.length), 1)[0]!.snap.close();
            }
            kept.push({ snap: seg.clone(), want: model.slice() });
            if (kept.length > 8) kept.splice(Math.floor(random() * 4), 1)[0]!.snap.close();
            assertHolds(seg, model, `round ${round}: the segment`);
          }
          for (const [i, k] of kept.entries()) assertSnapshot(k.snap, k.want, `snapshot ${i}`);
        } finally {
          for (const k of kept) k.snap.close();
          seg.close();
        }
        assert.equal(b.memory().layers, 0, 'every layer closed with the last segment using it');
      });
    });
  }
});

describe('random clones, restores, writes and closes with writes tracked', { skip: linuxOnly }, () => {
  // Segments read one at a time, so most stay unmapped or untouched for a
  // while: the states a check that reads everything would never leave.
  it('every segment reads what plain arrays hold, over many short sequences', (t) => {
    withLinux({}, (b) => {
      if (!b.tracksWrites) {
        t.skip('asynchronous userfaultfd write-protect is not available here');
        return;
      }
      for (let seed = 1; seed <= 60; seed++) {
        const random = rng(seed);
        const pick = (n: number): number => Math.floor(random() * n);
        const length = (2 + 3 * (seed % 4)) * PAGE - 17;
        const segs: Segment[] = [Segment.create(length)];
        const models: Uint8Array[] = [new Uint8Array(length)];
        try {
          for (let step = 0; step < 200; step++) {
            randomStep(segs, models, length, pick);
            const c = pick(segs.length);
            assert.ok(Buffer.from(new Uint8Array(segs[c]!.buffer)).equals(models[c]!), `seed ${seed}, step ${step}: segment ${c} differs`);
          }
          for (const [i, s] of segs.entries()) assert.ok(Buffer.from(new Uint8Array(s.buffer)).equals(models[i]!), `seed ${seed}: segment ${i} differs at the end`);
        } finally {
          for (const s of segs) s.close();
        }
      }
      assert.equal(b.memory().layers, 0, 'every layer closed with the last segment using it');
    });
  });
});
