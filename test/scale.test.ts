// Scale: mapping budget, bounded run lists, compaction, sparse memory and
// segments beyond 4 GiB. Behaviour only: no test here measures time.
import { describe, it } from 'node:test';
import * as assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { LinuxBackend } from '../platform/linux/index.ts';
import { Segment, SegmentError, backend } from '../src/index.ts';
import { assertBytes } from './backends.ts';
import { anonymousIn, kbField, layerMapsCount, linuxOnly, mapsLines, processMemory } from './helpers/proc.ts';
import { rng } from './helpers/model.ts';
import { withLinux } from './helpers/linux.ts';

const PAGE = 4096;
const GiB = 2 ** 30;

/**
 * A chain of `links` clones of a segment of `pages` pages, each clone of the
 * one before with one page written at random; `onLink` sees each link right
 * after it was cloned. Checks every link's bytes at the end; returns them all.
 */
function growChain(pages: number, links: number, onLink: (link: Segment, i: number) => void): Segment[] {
  const random = rng(11);
  const chain = [Segment.create(pages * PAGE)];
  new Uint8Array(chain[0]!.buffer).fill(1);
  const models = [new Uint8Array(pages * PAGE).fill(1)];
  for (let i = 0; i < links; i++) {
    const next = chain[chain.length - 1]!.clone();
    onLink(chain[chain.length - 1]!, i);
    const m = models[models.length - 1]!.slice();
    const at = Math.floor(random() * pages) * PAGE;
    new Uint8Array(next.buffer)[at] = (i % 250) + 2;
    m[at] = (i % 250) + 2;
    chain.push(next);
    models.push(m);
  }
  for (const [i, s] of chain.entries()) assertBytes(new Uint8Array(s.buffer), models[i]!, `link ${i}`);
  return chain;
}

