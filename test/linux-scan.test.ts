// Page-table scanning of the Linux backend (platform/linux/scan.ts): the
// PAGEMAP_SCAN argument as the kernel lays it out and filters with it, and
// /proc/self/pagemap entries decoded into written page ranges.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { appendRange, type Range } from '../src/runs.ts';
import {
  decodeEntries,
  encodeScanArg,
  isWrittenEntry,
  isZeroPageEntry,
  PAGE_IS_FILE,
  PAGE_IS_WRITTEN,
  holdsWrites,
  PM_SCAN_WP_MATCHING,
  writtenSinceArg,
  PAGE_IS_PFNZERO,
  PAGE_IS_PRESENT,
  PAGE_IS_SWAPPED,
  PM_SCAN_ARG_SIZE,
  scanArgFor,
  fileMappedArg,
  Scanner,
  type ScanArg,
} from '../platform/linux/scan.ts';
import * as sys from '../platform/libc.ts';
import { linuxOnly } from './helpers/proc.ts';

const u64 = fc.bigInt({ min: 0n, max: (1n << 64n) - 1n });

/** struct pm_scan_arg, in the order of include/uapi/linux/fs.h. */
const FIELDS = ['size', 'flags', 'start', 'end', 'walk_end', 'vec', 'vec_len', 'max_pages', 'category_inverted', 'category_mask', 'category_anyof_mask', 'return_mask'];

describe('encodeScanArg()', () => {
  it('lays every named field where struct pm_scan_arg has it', () => {
    fc.assert(
      fc.property(fc.tuple(u64, u64, u64, u64, fc.nat(1 << 20), u64, u64, u64, u64, u64), (f) => {
        const arg: ScanArg = {
          flags: f[0],
          start: f[1],
          end: f[2],
          vec: f[3],
          vecLength: f[4],
          maxPages: f[5],
          categoryInverted: f[6],
          categoryMask: f[7],
          categoryAnyofMask: f[8],
          returnMask: f[9],
        };
        const into = new BigUint64Array(PM_SCAN_ARG_SIZE / 8).fill(7n);
        encodeScanArg(into, arg);
        const want: Record<string, bigint> = {
          size: BigInt(PM_SCAN_ARG_SIZE),
          flags: arg.flags,
          start: arg.start,
          end: arg.end,
          walk_end: 0n,
          vec: arg.vec,
          vec_len: BigInt(arg.vecLength),
          max_pages: arg.maxPages,
          category_inverted: arg.categoryInverted,
          category_mask: arg.categoryMask,
          category_anyof_mask: arg.categoryAnyofMask,
          return_mask: arg.returnMask,
        };
        assert.equal(FIELDS.length * 8, PM_SCAN_ARG_SIZE);
        FIELDS.forEach((name, i) => assert.equal(into[i], want[name], name));
      }),
    );
  });
});

/** The kernel's test of a page against the argument (pagemap.rst): all of mask after inversion, and any of anyof. */
function kernelMatches(arg: ScanArg, categories: bigint): boolean {
  const c = categories ^ arg.categoryInverted;
  return (c & arg.categoryMask) === arg.categoryMask && (arg.categoryAnyofMask === 0n || (c & arg.categoryAnyofMask) !== 0n);
}

const categoriesArb = fc.subarray([PAGE_IS_FILE, PAGE_IS_PRESENT, PAGE_IS_SWAPPED, PAGE_IS_PFNZERO]).map((bits) => bits.reduce((a, b) => a | b, 0n));

describe('scanArgFor()', () => {
  it('asks for written pages: in memory or swapped, neither file pages nor the zero page', () => {
    fc.assert(
      fc.property(categoriesArb, (c) => {
        const arg = scanArgFor(0n, 4096n, 0n, 16, false);
        const inMemory = (c & (PAGE_IS_PRESENT | PAGE_IS_SWAPPED)) !== 0n;
        assert.equal(kernelMatches(arg, c), inMemory && (c & (PAGE_IS_FILE | PAGE_IS_PFNZERO)) === 0n);
      }),
    );
  });

  it('asks, for all, for every page in memory or swapped, with its file and zero-page categories', () => {
    fc.assert(
      fc.property(categoriesArb, (c) => {
        const arg = scanArgFor(0n, 4096n, 0n, 16, true);
        assert.equal(kernelMatches(arg, c), (c & (PAGE_IS_PRESENT | PAGE_IS_SWAPPED)) !== 0n);
        assert.equal(arg.returnMask & (PAGE_IS_FILE | PAGE_IS_PFNZERO), PAGE_IS_FILE | PAGE_IS_PFNZERO);
      }),
    );
  });
});

