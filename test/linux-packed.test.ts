// Packed history layers (Packing, src/runs.ts): the old contents of pages a
// segment rewrites in place are stored one after another, so page i of a
// history layer is not at offset i. Every path that reads, maps, writes,
// copies or frees layer pages must find them there: snapshots read and
// restored from, segments restored onto history pages and written in place
// again, history evicted to history again, run lists compacted. Each step
// is checked byte for byte against plain arrays.
import { constants } from 'node:os';
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { memoryStats, Segment, SegmentError } from '../src/index.ts';
import * as sys from '../platform/libc.ts';
import { withLinux } from './helpers/linux.ts';
import { rng } from './helpers/model.ts';
import { layerFds } from './helpers/proc.ts';

const linuxOnly = process.platform !== 'linux' && 'Linux backend';
const PAGE = 4096;
const pages = 512;

/** The bytes of a segment, compared with what it should hold; names the first page that differs. */
function assertHolds(seg: Segment, want: Uint8Array, what: string): void {
  const got = new Uint8Array(seg.buffer);
  if (Buffer.from(got).equals(want)) return;
  let p = 0;
  while (p * PAGE < want.length && Buffer.from(got.subarray(p * PAGE, (p + 1) * PAGE)).equals(want.subarray(p * PAGE, (p + 1) * PAGE))) p++;
  assert.fail(`${what}: page ${p} differs`);
}