describe('mapping budget', { skip: linuxOnly }, () => {
  it('a 300-deep chain with scattered writes stays within the budget, reads right, and never copies the segment over and over', () => {
    // A budget of about 10 mappings a segment: compaction has to run, and
    // every one of the 300 clones fits. (At 2,000 the engine refuses the
    // 274th clone with ENOMEM: it will not copy pages other links share.)
    withLinux({ mapBudget: 3000 }, (b) => {
      const pages = 512;
      const random = rng(7);
      const first = Segment.create(pages * PAGE);
      const model = new Uint8Array(pages * PAGE);
      const chain: { seg: Segment; model: Uint8Array }[] = [{ seg: first, model }];
      let peak = 0;
      let peakLayerBytes = 0;
      for (let i = 0; i < 300; i++) {
        const last = chain[chain.length - 1]!;
        const next = last.seg.clone();
        const m = last.model.slice();
        const bytes = new Uint8Array(next.buffer);
        for (let k = 0; k < 3; k++) {
          const at = Math.floor(random() * pages) * PAGE + (i % PAGE);
          bytes[at] = (i % 250) + 1;
          m[at] = (i % 250) + 1;
        }
        chain.push({ seg: next, model: m });
        peak = Math.max(peak, b.memory().mappings);
        peakLayerBytes = Math.max(peakLayerBytes, b.memory().layerBytes);
      }
      assert.equal(chain.length, 301);
      assert.ok(peak <= b.mapBudget, `peak ${peak} mappings over a budget of ${b.mapBudget}`);
      // Even at a budget this tight, compaction copies less than copying
      // each segment would.
      const copies = chain.length * pages * PAGE;
      assert.ok(peakLayerBytes < copies / 1.5, `layers held ${peakLayerBytes} bytes, copies would take ${copies}`);
      for (const [i, { seg, model: m }] of chain.entries()) assertBytes(new Uint8Array(seg.buffer), m, `link ${i}`);
      for (const { seg } of chain) seg.close();
      assert.equal(b.memory().mappings, 0);
      assert.equal(b.layerCount(), 0);
    });
  });

  it('a chain of kept snapshots, one page written at random per link, is flattened at its tip, not link by link', () => {
    // Under a budget of B mappings, N segments that all differ by scattered
    // pages need about N²·S/B bytes of copies; forcing old links flat one by
    // one (the budget's last resort) costs about a segment per link. Without
    // pinned pages: each link's written page goes to a new run, so the
    // mapping counts show where compaction flattened (next test: with them).
    withLinux({ mapBudget: 6000, privatize: false }, (b) => {
      const pages = 1024;
      // Each link's mappings once it has been cloned (it is frozen then, and
      // stays as it is unless something compacts it later).
      const frozen: number[] = [];
      let peakLayerBytes = 0;
      const chain = growChain(pages, 300, (link) => {
        frozen.push(link.stats().mappings);
        peakLayerBytes = Math.max(peakLayerBytes, b.memory().layerBytes);
      });
      // Where: links flattened as the tip (one mapping when cloned), their
      // clones starting again from one run, a few times along the chain; and
      // no link compacted after it was left behind.
      const flattened = frozen.flatMap((n, i) => (n === 1 && i > 0 ? [i] : []));
      assert.ok(flattened.length >= 2 && flattened.length <= 30, `flattened at links ${flattened.join(', ')}`);
      for (const i of flattened) assert.ok(chain[i + 1]!.stats().mappings <= 3, `link ${i + 1} did not inherit link ${i}'s single run`);
      for (let i = 0; i < frozen.length; i++) {
        assert.equal(chain[i]!.stats().mappings, frozen[i], `link ${i} was compacted after it was left behind`);
      }
      const copies = chain.length * pages * PAGE;
      assert.ok(peakLayerBytes < copies / 8, `layers held ${peakLayerBytes} bytes, copies would take ${copies}`);
      assert.ok(b.memory().mappings <= b.mapBudget);
      for (const s of chain) s.close();
    });
  });

  it('a chain of kept snapshots, one page written at random per link, with pinned pages: within the budget, a fraction of the copies in memory, every link right', () => {
    withLinux({ mapBudget: 6000 }, (b) => {
      const pages = 1024;
      const chain = growChain(pages, 300, (_, i) => {
        assert.ok(b.memory().mappings <= b.mapBudget, `link ${i}: ${b.memory().mappings} mappings`);
      });
      // What memfork holds: its layers, and the segments' private pages
      // (written, and pinned copies).
      let held = b.memory().layerBytes;
      for (const s of chain) held += anonymousIn(s.address, s.byteLength);
      const copies = chain.length * pages * PAGE;
      assert.ok(held < copies / 8, `memfork holds ${held} bytes, copies would take ${copies}`);
      for (const s of chain) s.close();
    });
  });

  it('fails with ENOMEM, data intact, when compaction cannot make room', () => {
    withLinux({ mapBudget: 16 }, () => {
      const segs: Segment[] = [];
      const pages = 8;
      // Each segment: one written page in the middle of a clone = 3 runs that
      // no compaction can shrink below 3.
      const origin = Segment.create(pages * PAGE);
      new Uint8Array(origin.buffer).fill(1);
      let error: unknown;
      try {
        for (let i = 0; i < 20; i++) {
          const c = origin.clone();
          new Uint8Array(c.buffer)[3 * PAGE] = i + 2;
          segs.push(c);
          // A clone is mapped when its memory is first asked for: ask now.
          const d = c.clone();
          try {
            void d.buffer;
          } catch (err) {
            d.close();
            throw err;
          }
          segs.push(d);
        }
      } catch (err) {
        error = err;
      }
      assert.ok(error instanceof SegmentError, `expected SegmentError, got ${String(error)}`);
      assert.equal(error.code, 'ENOMEM');
      assert.equal(error.syscall, 'mmap');
      assert.ok(segs.length > 0);
      for (let i = 0; i < segs.length; i++) {
        const bytes = new Uint8Array(segs[i]!.buffer);
        assert.equal(bytes[3 * PAGE], Math.floor(i / 2) + 2);
        assert.equal(bytes[0], 1);
      }
      assert.ok(new Uint8Array(origin.buffer).every((v) => v === 1));
      // Closing segments gives the budget back.
      for (const s of segs) s.close();
      const again = origin.clone();
      assert.equal(new Uint8Array(again.buffer)[5], 1);
      again.close();
      origin.close();
    });
  });
});