/** A private mapping of a new memory file of `pages` pages, never touched, its bytes, and its undoing. */
function privateFileMapping(pages: number): { addr: bigint; bytes: Uint8Array; close(): void } {
  const fd = sys.memfdCreate('scan-test', sys.MFD_CLOEXEC);
  sys.ftruncate(fd, pages * 4096);
  const addr = sys.mmap(null, pages * 4096, sys.PROT_READ | sys.PROT_WRITE, sys.MAP_PRIVATE, fd, 0);
  return {
    addr,
    bytes: new Uint8Array(sys.view(addr, pages * 4096)),
    close() {
      sys.munmap(addr, pages * 4096);
      sys.closeFd(fd);
    },
  };
}

/** A Scanner using PAGEMAP_SCAN; undefined, the test skipped, where the kernel has none. */
function pagemapScanner(t: { skip(message: string): void }): Scanner | undefined {
  sys.loadLibc();
  const scanner = new Scanner(4096, undefined);
  if (scanner.method === 'pagemap-scan') return scanner;
  scanner.close();
  t.skip('PAGEMAP_SCAN is not available here');
  return undefined;
}

describe('fileMappedArg() and Scanner.fileMapped()', () => {
  it('asks for pages whose entries map their file page: present, a file page, not the zero page', () => {
    fc.assert(
      fc.property(categoriesArb, (c) => {
        const arg = fileMappedArg(0n, 4096n, 0n, 16);
        assert.equal(kernelMatches(arg, c), (c & PAGE_IS_PRESENT) !== 0n && (c & PAGE_IS_FILE) !== 0n && (c & PAGE_IS_PFNZERO) === 0n);
      }),
    );
  });

  it('finds, within the windows given, the pages of a private file mapping that were read and not written', { skip: linuxOnly }, (t) => {
    const scanner = pagemapScanner(t);
    if (scanner === undefined) return;
    const { addr, bytes, close } = privateFileMapping(128);
    try {
      let sum = 0;
      for (const p of [1, 2, 3, 10, 11, 60, 100, 127]) sum += bytes[p * 4096]!; // read: file pages
      for (const p of [3, 11, 70]) bytes[p * 4096] = 1; // written: private
      assert.equal(sum, 0);
      const found = scanner.fileMapped(addr, [
        { start: 0, end: 12 },
        { start: 50, end: 80 },
        { start: 120, end: 128 },
      ]);
      const got: number[] = [];
      for (let i = 0; i < found.length; i++) for (let p = found.starts[i]!; p < found.ends[i]!; p++) got.push(p);
      assert.deepEqual(got, [1, 2, 10, 60, 127], 'read pages in the windows; not the written ones, nor those outside (100)');
    } finally {
      close();
      scanner.close();
    }
  });
});

describe('Scanner.fileMapped() and Scanner.privateIn() over many windows', () => {
  it('find exactly the read and the written pages in each window, past a full array of regions', { skip: linuxOnly }, (t) => {
    const scanner = pagemapScanner(t);
    if (scanner === undefined) return;
    // More regions than one call returns (2,048) where pages alternate.
    const pages = 6000;
    try {
      fc.assert(
        fc.property(
          // Each page untouched (0), read (1) or written (2): at random, or alternating read and written.
          fc.oneof(fc.array(fc.integer({ min: 0, max: 2 }), { minLength: pages, maxLength: pages }), fc.constant(Array.from({ length: pages }, (_, i) => 1 + (i % 2)))),
          fc.oneof(fc.constant([0, pages]), fc.uniqueArray(fc.integer({ min: 0, max: pages }), { minLength: 2, maxLength: 40 })),
          (state, cuts) => {
            // A new file each time: a read fault also maps the neighbours
            // already in the file's cache (fault-around), which would be
            // found mapped though never touched.
            const { addr, bytes, close } = privateFileMapping(pages);
            try {
              let sum = 0;
              for (let p = 0; p < pages; p++) {
                if (state[p] === 1) sum += bytes[p * 4096]!;
                else if (state[p] === 2) bytes[p * 4096] = 1;
              }
              assert.equal(sum, 0);
              // Every other stretch between sorted cuts is a window.
              const sorted = [...cuts].sort((a, b) => a - b);
              const windows: { start: number; end: number }[] = [];
              for (let i = 0; i + 1 < sorted.length; i += 2) if (sorted[i]! < sorted[i + 1]!) windows.push({ start: sorted[i]!, end: sorted[i + 1]! });
              const pagesOf = (list: { length: number; starts: Int32Array; ends: Int32Array }) => {
                const out: number[] = [];
                for (let i = 0; i < list.length; i++) for (let p = list.starts[i]!; p < list.ends[i]!; p++) out.push(p);
                return out;
              };
              const want = (s: number) => windows.flatMap((w) => Array.from({ length: w.end - w.start }, (_, i) => w.start + i).filter((p) => state[p] === s));
              assert.deepEqual(pagesOf(scanner.fileMapped(addr, windows)), want(1), 'read pages');
              assert.deepEqual(pagesOf(scanner.privateIn(addr, windows)!), want(2), 'written pages');
            } finally {
              close();
            }
          },
        ),
        { numRuns: 12, endOnFailure: true },
      );
    } finally {
      scanner.close();
    }
  });
});

