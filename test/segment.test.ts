// The behaviour of the public Segment API, run once against every backend that
// loads here. Most tests follow one shape: write to one segment, then check that
// every other segment (origin, clones, siblings) still reads as before.
import { describe, it, before } from 'node:test';
import assert from 'node:assert/strict';
import { Segment, SegmentError } from '../src/index.ts';
import type { Backend } from '../src/backend.ts';
import { maxViewLength } from '../src/runtime.ts';
import { backends, useBackend, assertBytes } from './backends.ts';

/** Bytes that differ from page to page and from seed to seed. */
function pattern(length: number, seed: number): Uint8Array {
  const out = new Uint8Array(length);
  for (let i = 0; i < length; i++) out[i] = (i * 131 + seed * 17 + (i >>> 12) * 7 + 1) & 0xff;
  return out;
}

function bytesOf(seg: Segment): Uint8Array {
  return new Uint8Array(seg.buffer);
}

/** A copy of a segment's contents, for comparing later. */
function snapshot(seg: Segment): Uint8Array {
  return bytesOf(seg).slice();
}

function isClosedError(err: unknown): boolean {
  assert.ok(err instanceof SegmentError, `expected a SegmentError, got ${String(err)}`);
  assert.equal(err.code, 'ERR_SEGMENT_CLOSED');
  assert.equal(err.name, 'SegmentError');
  assert.match(err.message, /segment is closed/);
  return true;
}

const badLengths: [unknown, typeof TypeError | typeof RangeError][] = [
  [-1, RangeError],
  [1.5, RangeError],
  [NaN, RangeError],
  [Infinity, RangeError],
  [-Infinity, RangeError],
  [2 ** 53, RangeError],
  [2 ** 64, RangeError],
  ['16', TypeError],
  [16n, TypeError],
  [{}, TypeError],
  [{ valueOf: () => 16 }, TypeError],
  [null, TypeError],
  [[16], TypeError],
];

/** The large-segment tests need a runtime that limits ArrayBuffers (Node.js before 22, Bun). */
const viewLimitSkip = maxViewLength > 2 ** 33 && 'this runtime takes ArrayBuffers of any length';