describe('bounded run lists', { skip: linuxOnly }, () => {
  it('keeps a segment under maxRuns however scattered its writes', () => {
    withLinux({ maxRuns: 32 }, () => {
      const pages = 2048;
      const seg = Segment.create(pages * PAGE);
      const model = new Uint8Array(pages * PAGE);
      const bytes = new Uint8Array(seg.buffer);
      const random = rng(11);
      const keep: { seg: Segment; model: Uint8Array }[] = [];
      for (let round = 0; round < 20; round++) {
        for (let k = 0; k < 40; k++) {
          const at = Math.floor(random() * pages) * PAGE;
          bytes[at] = round + 1;
          model[at] = round + 1;
        }
        keep.push({ seg: seg.clone(), model: model.slice() });
        assert.ok(seg.stats().mappings <= 32, `round ${round}: ${seg.stats().mappings} mappings`);
      }
      assertBytes(new Uint8Array(seg.buffer), model, 'the segment');
      // Every snapshot still reads what the segment held when it was taken.
      for (const [i, k] of keep.entries()) assertBytes(new Uint8Array(k.seg.buffer), k.model, `snapshot ${i}`);
      for (const k of keep) k.seg.close();
      seg.close();
    });
  });

  it('a contiguous write after a scattered history leaves few runs once compaction has paid off', () => {
    // Without sharing the layer again when the clones are gone, which would
    // leave no history to compact.
    withLinux({ reshare: false }, () => {
      const pages = 1024;
      const seg = Segment.create(pages * PAGE);
      const bytes = new Uint8Array(seg.buffer);
      bytes.fill(5);
      const random = rng(3);
      seg.clone().close();
      for (let k = 0; k < 100; k++) bytes[Math.floor(random() * pages) * PAGE] = 6;
      // Cloning a fragmented segment over and over (snapshots taken and
      // dropped) runs up a debt that compaction then pays off.
      for (let i = 0; i < 200; i++) seg.clone().close();
      const before = seg.stats().mappings;
      bytes.fill(7, 10 * PAGE, 20 * PAGE);
      const after = seg.clone();
      assert.ok(before <= 9, `${before} runs after 200 clones of a fragmented segment`);
      assert.ok(after.stats().mappings <= before + 2);
      assert.deepEqual(new Uint8Array(after.buffer), bytes);
      after.close();
      seg.close();
    });
  });
});

describe('first clone of a large segment', { skip: linuxOnly }, () => {
  it('moves the page tables of a fresh segment of 2 MiB or more aside: isolated copies, one more mapping while the layer lives, none after', () => {
    withLinux({}, (b) => {
      const size = 4 << 20;
      const pages = size / PAGE;
      const mappings = b.memory().mappings;
      const layerMaps = layerMapsCount();
      const seg = Segment.create(size);
      assert.equal(seg.address % BigInt(2 << 20), 0n, 'placed at a multiple of 2 MiB, where page tables move whole');
      const bytes = new Uint8Array(seg.buffer);
      for (let p = 0; p < pages; p += 3) bytes.fill(p & 0xff, p * PAGE, p * PAGE + 100);
      const expected = bytes.slice();
      const c = seg.clone();
      // The moved-aside mapping: the segment's memory file, shared, its whole
      // length, somewhere else.
      const hex = (x: bigint): string => x.toString(16);
      const aside = mapsLines().filter((l) => {
        const [range, perms] = l.split(/\s+/);
        const [start, end] = range!.split('-').map((x) => BigInt(`0x${x}`));
        return l.includes('memfd:memfork') && perms === 'rw-s' && end! - start! === BigInt(size) && hex(start!) !== hex(seg.address);
      });
      assert.equal(aside.length, 1, `one moved-aside mapping: ${aside.join('; ')}`);
      // It holds the page-table entries of every page the segment touched
      // (one in three here): they were moved, not torn down.
      const smaps = readFileSync('/proc/self/smaps', 'utf8');
      const entry = smaps.slice(smaps.indexOf(aside[0]!.split(' ')[0]!));
      const rss = kbField(entry, 'Rss');
      assert.ok(rss >= Math.ceil(pages / 3) * PAGE, `the moved-aside mapping maps ${rss} bytes`);
      assert.equal(b.memory().mappings, mappings + seg.stats().mappings + c.stats().mappings + 1);
      assert.deepEqual(new Uint8Array(c.buffer), expected, 'the clone reads what was cloned');
      assert.deepEqual(bytes, expected, 'the source still reads the same');
      bytes.fill(0xee, 5 * PAGE, 9 * PAGE);
      new Uint8Array(c.buffer).fill(0xdd, 7 * PAGE, 20 * PAGE);
      const want = expected.slice();
      want.fill(0xee, 5 * PAGE, 9 * PAGE);
      assert.deepEqual(bytes, want, 'the source sees its own writes only');
      const wantClone = expected.slice();
      wantClone.fill(0xdd, 7 * PAGE, 20 * PAGE);
      assert.deepEqual(new Uint8Array(c.buffer), wantClone, 'the clone sees its own writes only');
      const again = seg.clone();
      assert.deepEqual(new Uint8Array(again.buffer), want, 'a later clone reads the source');
      again.close();
      c.close();
      seg.close();
      assert.equal(b.memory().mappings, mappings, 'no mapping left');
      assert.equal(layerMapsCount(), layerMaps, 'no mapping of a memory file left');
    });
  });

  it('places a segment of 1 GiB or more at a multiple of 1 GiB', () => {
    withLinux({}, () => {
      const seg = Segment.create(GiB + 5 * PAGE);
      assert.equal(seg.address % BigInt(GiB), 0n);
      new Uint8Array(seg.view(GiB, 5 * PAGE)).fill(4);
      const c = seg.clone();
      assert.deepEqual(new Uint8Array(c.view(GiB, 5 * PAGE)), new Uint8Array(5 * PAGE).fill(4));
      c.close();
      seg.close();
    });
  });
});