describe('packed history layers', { skip: linuxOnly }, () => {
  const variants: { name: string; options: ConstructorParameters<typeof import('../platform/linux/index.ts').LinuxBackend>[0]; hole?: true }[] = [
    // Writes not tracked: every shared page rewritten goes through history
    // (tracked, some are frozen deferred instead: linux-track.test.ts).
    { name: 'history written through the moved-aside mapping', options: { windowCopy: true, track: false } },
    // A page never written at the first clone: the moved-aside mapping may
    // lack entries, and history is copied from it through the pipe.
    { name: 'history through the pipe, a hole at the first clone', options: { windowCopy: true, track: false }, hole: true },
    { name: 'history copied file to file', options: { windowCopy: false, track: false } },
    { name: 'restores mapped in place', options: { restoreInPlace: true, track: false } },
    { name: 'a run budget that compacts', options: { maxRuns: 8, track: false } },
    { name: 'no pinned pages', options: { privatize: false, track: false } },
    { name: 'writes tracked', options: {} },
  ];
  for (const { name, options, hole } of variants) {
    it(`every segment reads as a plain array through writes, clones, reads, restores and closes (${name})`, () => {
      withLinux(options, (b) => {
        const random = rng(11);
        const seg = Segment.create(pages * PAGE);
        const model = new Uint8Array(pages * PAGE);
        const bytes = () => new Uint8Array(seg.buffer);
        const filled = hole ? (pages - 1) * PAGE : pages * PAGE;
        bytes().fill(1, 0, filled);
        model.fill(1, 0, filled);
        const kept: { snap: Segment; want: Uint8Array }[] = [];
        sys.callCounts(true);
        try {
          for (let round = 0; round < 60; round++) {
            // Every other page of a stretch, or pages at random: scattered
            // writes, whose old contents go to a packed history layer.
            const view = bytes();
            const from = Math.floor(random() * pages);
            for (let p = from; p < pages; p += round % 3 === 0 ? 1 + Math.floor(random() * 3) : 2) {
              const at = p * PAGE + (round % PAGE);
              view[at] = model[at] = round + 2;
            }
            kept.push({ snap: seg.clone(), want: model.slice() });
            const old = kept[Math.floor(random() * kept.length)]!;
            switch (Math.floor(random() * 6)) {
              case 0:
                // Read (mapped from then on: its run list, packed runs and all).
                assertHolds(old.snap, old.want, `round ${round}, an old snapshot read`);
                break;
              case 1: {
                // Restored onto history pages, then written on below, in place.
                seg.restore(old.snap);
                model.set(old.want);
                assertHolds(seg, model, `round ${round}, restored from an old snapshot`);
                break;
              }
              case 2: {
                const i = kept.indexOf(old);
                if (kept.length > 1) kept.splice(i, 1)[0]!.snap.close();
                break;
              }
              case 3: {
                const copy = old.snap.clone();
                kept.push({ snap: copy, want: old.want });
                break;
              }
              default:
                break;
            }
            assertHolds(seg, model, `round ${round}`);
            assert.equal(layerFds().length, b.layerCount(), `round ${round}: the descriptors open are the ones counted`);
          }
          for (const [i, k] of kept.entries()) assertHolds(k.snap, k.want, `snapshot ${i}`);
          const calls = sys.callCounts();
          const gathered = (calls.get('vmsplice') ?? 0) + (calls.get('pwritev') ?? 0);
          if (options?.windowCopy === true) assert.ok(gathered > 0, 'history gathered from the window');
          if (options?.windowCopy === false) assert.equal(calls.get('pwritev') ?? 0, 0, 'no window, no pwritev');
        } finally {
          for (const k of kept) k.snap.close();
          seg.close();
        }
        assert.equal(memoryStats().segments, 0);
        assert.equal(b.memory().layers, 0, 'every layer closed with the last segment using it');
      });
    });
  }

  // Each stops in the second batch of 1,024 pages: a pipe of 1 MiB takes
  // 256 pages a vmsplice and a splice; pwritev takes 1,024 ranges a call.
  // A hole at the first clone (the last page never written) leaves the
  // moved-aside mapping without every entry: history goes through the pipe.
  for (const { name, options, call, k, prepare, hole } of [
    { name: 'gathered with pwritev from the moved-aside mapping', options: { windowCopy: true, windowGather: 'pwritev' as const }, call: 'pwritev' as const, k: 2 },
    { name: 'gathered through a pipe from the moved-aside mapping that has every page', options: { windowCopy: true, windowGather: 'pipe' as const }, call: 'splice' as const, k: 6 },
    { name: 'gathered through a pipe from the moved-aside mapping', options: { windowCopy: true }, call: 'splice' as const, k: 6, hole: true },
    {
      name: 'gathered with pwritev, vmsplice refused',
      options: { windowCopy: true },
      call: 'pwritev' as const,
      k: 2,
      prepare: () => sys.injectFault('vmsplice', 1, constants.errno.ENOSYS),
      hole: true,
    },
    { name: 'file to file', options: { windowCopy: false }, call: 'copy_file_range' as const, k: 1500 },
  ]) {
    it(`a history copy that fails part way (${name}) leaves every segment reading as before, and the next clone works`, () => {
      withLinux(options, (b) => {
        const n = 4096;
        const seg = Segment.create(n * PAGE);
        const filled = hole === true ? (n - 1) * PAGE : n * PAGE;
        const model = new Uint8Array(n * PAGE).fill(1, 0, filled);
        new Uint8Array(seg.buffer).fill(1, 0, filled);
        const snap = seg.clone();
        const first = model.slice();
        try {
          // 2,048 pages rewritten under a snapshot nobody reads: their old
          // contents go to history in batches, each settled before the next.
          const view = new Uint8Array(seg.buffer);
          for (let p = 0; p < n; p += 2) view[p * PAGE + 7] = model[p * PAGE + 7] = 9;
          sys.callCounts(true);
          // The copy stops in the second batch, after the first was settled.
          prepare?.();
          sys.injectFault(call, k, constants.errno.ENOSPC);
          assert.throws(
            () => seg.clone(),
            (err: unknown) => err instanceof SegmentError && err.code === 'ENOSPC' && err.syscall === call,
          );
          sys.clearFaults();
          const calls = sys.callCounts();
          assert.ok((calls.get(call) ?? 0) >= k, `${call} made the copies`);
          assertHolds(seg, model, 'the segment after the failed clone');
          assertHolds(snap, first, 'the snapshot after the failed clone');
          assert.equal(layerFds().length, b.layerCount(), 'the descriptors open are the ones counted');
          const again = seg.clone();
          assertHolds(again, model, 'the next clone');
          assertHolds(snap, first, 'the snapshot after the next clone');
          again.close();
        } finally {
          snap.close();
          seg.close();
        }
        assert.equal(b.memory().layers, 0, 'every layer closed with the last segment using it');
      });
    });
  }

  it('copies history from the moved-aside mapping by pwritev where it has every page, through the pipe where the first clone found a hole', () => {
    for (const hole of [false, true]) {
      withLinux({ track: false, windowGather: 'pwritev' }, () => {
        const seg = Segment.create(pages * PAGE);
        const view = new Uint8Array(seg.buffer);
        view.fill(1, 0, hole ? (pages - 1) * PAGE : pages * PAGE);
        const first = seg.clone();
        const want = view.slice();
        try {
          // Every 4th page rewritten: their old contents go to history, read by `first` alone (never mapped).
          for (let p = 0; p < pages - 1; p += 4) view[p * PAGE] = 7;
          sys.callCounts(true);
          const second = seg.clone();
          const counts = sys.callCounts(true);
          second.close();
          const piped = (counts.get('vmsplice') ?? 0) > 0;
          const gathered = (counts.get('pwritev') ?? 0) > 0;
          if (hole) assert.ok(piped && !gathered, `a hole: through the pipe (vmsplice ${counts.get('vmsplice') ?? 0}, pwritev ${counts.get('pwritev') ?? 0})`);
          else assert.ok(gathered && !piped, `no hole: pwritev (vmsplice ${counts.get('vmsplice') ?? 0}, pwritev ${counts.get('pwritev') ?? 0})`);
          assertHolds(first, want, `the snapshot taken before (${hole ? 'a hole' : 'no hole'})`);
        } finally {
          first.close();
          seg.close();
        }
      });
    }
  });

  it('copies history from a moved-aside mapping that has every page both ways at first, then the way that was cheaper', () => {
    withLinux({ track: false }, () => {
      const seg = Segment.create(pages * PAGE);
      const view = new Uint8Array(seg.buffer);
      view.fill(1);
      const kept: { snap: Segment; want: Uint8Array }[] = [];
      const ways: string[] = [];
      try {
        kept.push({ snap: seg.clone(), want: view.slice() });
        // Each round rewrites 128 pages the kept snapshots show: their old
        // contents go to history, read from the window, a gather a round.
        for (let round = 0; round < 6; round++) {
          for (let p = round % 4; p < pages; p += 4) if (p % 8 < 4) view[p * PAGE + round] = 10 + round;
          sys.callCounts(true);
          kept.push({ snap: seg.clone(), want: view.slice() });
          const counts = sys.callCounts(true);
          const piped = (counts.get('vmsplice') ?? 0) > 0;
          const written = (counts.get('pwritev') ?? 0) > 0;
          assert.ok(piped !== written, `round ${round}: one way (vmsplice ${counts.get('vmsplice') ?? 0}, pwritev ${counts.get('pwritev') ?? 0})`);
          ways.push(piped ? 'pipe' : 'pwritev');
        }
        // Untimed at first: each way once, pwritev first.
        assert.deepEqual(ways.slice(0, 2), ['pwritev', 'pipe']);
        for (const [i, k] of kept.entries()) assertHolds(k.snap, k.want, `snapshot ${i}`);
        assertHolds(seg, view, 'the segment');
      } finally {
        for (const k of kept) k.snap.close();
        seg.close();
      }
    });
  });

  it('stores the batches of many clones in one file: a descriptor for all of them, closed with the last', () => {
    withLinux({}, (b) => {
      const random = rng(3);
      const seg = Segment.create(pages * PAGE);
      const view = new Uint8Array(seg.buffer);
      view.fill(1);
      const kept: { snap: Segment; want: Uint8Array }[] = [];
      try {
        // 40 batches of at most 8 pages: room for all of them in one file of 512 pages.
        for (let round = 0; round < 40; round++) {
          for (let i = 0; i < 8; i++) view[Math.floor(random() * pages) * PAGE + round] = round + 2;
          kept.push({ snap: seg.clone(), want: view.slice() });
        }
        assert.ok(b.layerCount() <= 3, `${b.layerCount()} descriptors for 40 batches of history`);
        assert.equal(layerFds().length, b.layerCount());
        for (const [i, k] of kept.entries()) {
          const got = Buffer.from(new Uint8Array(k.snap.buffer));
          assert.ok(got.equals(k.want), `snapshot ${i} reads what it was cloned from`);
        }
        // Closing the snapshots closes their history layers, the file with the last of them.
        for (const k of kept.splice(0)) k.snap.close();
        assert.equal(b.layerCount(), 1, 'only the segment\'s own layer');
        assert.equal(layerFds().length, 1);
      } finally {
        for (const k of kept) k.snap.close();
        seg.close();
      }
      assert.equal(layerFds().length, 0);
    });
  });
});