for (const b of backends) {
  describe(`Segment on the ${b.name} backend`, () => {
    let backend: Backend;
    let page = 4096;
    before(() => {
      backend = useBackend(b);
      page = backend.pageSize;
    });

    describe('create()', () => {
      it('gives zero-filled memory of exactly the requested length, not rounded to pages', () => {
        for (const n of [1, 5, page - 1, page, page + 1, 3 * page + 5]) {
          using seg = Segment.create(n);
          assert.equal(seg.byteLength, n);
          assert.equal(seg.buffer.byteLength, n);
          assert.equal(seg.stats().byteLength, n);
          assertBytes(bytesOf(seg), new Uint8Array(n), `create(${n})`);
        }
      });

      it('gives an empty segment for 0 that clones, restores and closes', () => {
        const seg = Segment.create(0);
        assert.equal(seg.byteLength, 0);
        assert.equal(seg.buffer.byteLength, 0);
        assert.equal(seg.view().byteLength, 0);
        assert.equal(seg.view(0, 0).byteLength, 0);
        assert.equal(typeof seg.address, 'bigint');
        const copy = seg.clone();
        assert.equal(copy.byteLength, 0);
        assert.equal(copy.buffer.byteLength, 0);
        seg.restore(copy);
        copy.restore(seg);
        seg.restore(seg);
        const st = seg.stats();
        assert.equal(st.byteLength, 0);
        assert.equal(st.privateBytes, 0);
        assert.equal(st.sharedBytes, 0);
        seg.close();
        assert.equal(seg.closed, true);
        assert.equal(copy.closed, false);
        assert.equal(copy.buffer.byteLength, 0);
        copy.close();
        copy.close();
        assert.throws(() => seg.clone(), isClosedError);
      });

      it('makes segments that are writable across every page, up to the last byte', () => {
        const n = 3 * page + 5;
        using seg = Segment.create(n);
        const want = pattern(n, 1);
        bytesOf(seg).set(want);
        assertBytes(new Uint8Array(seg.view()), want);
        assert.equal(new Uint8Array(seg.buffer)[n - 1], want[n - 1]);
      });

      it('rejects lengths that are not safe integers >= 0 with TypeError or RangeError', () => {
        for (const [value, type] of badLengths) {
          assert.throws(() => Segment.create(value as number), type, `create(${String(value)})`);
        }
        assert.throws(() => (Segment.create as () => Segment)(), TypeError);
      });

      it('throws SegmentError ENOMEM for a size no machine can map, and the process goes on', () => {
        for (const n of [2 ** 52, Number.MAX_SAFE_INTEGER - 4095]) {
          assert.throws(
            () => Segment.create(n),
            (err: unknown) => {
              assert.ok(err instanceof SegmentError, `expected a SegmentError, got ${String(err)}`);
              assert.equal(err.code, 'ENOMEM');
              return true;
            },
          );
        }
        using seg = Segment.create(page);
        bytesOf(seg)[0] = 1;
        assert.equal(bytesOf(seg)[0], 1);
      });
    });

    describe('from()', () => {
      it('copies the bytes of an ArrayBuffer, which stays independent', () => {
        const src = pattern(2 * page + 3, 2);
        const ab = src.slice().buffer;
        using seg = Segment.from(ab);
        assert.equal(seg.byteLength, src.byteLength);
        assertBytes(bytesOf(seg), src);
        new Uint8Array(ab).fill(0);
        assertBytes(bytesOf(seg), src);
        bytesOf(seg).fill(9);
        assert.equal(new Uint8Array(ab)[5], 0);
      });

      it('copies only the viewed bytes of a typed array with an offset', () => {
        const all = pattern(page * 2, 3);
        const u16 = new Uint16Array(all.buffer, 6, 1000);
        using seg = Segment.from(u16);
        assert.equal(seg.byteLength, 2000);
        assertBytes(bytesOf(seg), all.subarray(6, 2006));
      });

      it('copies only the viewed bytes of a DataView', () => {
        const all = pattern(300, 4);
        using seg = Segment.from(new DataView(all.buffer, 17, 200));
        assertBytes(bytesOf(seg), all.subarray(17, 217));
      });

      it('copies a SharedArrayBuffer', () => {
        const sab = new SharedArrayBuffer(page + 1);
        new Uint8Array(sab).set(pattern(page + 1, 5));
        using seg = Segment.from(sab as unknown as ArrayBuffer);
        assertBytes(bytesOf(seg), pattern(page + 1, 5));
      });

      it('gives an empty segment for an empty source', () => {
        using seg = Segment.from(new Uint8Array(0));
        assert.equal(seg.byteLength, 0);
        using seg2 = Segment.from(new ArrayBuffer(0));
        assert.equal(seg2.byteLength, 0);
      });

      it('rejects sources that are not ArrayBuffers or views with TypeError', () => {
        for (const bad of [undefined, null, 5, 'abc', {}, [1, 2, 3], { byteLength: 3 }, 1n]) {
          assert.throws(() => Segment.from(bad as ArrayBuffer), TypeError, `from(${String(bad)})`);
        }
      });
    });

    describe('buffer', () => {
      it('is the same object on every read, covering the whole segment', () => {
        using seg = Segment.create(2 * page + 1);
        const a = seg.buffer;
        assert.equal(seg.buffer, a);
        assert.equal(a.byteLength, 2 * page + 1);
        seg.clone().close();
        assert.equal(seg.buffer, a);
      });

      it('aliases the segment: writes through it are seen by later views and reads', () => {
        using seg = Segment.create(2 * page);
        new Uint8Array(seg.buffer).set([1, 2, 3], page - 1);
        assert.deepEqual([...new Uint8Array(seg.view(page - 1, 3))], [1, 2, 3]);
        assert.deepEqual([...new Uint8Array(seg.buffer, page - 1, 3)], [1, 2, 3]);
      });
    });

    describe('segments larger than one ArrayBuffer may be', () => {
      it('throw RangeError naming view() on reading buffer, and hand out views of any part', { skip: viewLimitSkip }, () => {
        const n = backend.maxViewLength + page + 3;
        using seg = Segment.create(n);
        assert.throws(() => seg.buffer, (err: unknown) => err instanceof RangeError && /view\(/.test(err.message));
        assert.throws(() => seg.view(), RangeError);
        assert.throws(() => seg.view(0, backend.maxViewLength + 1), RangeError);
        const tail = new Uint8Array(seg.view(n - 10));
        assert.equal(tail.length, 10);
        tail.set([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
        assert.deepEqual([...new Uint8Array(seg.view(n - 4, 4))], [7, 8, 9, 10]);
        const head = new Uint8Array(seg.view(0, backend.maxViewLength));
        assert.equal(head.length, backend.maxViewLength);
        head[head.length - 1] = 42;
        assert.equal(new Uint8Array(seg.view(backend.maxViewLength - 1, 1))[0], 42);
        if (b.name.startsWith('linux')) {
          // A clone costs nothing here: check the tail went along.
          using c = seg.clone();
          assert.deepEqual([...new Uint8Array(c.view(n - 4, 4))], [7, 8, 9, 10]);
          new Uint8Array(c.view(n - 1, 1))[0] = 0;
          assert.equal(new Uint8Array(seg.view(n - 1, 1))[0], 10);
        }
      });
    });

    describe('view()', () => {
      it('defaults to the whole segment, and to the rest of it after an offset', () => {
        using seg = Segment.create(3 * page + 5);
        assert.equal(seg.view().byteLength, 3 * page + 5);
        assert.equal(seg.view(10).byteLength, 3 * page - 5);
        assert.equal(seg.view(3 * page + 5).byteLength, 0);
        assert.equal(seg.view(7, 0).byteLength, 0);
      });

      it('aliases the segment at any offset, page-aligned or not', () => {
        const n = 3 * page + 5;
        using seg = Segment.create(n);
        const all = bytesOf(seg);
        for (const off of [0, 1, 7, page - 1, page, page + 1, 2 * page - 3, n - 1]) {
          const len = Math.min(9, n - off);
          const v = new Uint8Array(seg.view(off, len));
          assert.equal(v.byteLength, len);
          for (let i = 0; i < len; i++) v[i] = (off + i) & 0xff;
          for (let i = 0; i < len; i++) assert.equal(all[off + i], (off + i) & 0xff, `view(${off}) byte ${i}`);
          all[off] = 0xee;
          assert.equal(v[0], 0xee, `a write through buffer shows in view(${off})`);
        }
      });

      it('aliases other views of the same bytes', () => {
        using seg = Segment.create(2 * page);
        const a = new Uint8Array(seg.view(page - 2, 8));
        const b = new Uint8Array(seg.view(page, 8));
        a[2] = 42;
        assert.equal(b[0], 42);
        b[1] = 43;
        assert.equal(a[3], 43);
      });

      it('rejects ranges outside the segment with RangeError', () => {
        using seg = Segment.create(page + 5);
        const n = page + 5;
        assert.throws(() => seg.view(n + 1), RangeError);
        assert.throws(() => seg.view(0, n + 1), RangeError);
        assert.throws(() => seg.view(10, n - 9), RangeError);
        assert.throws(() => seg.view(n, 1), RangeError);
        assert.throws(() => seg.view(2 ** 52), RangeError);
        assert.throws(() => seg.view(0, Number.MAX_SAFE_INTEGER), RangeError);
        assert.throws(() => seg.view(Number.MAX_SAFE_INTEGER, Number.MAX_SAFE_INTEGER), RangeError);
      });

      it('rejects offsets and lengths that are not safe integers >= 0 with TypeError or RangeError', () => {
        using seg = Segment.create(page);
        for (const [value, type] of badLengths) {
          if (value === null) continue; // null is not undefined: checked below
          assert.throws(() => seg.view(value as number), type, `view(${String(value)})`);
          assert.throws(() => seg.view(0, value as number), type, `view(0, ${String(value)})`);
        }
        assert.throws(() => seg.view(null as unknown as number), TypeError);
        assert.throws(() => seg.view(0, null as unknown as number), TypeError);
      });
    });

    describe('address', () => {
      it('is a bigint that stays the same across clone() and restore()', () => {
        using seg = Segment.create(2 * page);
        const at = seg.address;
        assert.equal(typeof at, 'bigint');
        bytesOf(seg)[0] = 1;
        using other = seg.clone();
        assert.equal(typeof other.address, 'bigint');
        assert.equal(seg.address, at);
        bytesOf(other)[page] = 2;
        seg.restore(other);
        assert.equal(seg.address, at);
        using unrelated = Segment.create(2 * page);
        seg.restore(unrelated);
        assert.equal(seg.address, at);
      });

      it('is page-aligned and distinct for every live segment when the backend hands out real addresses', (t) => {
        using seg = Segment.create(page * 2);
        if (seg.address === 0n && !b.name.startsWith('linux')) {
          t.skip('this backend keeps segments in plain ArrayBuffers, with no address');
          return;
        }
        using c = seg.clone();
        using d = Segment.create(1);
        for (const s of [seg, c, d]) {
          assert.notEqual(s.address, 0n);
          assert.equal(s.address % BigInt(page), 0n);
        }
        assert.equal(new Set([seg.address, c.address, d.address]).size, 3);
      });
    });

    describe('clone()', () => {
      it('copies the current contents, including a partial last page', () => {
        const n = 3 * page + 5;
        using seg = Segment.create(n);
        const want = pattern(n, 6);
        bytesOf(seg).set(want);
        using c = seg.clone();
        assert.equal(c.byteLength, n);
        assertBytes(bytesOf(c), want);
      });

      it('leaves the origin unchanged after a write to the clone', () => {
        using seg = Segment.create(4 * page);
        bytesOf(seg).set(pattern(4 * page, 7));
        const before = snapshot(seg);
        using c = seg.clone();
        const v = bytesOf(c);
        v[0] = ~v[0]! & 0xff;
        v.fill(0x5a, page + 10, 3 * page - 10);
        v[4 * page - 1] = 1;
        assertBytes(bytesOf(seg), before, 'origin');
        assert.equal(v[page + 10], 0x5a);
        assert.equal(v[0], ~before[0]! & 0xff);
      });

      it('leaves the clone unchanged after a write to the origin', () => {
        using seg = Segment.create(4 * page);
        bytesOf(seg).set(pattern(4 * page, 8));
        const before = snapshot(seg);
        using c = seg.clone();
        bytesOf(seg).fill(1);
        assertBytes(bytesOf(c), before, 'clone');
        assert.equal(bytesOf(seg)[3 * page], 1);
      });

      it('keeps the buffer and views taken before clone() aliasing the origin', () => {
        using seg = Segment.create(2 * page);
        const buf = new Uint8Array(seg.buffer);
        const part = new Uint8Array(seg.view(page - 1, 2));
        buf[page - 1] = 1;
        using c = seg.clone();
        buf[page] = 2;
        part[0] = 3;
        assert.equal(buf[page - 1], 3);
        assert.equal(part[1], 2);
        assert.equal(bytesOf(c)[page - 1], 1);
        assert.equal(bytesOf(c)[page], 0);
      });

      it('works on clones of clones, each level keeping its own writes', () => {
        const n = 8 * page + 100;
        const chain: Segment[] = [Segment.create(n)];
        const models: Uint8Array[] = [new Uint8Array(n)];
        try {
          for (let level = 0; level < 10; level++) {
            const top = chain[chain.length - 1]!;
            const model = models[models.length - 1]!;
            // Write one page-straddling run per level, then clone.
            const off = ((level * 3 + 1) * page) % n - 3;
            const run = pattern(7, level + 10);
            bytesOf(top).set(run, off);
            model.set(run, off);
            chain.push(top.clone());
            models.push(model.slice());
          }
          // Write into every level after the chain exists.
          chain.forEach((seg, i) => {
            bytesOf(seg)[n - 1 - i] = 200 + i;
            models[i]![n - 1 - i] = 200 + i;
          });
          chain.forEach((seg, i) => assertBytes(bytesOf(seg), models[i]!, `level ${i}`));
        } finally {
          for (const s of chain) s.close();
        }
      });

      it('clones the origin many times, every sibling isolated from the others', () => {
        const n = 5 * page + 1;
        using seg = Segment.create(n);
        const model = pattern(n, 11);
        bytesOf(seg).set(model);
        const sibs: Segment[] = [];
        const sibModels: Uint8Array[] = [];
        try {
          for (let i = 0; i < 24; i++) {
            // Write the origin between clones, sometimes.
            if (i % 3 === 0) {
              const at = (i * 977) % n;
              bytesOf(seg)[at] = i;
              model[at] = i;
            }
            sibs.push(seg.clone());
            sibModels.push(model.slice());
          }
          sibs.forEach((s, i) => {
            const at = (i * page + i) % n;
            bytesOf(s)[at] = 255 - i;
            sibModels[i]![at] = 255 - i;
          });
          assertBytes(bytesOf(seg), model, 'origin');
          sibs.forEach((s, i) => assertBytes(bytesOf(s), sibModels[i]!, `sibling ${i}`));
        } finally {
          for (const s of sibs) s.close();
        }
      });

      it('leaves both sides writable everywhere after repeated clones with nothing written between', () => {
        using seg = Segment.create(3 * page);
        using a = seg.clone();
        using b2 = seg.clone();
        using c = a.clone();
        for (const [i, s] of [seg, a, b2, c].entries()) bytesOf(s).fill(i + 1);
        for (const [i, s] of [seg, a, b2, c].entries()) assertBytes(bytesOf(s), new Uint8Array(3 * page).fill(i + 1), `segment ${i}`);
      });
    });

    describe('restore()', () => {
      it('makes the contents equal to the source, which stays unchanged', () => {
        const n = 4 * page + 9;
        using seg = Segment.create(n);
        using src = Segment.create(n);
        bytesOf(seg).set(pattern(n, 12));
        bytesOf(src).set(pattern(n, 13));
        seg.restore(src);
        assertBytes(bytesOf(seg), pattern(n, 13), 'target');
        assertBytes(bytesOf(src), pattern(n, 13), 'source');
      });

      it('leaves the two independent afterwards, in both directions', () => {
        const n = 3 * page;
        using seg = Segment.create(n);
        using src = Segment.create(n);
        bytesOf(src).set(pattern(n, 14));
        seg.restore(src);
        bytesOf(seg).fill(1, 0, page + 1);
        assertBytes(bytesOf(src), pattern(n, 14), 'source after target write');
        bytesOf(src).fill(2, 2 * page);
        const want = pattern(n, 14);
        want.fill(1, 0, page + 1);
        assertBytes(bytesOf(seg), want, 'target after source write');
      });

      it('rolls a segment back to a clone of itself taken earlier', () => {
        const n = 6 * page + 7;
        using seg = Segment.create(n);
        bytesOf(seg).set(pattern(n, 15));
        using snap = seg.clone();
        bytesOf(seg).fill(0, page, 3 * page);
        bytesOf(seg)[n - 1] = 0;
        seg.restore(snap);
        assertBytes(bytesOf(seg), pattern(n, 15));
        assertBytes(bytesOf(snap), pattern(n, 15));
      });

      it('works between any two segments: origin from clone, clone from origin, siblings, unrelated', () => {
        const n = 3 * page + 1;
        using o = Segment.create(n);
        bytesOf(o).set(pattern(n, 16));
        using c1 = o.clone();
        using c2 = o.clone();
        using u = Segment.from(pattern(n, 17));
        bytesOf(c1).fill(3, page);
        const c1Want = snapshot(c1);
        o.restore(c1);
        assertBytes(bytesOf(o), c1Want, 'origin from clone');
        bytesOf(o)[0] = 99;
        c2.restore(o);
        const oWant = snapshot(o);
        assertBytes(bytesOf(c2), oWant, 'clone from origin');
        c1.restore(c2);
        assertBytes(bytesOf(c1), oWant, 'sibling from sibling');
        c2.restore(u);
        assertBytes(bytesOf(c2), pattern(n, 17), 'clone from unrelated');
        u.restore(c1);
        assertBytes(bytesOf(u), oWant, 'unrelated from clone');
        assertBytes(bytesOf(o), oWant, 'origin unchanged');
      });

      it('does nothing for restore(this)', () => {
        using seg = Segment.create(2 * page);
        bytesOf(seg).set(pattern(2 * page, 18));
        using c = seg.clone();
        bytesOf(seg)[5] = 0;
        const want = snapshot(seg);
        seg.restore(seg);
        assertBytes(bytesOf(seg), want);
        c.restore(c);
        assertBytes(bytesOf(c), pattern(2 * page, 18));
      });

      it('throws RangeError for a source of another byteLength, even in the same pages', () => {
        using seg = Segment.create(page);
        bytesOf(seg)[0] = 1;
        using short = Segment.create(page - 1);
        using long = Segment.create(page + 1);
        using empty = Segment.create(0);
        for (const s of [short, long, empty]) assert.throws(() => seg.restore(s), RangeError);
        assert.throws(() => empty.restore(seg), RangeError);
        assert.equal(bytesOf(seg)[0], 1);
      });

      it('throws TypeError for a source that is not a segment', () => {
        using seg = Segment.create(page);
        for (const bad of [undefined, null, {}, new Uint8Array(page), new ArrayBuffer(page), { byteLength: page }]) {
          assert.throws(() => seg.restore(bad as unknown as Segment), TypeError);
        }
      });

      it('throws ERR_SEGMENT_CLOSED for a closed source and leaves the target as it was', () => {
        using seg = Segment.create(page);
        bytesOf(seg).fill(4);
        const src = Segment.create(page);
        src.close();
        assert.throws(() => seg.restore(src), isClosedError);
        const src2 = seg.clone();
        src2.close();
        assert.throws(() => seg.restore(src2), isClosedError);
        assertBytes(bytesOf(seg), new Uint8Array(page).fill(4));
      });

      it('keeps the buffer and views valid, reading the restored contents', () => {
        const n = 2 * page + 3;
        using seg = Segment.create(n);
        const buf = seg.buffer;
        const part = new Uint8Array(seg.view(page - 1, 4));
        using src = Segment.from(pattern(n, 19));
        seg.restore(src);
        assert.equal(seg.buffer, buf);
        assert.equal(buf.byteLength, n);
        assertBytes(new Uint8Array(buf), pattern(n, 19));
        assertBytes(part, pattern(n, 19).subarray(page - 1, page + 3));
        part[0] = 0xab;
        assert.equal(new Uint8Array(buf)[page - 1], 0xab);
        assert.equal(bytesOf(src)[page - 1], pattern(n, 19)[page - 1]);
      });

      it('rolls back again and again in a loop without drifting', () => {
        const n = 16 * page + 11;
        using seg = Segment.create(n);
        bytesOf(seg).set(pattern(n, 20));
        using snap = seg.clone();
        const want = pattern(n, 20);
        const v = bytesOf(seg);
        for (let round = 0; round < 60; round++) {
          // A different scatter of writes each round, some straddling pages.
          for (let k = 0; k <= round % 5; k++) {
            const at = (round * 7919 + k * 4099) % (n - 8);
            v.fill(round & 0xff, at, at + 8);
          }
          if (round % 10 === 0) v.fill(0xff);
          seg.restore(snap);
          assertBytes(v, want, `round ${round}`);
        }
        assertBytes(bytesOf(snap), want, 'snapshot');
      });

      it('leaves the target intact after the source is closed', () => {
        const n = 3 * page;
        using seg = Segment.create(n);
        const src = Segment.from(pattern(n, 21));
        seg.restore(src);
        src.close();
        assertBytes(bytesOf(seg), pattern(n, 21));
        bytesOf(seg).fill(1);
        assertBytes(bytesOf(seg), new Uint8Array(n).fill(1));
      });
    });

    describe('stats()', () => {
      it('reports the byteLength and non-negative whole-page figures', () => {
        const n = 3 * page + 5;
        using seg = Segment.create(n);
        bytesOf(seg).fill(1, 0, page);
        using c = seg.clone();
        bytesOf(c)[2 * page] = 1;
        for (const s of [seg, c]) {
          const st = s.stats();
          assert.deepEqual(Object.keys(st).sort(), ['byteLength', 'mappings', 'privateBytes', 'sharedBytes']);
          assert.equal(st.byteLength, n);
          for (const k of ['privateBytes', 'sharedBytes', 'mappings'] as const) {
            assert.ok(Number.isSafeInteger(st[k]) && st[k] >= 0, `${k} = ${st[k]}`);
          }
          assert.equal(st.privateBytes % page, 0);
          assert.equal(st.sharedBytes % page, 0);
          assert.ok(st.privateBytes + st.sharedBytes <= 4 * page, `private + shared = ${st.privateBytes + st.sharedBytes}`);
        }
        // The page c wrote is its own (a copy-on-write copy, or all of a copy),
        // and seg holds the page it wrote, shared with c or its own.
        assert.ok(c.stats().privateBytes >= page, `c: ${JSON.stringify(c.stats())}`);
        assert.ok(seg.stats().privateBytes + seg.stats().sharedBytes >= page, `seg: ${JSON.stringify(seg.stats())}`);
      });

      it('counts the pages written since a clone as private, and the rest as shared, where memory is shared', () => {
        const n = 8 * page;
        using seg = Segment.create(n);
        bytesOf(seg).fill(1);
        using c = seg.clone();
        bytesOf(c).fill(2, page, 4 * page);
        const st = c.stats();
        if (backend.name === 'copy') {
          // Every byte of a copy is its own.
          assert.deepEqual(st, { byteLength: n, privateBytes: n, sharedBytes: 0, mappings: 0 });
          return;
        }
        assert.equal(st.privateBytes, 3 * page, JSON.stringify(st));
        assert.equal(st.sharedBytes, 5 * page, JSON.stringify(st));
        assert.equal(seg.stats().privateBytes, 0, JSON.stringify(seg.stats()));
        assert.equal(seg.stats().sharedBytes, 8 * page, JSON.stringify(seg.stats()));
      });
    });

    describe('close()', () => {
      it('is idempotent and sets closed', () => {
        const seg = Segment.create(page);
        assert.equal(seg.closed, false);
        seg.close();
        assert.equal(seg.closed, true);
        seg.close();
        seg[Symbol.dispose]();
        assert.equal(seg.closed, true);
      });

      it('detaches the buffer and every view, so stale typed arrays read as empty', () => {
        const n = 2 * page + 1;
        const seg = Segment.create(n);
        const buf = seg.buffer;
        const whole = new Uint8Array(buf);
        const v1 = seg.view(1, page);
        const v1u32 = new Uint32Array(v1, 4, 4);
        const v2 = new Uint8Array(seg.view(page));
        const dv = new DataView(seg.view(0, 16));
        whole[0] = 1;
        seg.close();
        assert.equal(buf.byteLength, 0);
        assert.equal(v1.byteLength, 0);
        assert.equal(whole.length, 0);
        assert.equal(v1u32.length, 0);
        assert.equal(v2.length, 0);
        assert.equal(v2[0], undefined);
        v2[0] = 5; // ignored, not a crash
        assert.equal(v2[0], undefined);
        assert.throws(() => dv.getUint8(0), TypeError);
      });

      it('detaches every view still reachable, however many were handed out', () => {
        const seg = Segment.create(4 * page);
        const kept: Uint8Array[] = [];
        for (let i = 0; i < 3000; i++) {
          const v = new Uint8Array(seg.view(i % (3 * page), page));
          if (i % 7 === 0) kept.push(v);
        }
        seg.close();
        for (const [i, v] of kept.entries()) assert.equal(v.length, 0, `kept view ${i}`);
      });

      it('makes every method but close() throw SegmentError ERR_SEGMENT_CLOSED', () => {
        const seg = Segment.create(page);
        using other = Segment.create(page);
        seg.close();
        assert.throws(() => seg.buffer, isClosedError);
        assert.throws(() => seg.address, isClosedError);
        assert.throws(() => seg.view(), isClosedError);
        assert.throws(() => seg.view(0, 1), isClosedError);
        assert.throws(() => seg.clone(), isClosedError);
        assert.throws(() => seg.restore(other), isClosedError);
        assert.throws(() => seg.restore(seg), isClosedError);
        assert.throws(() => seg.stats(), isClosedError);
        assert.equal(seg.byteLength, page);
        const empty = Segment.create(0);
        empty.close();
        assert.throws(() => empty.buffer, isClosedError);
        assert.throws(() => empty.clone(), isClosedError);
      });

      it('closes through Symbol.dispose and using', () => {
        let kept: Segment | undefined;
        {
          using seg = Segment.create(page);
          kept = seg;
          assert.equal(seg.closed, false);
        }
        assert.equal(kept.closed, true);
        const seg = Segment.create(page);
        seg[Symbol.dispose]();
        assert.equal(seg.closed, true);
      });

      it('leaves clones readable and writable after their origin is closed', () => {
        const n = 4 * page + 2;
        const o = Segment.create(n);
        bytesOf(o).set(pattern(n, 22));
        using c1 = o.clone();
        bytesOf(o)[0] = 0;
        using c2 = o.clone();
        const c2Want = snapshot(c2);
        const oView = new Uint8Array(o.view(page, 4));
        o.close();
        assert.equal(oView.length, 0);
        assertBytes(bytesOf(c1), pattern(n, 22), 'first clone');
        assertBytes(bytesOf(c2), c2Want, 'second clone');
        bytesOf(c1).fill(1, 0, 2 * page);
        using c3 = c1.clone();
        c2.restore(c3);
        const want = pattern(n, 22);
        want.fill(1, 0, 2 * page);
        for (const s of [c1, c2, c3]) assertBytes(bytesOf(s), want);
      });

      it('leaves the rest of a chain intact when a middle link is closed', () => {
        const n = 3 * page;
        using a = Segment.from(pattern(n, 23));
        const b2 = a.clone();
        bytesOf(b2).fill(2, page, 2 * page);
        using c = b2.clone();
        const want = snapshot(b2);
        b2.close();
        assertBytes(bytesOf(c), want, 'grandchild');
        assertBytes(bytesOf(a), pattern(n, 23), 'origin');
        bytesOf(c).fill(3);
        assertBytes(bytesOf(a), pattern(n, 23), 'origin after grandchild write');
      });

      it('closes many clones in any order, the survivors unaffected', () => {
        const n = 2 * page + 1;
        const all: Segment[] = [Segment.from(pattern(n, 24))];
        const models: Uint8Array[] = [pattern(n, 24)];
        for (let i = 1; i < 16; i++) {
          const from = (i * 5) % all.length;
          all.push(all[from]!.clone());
          models.push(models[from]!.slice());
          bytesOf(all[i]!)[(i * 311) % n] = i;
          models[i]![(i * 311) % n] = i;
        }
        const order = [7, 0, 15, 3, 11, 1, 8, 14, 2, 9, 4, 13, 5, 10, 6, 12];
        for (const [k, idx] of order.entries()) {
          all[idx]!.close();
          for (const j of order.slice(k + 1)) assertBytes(bytesOf(all[j]!), models[j]!, `segment ${j} after closing ${idx}`);
        }
      });
    });
  });
}