describe('freezing in place', { skip: linuxOnly }, () => {
  // Copied through a pipe, and through the layer's moved-aside mapping.
  for (const windowCopy of [false, true]) {
    it(`pages no other segment maps are frozen into their own layer pages: no new layer, no new run, no new memory (${windowCopy ? 'through the moved-aside mapping' : 'through a pipe'})`, () => {
      // Without sharing the layer again when each clone is gone (reshare.ts),
      // which would make every clone a first one.
      withLinux({ windowCopy, reshare: false }, (b) => {
        const pages = 1024;
        const seg = Segment.create(pages * PAGE);
        const bytes = new Uint8Array(seg.buffer);
        bytes.fill(1);
        seg.clone().close();
        const layers = b.layerCount();
        const layerBytes = b.memory().layerBytes;
        const random = rng(5);
        for (let round = 0; round < 30; round++) {
          // Snapshots taken and dropped, as a checkpoint that is written out and let go.
          for (let k = 0; k < 50; k++) bytes[Math.floor(random() * pages) * PAGE + round] = round + 2;
          const c = seg.clone();
          assert.deepEqual(new Uint8Array(c.buffer), bytes, `round ${round}: the clone reads what was cloned`);
          assert.equal(seg.stats().mappings, 1, `round ${round}: one run`);
          assert.equal(seg.stats().privateBytes, 0, `round ${round}: no private copy left`);
          c.close();
        }
        assert.equal(b.layerCount(), layers, 'no new layer');
        assert.ok(b.memory().layerBytes <= layerBytes, `layers grew from ${layerBytes} to ${b.memory().layerBytes} bytes`);
        seg.close();
      });
    });
  }

  // 2 MiB: the first layer has the segment's page tables moved aside, and
  // (windowCopy) is written through that mapping where written in place.
  for (const pages of [32, (2 << 20) / PAGE]) {
    it(`pages a live segment still maps are rewritten in place only once it holds private copies of them: it keeps its bytes (${pages} pages)`, () => {
      withLinux({ windowCopy: true }, () => {
        const a = Segment.create(pages * PAGE);
        const bytes = new Uint8Array(a.buffer);
        bytes.fill(1);
        const old = a.clone(); // shares every page of the first layer
        bytes.fill(2, 0, 10 * PAGE);
        a.clone().close(); // pages 0–9 go to a new layer, used by a alone once this clone is gone
        // 5–9: a's alone (written in place); 10–14: shared with `old`, which takes private copies first.
        bytes.fill(3, 5 * PAGE, 15 * PAGE);
        const now = a.clone();
        const want = new Uint8Array(pages * PAGE).fill(1);
        want.fill(2, 0, 5 * PAGE);
        want.fill(3, 5 * PAGE, 15 * PAGE);
        assert.deepEqual(new Uint8Array(now.buffer), want);
        assert.deepEqual(new Uint8Array(a.buffer), want);
        assert.deepEqual(new Uint8Array(old.buffer), new Uint8Array(pages * PAGE).fill(1), 'the old snapshot is untouched');
        // And back: `old` restored over `a`, `now` untouched by it.
        a.restore(old);
        assert.deepEqual(new Uint8Array(a.buffer), new Uint8Array(pages * PAGE).fill(1));
        assert.deepEqual(new Uint8Array(now.buffer), want);
        for (const s of [a, old, now]) s.close();
      });
    });
  }
});

describe('restore fast path', { skip: linuxOnly }, () => {
  it('rolls back thousands of times to the same snapshot without growing memory', () => {
    withLinux({}, (b) => {
      const pages = 256;
      const seg = Segment.create(pages * PAGE);
      const bytes = new Uint8Array(seg.buffer);
      for (let p = 0; p < pages; p++) bytes[p * PAGE] = p & 0xff;
      const snapshot = seg.clone();
      const expected = new Uint8Array(snapshot.buffer).slice();
      const random = rng(5);
      const startLayers = b.layerCount();
      for (let i = 0; i < 2000; i++) {
        for (let k = 0; k < 8; k++) bytes[Math.floor(random() * pages) * PAGE + 1] = 0xee;
        seg.restore(snapshot);
      }
      assert.deepEqual(bytes, expected);
      assert.equal(b.layerCount(), startLayers, 'restore to the same snapshot made no layers');
      assert.equal(seg.stats().privateBytes, 0);
      seg.close();
      snapshot.close();
    });
  });
});

