// The portable copy backend: what is particular to it. The shared behaviour
// suite (segment.test.ts) runs against it too.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Segment, SegmentError } from '../src/index.ts';
import { setBackend } from '../src/segment.ts';
import { chooseBackend } from '../src/backend.ts';
import { loadBackend } from '../src/load.ts';
import { CopyBackend, nativeHeap, type CopyHeap } from '../platform/copy.ts';
import { assertBytes } from './backends.ts';

function bytesOf(seg: Segment): Uint8Array {
  return new Uint8Array(seg.buffer);
}

function pattern(length: number, seed: number): Uint8Array {
  const out = new Uint8Array(length);
  for (let i = 0; i < length; i++) out[i] = (i * 131 + seed * 17 + 1) & 0xff;
  return out;
}

function outOfMemory(syscall: string) {
  return (err: unknown): boolean => {
    assert.ok(err instanceof SegmentError, `expected a SegmentError, got ${String(err)}`);
    assert.equal(err.code, 'ENOMEM');
    assert.equal(err.errno, 12);
    assert.equal(err.syscall, syscall);
    assert.match(err.message, new RegExp(`^${syscall} ENOMEM: cannot allocate \\d+ bytes$`));
    return true;
  };
}

describe('the copy backend in heap mode', () => {
  let backend: CopyBackend;
  before(() => {
    backend = new CopyBackend();
    setBackend(backend);
  });

  it('is the default where koffi may make ArrayBuffers over native memory', () => {
    assert.equal(backend.name, 'copy');
    assert.equal(backend.memoryKind, 'heap');
    assert.equal(backend.fallbackReason, undefined);
    assert.equal(backend.pageSize, 4096);
  });

  it('gives real, page-aligned, distinct addresses', () => {
    using a = Segment.create(10);
    using b = a.clone();
    assert.notEqual(a.address, 0n);
    assert.equal(a.address % 4096n, 0n);
    assert.equal(b.address % 4096n, 0n);
    assert.notEqual(a.address, b.address);
  });

  it('makes views that alias any range of the segment', () => {
    using seg = Segment.create(3 * 4096);
    const part = new Uint8Array(seg.view(4095, 3));
    part.set([1, 2, 3]);
    assert.deepEqual([...bytesOf(seg).subarray(4094, 4099)], [0, 1, 2, 3, 0]);
    bytesOf(seg)[4096] = 9;
    assert.equal(part[1], 9);
  });

  it('copies every byte on clone(): all private, nothing shared, no mappings', () => {
    using a = Segment.from(pattern(3 * 4096 + 1, 1));
    using b = a.clone();
    assertBytes(bytesOf(b), pattern(3 * 4096 + 1, 1));
    for (const s of [a, b]) {
      assert.deepEqual(s.stats(), { byteLength: 3 * 4096 + 1, privateBytes: 4 * 4096, sharedBytes: 0, mappings: 0 });
    }
    bytesOf(b)[0] ^= 0xff;
    assert.equal(bytesOf(a)[0], pattern(1, 1)[0]);
  });

  it('copies in place on restore(), keeping the address and every view', () => {
    using a = Segment.from(pattern(8192, 2));
    using b = Segment.from(pattern(8192, 3));
    const at = a.address;
    const view = new Uint8Array(a.view(100, 50));
    a.restore(b);
    assert.equal(a.address, at);
    assertBytes(view, pattern(8192, 3).subarray(100, 150));
    bytesOf(b)[100] ^= 0xff;
    assert.equal(view[0], pattern(8192, 3)[100]);
  });

  it('throws SegmentError ENOMEM for an allocation the machine cannot make, and the process goes on', () => {
    for (const n of [2 ** 52, Number.MAX_SAFE_INTEGER - 4095]) {
      assert.throws(() => Segment.create(n), outOfMemory('calloc'), `create(${n})`);
    }
    using seg = Segment.create(4096);
    bytesOf(seg)[0] = 1;
    assert.equal(bytesOf(seg)[0], 1);
  });

  it('shutdown() (a worker exiting) gives back the memory of every segment still open', () => {
    const real = nativeHeap()!;
    const live = new Set<bigint>();
    const heap: CopyHeap = {
      name: 'calloc',
      calloc: (n) => {
        const p = real.calloc(n);
        if (p !== null) live.add(p);
        return p;
      },
      free: (p) => {
        assert.ok(live.delete(p), 'freed once, and only what was allocated');
        real.free(p);
      },
    };
    const b = new CopyBackend({ heap });
    setBackend(b);
    try {
      const a = Segment.from(pattern(3 * 4096, 5));
      const c = a.clone();
      Segment.create(10000).close();
      assert.equal(live.size, 2);
      b.shutdown();
      assert.equal(live.size, 0, 'every allocation freed');
      assert.equal(b.memory().layers, 0);
      void c;
    } finally {
      setBackend(backend);
    }
  });

  it('keeps the source unchanged and usable when a clone cannot be allocated', () => {
    const real = nativeHeap()!;
    let refuse = false;
    const heap: CopyHeap = { name: 'calloc', calloc: (n) => (refuse ? null : real.calloc(n)), free: real.free };
    const b = new CopyBackend({ heap });
    setBackend(b);
    try {
      using a = Segment.from(pattern(4096, 4));
      refuse = true;
      assert.throws(() => a.clone(), outOfMemory('calloc'));
      assert.equal(b.memory().layers, 1);
      assertBytes(bytesOf(a), pattern(4096, 4));
      refuse = false;
      using c = a.clone();
      assertBytes(bytesOf(c), pattern(4096, 4));
    } finally {
      setBackend(backend);
    }
  });

  it('counts one layer per live segment in memory(), and releases it on close()', () => {
    const before = backend.memory();
    const a = Segment.create(5 * 4096);
    const b = a.clone();
    const during = backend.memory();
    assert.equal(during.layers, before.layers + 2);
    assert.equal(during.privateBytes, before.privateBytes + 10 * 4096);
    assert.ok(during.layerBytes >= before.layerBytes + 10 * 4096);
    assert.equal(during.mappings, 0);
    a.close();
    b.close();
    assert.deepEqual(backend.memory(), before);
  });

  it('gives the memory back to the system on close()', { skip: process.platform !== 'linux' && 'relies on glibc unmapping large blocks on free()' }, () => {
    // 64 MiB is above glibc's largest mmap threshold, so free() unmaps it.
    const n = 64 << 20;
    const seg = Segment.create(n);
    try {
      bytesOf(seg).fill(1);
      const held = process.memoryUsage().rss;
      const view = seg.view(0, 4096);
      seg.close();
      assert.equal(view.byteLength, 0);
      const freed = held - process.memoryUsage().rss;
      assert.ok(freed > 48 << 20, `close() gave back ${freed} bytes of ${n}`);
    } finally {
      seg.close();
    }
  });
});

