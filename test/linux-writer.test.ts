// iovec batching of the Linux backend (platform/linux/writer.ts, drop.ts):
// page ranges cut into (address, length) pairs for vmsplice, process_madvise
// and process_vm_readv, checked against the bytes the ranges cover; and the
// copy between layers, both ways, checked byte for byte.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { writeSync } from 'node:fs';
import type { Range } from '../src/runs.ts';
import * as sys from '../platform/libc.ts';
import { advance, copyLayerRanges, fillIovec, fillPairs, VM_COPY_MIN, type Cursor } from '../platform/linux/writer.ts';
import { fillRanges } from '../platform/linux/drop.ts';
import { assumeFeatures } from '../platform/linux/features.ts';
import { LayerStore } from '../platform/linux/layers.ts';
import { Windows } from '../platform/linux/move-aside.ts';

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
          const cursor: Cursor = { index: 0, at: ranges[0]!.start * page };
          const passed: [number, number][] = [];
          for (let round = 0; cursor.index < ranges.length; round++) {
            const { count, bytes } = fillIovec(iov, base, ranges, page, cursor, maxEntries, maxBytes);
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
            const pieces = advance(ranges, page, cursor, taken);
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
        const { count } = fillIovec(iov, 0n, ranges, page, { index: 0, at: ranges[0]!.start * page }, maxEntries, Infinity);
        for (let i = 0; i < count; i++) {
          const [o, l] = [Number(iov[i * 2]!), Number(iov[i * 2 + 1]!)];
          assert.ok(ranges.some((r) => r.start * page <= o && o + l <= r.end * page));
        }
      }),
    );
  });
});

describe('fillRanges()', () => {
  it('names each range by address and length, and returns their bytes', () => {
    fc.assert(
      fc.property(rangesArb, fc.constantFrom(4096, 16384), fc.bigInt({ min: 0n, max: 1n << 46n }), (ranges, page, base) => {
        const iov = new BigUint64Array(ranges.length * 2);
        const bytes = fillRanges(iov, base, ranges, page);
        ranges.forEach((r, i) => {
          assert.equal(iov[i * 2], base + BigInt(r.start * page));
          assert.equal(iov[i * 2 + 1], BigInt((r.end - r.start) * page));
        });
        assert.equal(bytes, ranges.reduce((n, r) => n + (r.end - r.start) * page, 0));
      }),
    );
  });
});

describe('fillPairs()', () => {
  it('names each range at the same offset from both bases, with equal lengths, and returns their bytes', () => {
    fc.assert(
      fc.property(rangesArb, fc.nat(), fc.nat(), fc.bigInt({ min: 0n, max: 1n << 46n }), fc.bigInt({ min: 0n, max: 1n << 46n }), (ranges, a, b, into, from) => {
        const first = a % ranges.length;
        const count = b % (ranges.length - first + 1);
        const l = new BigUint64Array(2 * count);
        const r = new BigUint64Array(2 * count);
        const bytes = fillPairs(l, r, into, from, ranges, first, count, 4096);
        let total = 0;
        for (let k = 0; k < count; k++) {
          const range = ranges[first + k]!;
          assert.equal(l[2 * k], into + BigInt(range.start * 4096));
          assert.equal(r[2 * k], from + BigInt(range.start * 4096));
          assert.equal(l[2 * k + 1], BigInt((range.end - range.start) * 4096));
          assert.equal(r[2 * k + 1], l[2 * k + 1]);
          total += (range.end - range.start) * 4096;
        }
        assert.equal(bytes, total);
      }),
    );
  });
});

describe('copyLayerRanges()', { skip: process.platform !== 'linux' && 'Linux only' }, () => {
  it('copies exactly the pages under the ranges, through memory and file to file alike, and leaves no mapping behind', () => {
    sys.loadLibc();
    const page = sys.getpagesize();
    const pages = 4000;
    const store = new LayerStore(page, 64, assumeFeatures(false), new Windows(), () => undefined);
    const maps = (): number => sys.readSmallFile('/proc/self/maps')!.split('\n').length;
    for (const vmCopy of [true, false]) {
      const features = assumeFeatures(false);
      features.vmCopy = vmCopy;
      const from = store.make(pages * page);
      const to = store.make(pages * page);
      // Every page of `from` marked with its number; `to` marked apart.
      const marks = new Uint8Array(pages * page);
      for (let p = 0; p < pages; p++) marks[p * page] = (p % 250) + 1;
      assert.equal(writeSync(from.fd, marks, 0, marks.byteLength, 0), marks.byteLength);
      marks.fill(0);
      for (let p = 0; p < pages; p++) marks[p * page + 1] = 255;
      assert.equal(writeSync(to.fd, marks, 0, marks.byteLength, 0), marks.byteLength);
      // Every 3rd page, and a few runs: more ranges than one vectored call takes.
      const ranges: Range[] = [];
      for (let p = 0; p < pages - 10; p += 3) ranges.push(p % 300 === 0 ? { start: p, end: p + 2 } : { start: p, end: p + 1 });
      assert.ok(ranges.length > 1024 && ranges.length >= VM_COPY_MIN);
      const before = maps();
      sys.callCounts(true);
      assert.equal(copyLayerRanges(features, page, from, to, ranges), true);
      assert.equal(maps(), before, 'a temporary mapping was left behind');
      // The way asked for is the way taken: two vectored calls, or a call a range.
      const calls = sys.callCounts();
      assert.equal(calls.get('process_vm_readv') ?? 0, vmCopy ? Math.ceil(ranges.length / 1024) : 0);
      assert.equal(calls.get('copy_file_range') ?? 0, vmCopy ? 0 : ranges.length);
      const out = new Uint8Array(pages * page);
      assert.equal(sys.pread(to.fd, out, out.byteLength, 0), out.byteLength);
      const copied = new Set<number>();
      for (const r of ranges) for (let p = r.start; p < r.end; p++) copied.add(p);
      for (let p = 0; p < pages; p++) {
        const want = copied.has(p) ? [(p % 250) + 1, 0] : [0, 255];
        assert.deepEqual([out[p * page], out[p * page + 1]], want, `page ${p} (${vmCopy ? 'through memory' : 'file to file'})`);
      }
      store.close(from);
      store.close(to);
    }
    store.shutdown();
  });
});