describe('restore in place (kernels before 6.17)', { skip: linuxOnly }, () => {
  it('gives the same bytes as the scratch-and-move restore, for fresh and cloned targets', () => {
    const pages = 64;
    const run = (inPlace: boolean): Uint8Array[] =>
      withLinux({ restoreInPlace: inPlace }, () => {
        const random = rng(9);
        const segs = [Segment.create(pages * PAGE), Segment.create(pages * PAGE)];
        const out: Uint8Array[] = [];
        for (let step = 0; step < 200; step++) {
          const pick = Math.floor(random() * 4);
          const s = segs[Math.floor(random() * segs.length)]!;
          if (pick === 0) {
            for (let k = 0; k < 5; k++) new Uint8Array(s.buffer)[Math.floor(random() * pages) * PAGE + k] = step & 0xff;
          } else if (pick === 1 && segs.length < 6) {
            segs.push(s.clone());
          } else {
            const other = segs[Math.floor(random() * segs.length)]!;
            s.restore(other);
            assert.deepEqual(new Uint8Array(s.buffer), new Uint8Array(other.buffer));
          }
        }
        for (const s of segs) out.push(new Uint8Array(s.buffer).slice());
        for (const s of segs) s.close();
        return out;
      });
    const inPlace = run(true);
    assert.ok(inPlace.length > 2);
    assert.deepEqual(inPlace, run(false));
  });
});

describe('sparse memory', { skip: linuxOnly }, () => {
  it('creates more memory than the machine has, as long as it is not all written', () => {
    const size = 64 * GiB;
    const seg = Segment.create(size);
    const window = Math.min(backend.maxViewLength, GiB);
    for (let off = 0; off < size; off += 8 * GiB) new Uint8Array(seg.view(off, PAGE))[0] = 1 + off / (8 * GiB);
    const clone = seg.clone();
    new Uint8Array(clone.view(size - window, window))[window - 1] = 9;
    assert.equal(new Uint8Array(seg.view(size - PAGE, PAGE))[PAGE - 1], 0);
    for (let off = 0; off < size; off += 8 * GiB) {
      assert.equal(new Uint8Array(clone.view(off, 1))[0], 1 + off / (8 * GiB));
    }
    clone.close();
    seg.close();
  });

  it('reading never-written pages of a clone allocates nothing where the kernel has a zero page', (t) => {
    const b = new LinuxBackend();
    if (!b.zeroPage) {
      t.skip('this kernel maps no zero page: reading untouched anonymous memory allocates on it');
      return;
    }
    withLinux({}, () => {
      const size = 256 << 20;
      const seg = Segment.create(size);
      new Uint8Array(seg.buffer)[0] = 1;
      const clone = seg.clone();
      const before = processMemory();
      const bytes = new Uint8Array(clone.buffer);
      let sum = 0;
      for (let off = 0; off < size; off += PAGE) sum += bytes[off]!;
      assert.equal(sum, 1);
      const grown = processMemory() - before;
      assert.ok(grown < size / 100, `reading grew memory by ${grown} bytes`);
      clone.close();
      seg.close();
    });
  });
});

describe('beyond 4 GiB', { skip: linuxOnly }, () => {
  it('a 6 GiB segment clones and stays isolated, worked through view() windows', () => {
    const size = 6 * GiB;
    const seg = Segment.create(size);
    if (size > backend.maxViewLength) {
      assert.throws(() => seg.buffer, (e: unknown) => e instanceof RangeError && /view\(/.test(e.message));
    }
    const window = Math.min(backend.maxViewLength, GiB);
    for (let off = 0; off < size; off += window) new Uint8Array(seg.view(off, window)).fill(1, 0, 2 * PAGE);
    const clone = seg.clone();
    for (let off = 0; off < size; off += window) new Uint8Array(clone.view(off, window))[PAGE] = 2;
    new Uint8Array(clone.view(size - 1, 1))[0] = 3;
    for (let off = 0; off < size; off += window) {
      const o = new Uint8Array(seg.view(off, 2 * PAGE));
      const c = new Uint8Array(clone.view(off, 2 * PAGE));
      assert.equal(o[PAGE], 1);
      assert.equal(c[PAGE], 2);
      assert.equal(o[0], 1);
      assert.equal(c[0], 1);
    }
    assert.equal(new Uint8Array(seg.view(size - 1, 1))[0], 0);
    assert.equal(new Uint8Array(clone.view(size - 1, 1))[0], 3);
    clone.close();
    seg.close();
  });
});