describe('writtenSinceArg() and holdsWrites()', () => {
  const withWritten = fc.subarray([PAGE_IS_FILE, PAGE_IS_PRESENT, PAGE_IS_SWAPPED, PAGE_IS_PFNZERO, PAGE_IS_WRITTEN]).map((bits) => bits.reduce((a, b) => a | b, 0n));
  it('asks for private pages written since last protected, and protects them again', () => {
    fc.assert(
      fc.property(withWritten, (c) => {
        const arg = writtenSinceArg(0n, 4096n, 0n, 16);
        const inMemory = (c & (PAGE_IS_PRESENT | PAGE_IS_SWAPPED)) !== 0n;
        const privateCopy = (c & (PAGE_IS_FILE | PAGE_IS_PFNZERO)) === 0n;
        assert.equal(kernelMatches(arg, c), inMemory && privateCopy && (c & PAGE_IS_WRITTEN) !== 0n);
        assert.ok((arg.flags & PM_SCAN_WP_MATCHING) !== 0n);
      }),
    );
  });

  it('counts present pages and swapped ones not write-protected (a marker of a dropped protected page is neither)', () => {
    fc.assert(
      fc.property(withWritten, (c) => {
        assert.equal(holdsWrites(c), (c & PAGE_IS_PRESENT) !== 0n || (c & PAGE_IS_WRITTEN) !== 0n);
      }),
    );
    assert.equal(holdsWrites(PAGE_IS_SWAPPED), false, 'a marker');
    assert.equal(holdsWrites(PAGE_IS_SWAPPED | PAGE_IS_WRITTEN), true, 'a page swapped out, written');
  });
});

// High words of pagemap entries: bit 31 present, 30 swapped, 29 file, 24 exclusive.
const PRESENT = 1 << 31;
const SWAPPED = 1 << 30;
const FILE = 1 << 29;
const EXCLUSIVE = 1 << 24;
const hiArb = fc.nat(0xffffffff);

describe('isWrittenEntry()', () => {
  it('is a private page mapped once, or a swapped private page; never a file or shared page', () => {
    fc.assert(
      fc.property(hiArb, (raw) => {
        const hi = raw | 0;
        const got = isWrittenEntry(hi);
        if (hi & FILE) assert.equal(got, false, 'file page');
        else if (hi & PRESENT) assert.equal(got, (hi & EXCLUSIVE) !== 0, 'present page');
        else assert.equal(got, (hi & SWAPPED) !== 0, 'not present');
      }),
    );
  });

  it('ignores every other bit (frame number, soft-dirty, uffd)', () => {
    const meaningful = PRESENT | SWAPPED | FILE | EXCLUSIVE;
    fc.assert(
      fc.property(hiArb, fc.integer({ min: 0, max: 31 }), (raw, bit) => {
        const flip = 1 << bit;
        fc.pre((flip & meaningful) === 0);
        assert.equal(isWrittenEntry(raw ^ flip), isWrittenEntry(raw));
      }),
    );
  });
});

describe('isZeroPageEntry()', () => {
  it('is a present anonymous page mapped more than once, which a page never written is', () => {
    assert.equal(isZeroPageEntry(PRESENT), true);
    assert.equal(isZeroPageEntry(PRESENT | EXCLUSIVE), false);
    assert.equal(isZeroPageEntry(PRESENT | FILE), false);
    assert.equal(isZeroPageEntry(0), false);
    fc.assert(fc.property(hiArb, (hi) => assert.ok(!(isZeroPageEntry(hi) && isWrittenEntry(hi)))));
  });
});

describe('decodeEntries()', () => {
  it('appends the written pages as merged ranges', () => {
    fc.assert(
      fc.property(fc.array(hiArb, { maxLength: 200 }), fc.nat(1000), fc.array(fc.nat(3), { maxLength: 3 }), (his, first, prior) => {
        const entries = new Uint32Array(his.length * 2);
        his.forEach((hi, i) => {
          entries[i * 2] = 0x1234; // low word: frame number bits, ignored
          entries[i * 2 + 1] = hi;
        });
        // Some ranges already found before `first`, as a longer scan has.
        const out: Range[] = [];
        let at = 0;
        for (const gap of prior) {
          if (at + gap + 1 > first) break;
          appendRange(out, at + gap, at + gap + 1);
          at += gap + 1;
        }
        const before = out.map((r) => ({ ...r }));
        decodeEntries(entries, his.length, first, out);
        const want = before.slice();
        his.forEach((hi, i) => {
          if (isWrittenEntry(hi)) appendRange(want, first + i, first + i + 1);
        });
        assert.deepEqual(out, want);
        for (let i = 1; i < out.length; i++) assert.ok(out[i - 1]!.end < out[i]!.start, 'merged');
        const pages = new Set<number>();
        for (const r of out) for (let p = r.start; p < r.end; p++) pages.add(p);
        his.forEach((hi, i) => assert.equal(pages.has(first + i), isWrittenEntry(hi)));
      }),
    );
  });
});