describe('the copy backend in arraybuffer mode (runtimes that refuse external ArrayBuffers)', () => {
  let backend: CopyBackend;
  before(() => {
    backend = new CopyBackend({ memory: 'arraybuffer' });
    setBackend(backend);
  });
  // Back to the backend this process would pick, for whatever runs next.
  after(() => setBackend(loadBackend(chooseBackend(process.platform, process.env.MEMFORK_BACKEND).name)));

  it('has no pages to round to and no address', () => {
    assert.equal(backend.memoryKind, 'arraybuffer');
    assert.equal(backend.pageSize, 1);
    using seg = Segment.create(100);
    assert.equal(seg.address, 0n);
    assert.equal(seg.buffer.byteLength, 100);
  });

  it('aliases the whole segment through buffer and view()', () => {
    using seg = Segment.create(100);
    new Uint8Array(seg.view())[7] = 7;
    assert.equal(bytesOf(seg)[7], 7);
    assert.equal(seg.view(0, 100), seg.buffer);
  });

  it('refuses partial views with a RangeError that says why', () => {
    using seg = Segment.create(100);
    assert.throws(() => seg.view(1, 10), (err: unknown) => {
      assert.ok(err instanceof RangeError);
      assert.match(err.message, /can only alias the whole segment \(use buffer\)/);
      return true;
    });
  });

  it('clones and restores byte for byte, isolated both ways', () => {
    using a = Segment.create(1000);
    bytesOf(a).set(pattern(1000, 5));
    using b = a.clone();
    bytesOf(b)[0] ^= 0xff;
    assertBytes(bytesOf(a), pattern(1000, 5));
    const buffer = a.buffer;
    a.restore(b);
    assert.equal(a.buffer, buffer);
    assert.equal(bytesOf(a)[0], bytesOf(b)[0]);
    bytesOf(a)[1] ^= 0xff;
    assert.equal(bytesOf(b)[1], pattern(1000, 5)[1]);
    assert.deepEqual(b.stats(), { byteLength: 1000, privateBytes: 1000, sharedBytes: 0, mappings: 0 });
  });

  it('throws SegmentError ENOMEM when the runtime cannot allocate the ArrayBuffer', () => {
    assert.throws(() => Segment.create(2 ** 52), outOfMemory('ArrayBuffer'));
    using seg = Segment.create(10);
    bytesOf(seg)[9] = 1;
    assert.equal(bytesOf(seg)[9], 1);
  });

  it('forgets segments on close() and detaches their buffer', () => {
    const before = backend.memory();
    const seg = Segment.create(4096);
    assert.equal(backend.memory().layers, before.layers + 1);
    const buffer = seg.buffer;
    seg.close();
    assert.equal(buffer.byteLength, 0);
    assert.deepEqual(backend.memory(), before);
  });

  it('copies a source into a new segment with Segment.from()', () => {
    using seg = Segment.from(pattern(64, 6));
    assertBytes(bytesOf(seg), pattern(64, 6));
  });
});
