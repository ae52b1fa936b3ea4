// Sparse first clones at real sizes: one byte on every 2nd, 3rd or 5th page of
// a segment never otherwise touched, then clone, write, clone, restore, with
// every page of every segment checked (test/fixtures/sparse-clones.ts). Each
// case runs in a child process, so a crash (the process passing the kernel's
// mapping limit and V8 aborting, say) fails the case instead of the runner.
// Both ways a first clone treats never-written holes run: mapped anonymously
// (machines with a zero page) and left on the layer.
import { describe, it } from 'node:test';
import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { projectRoot, runtime, tsCommand } from './helpers/runtime.ts';
import { Segment } from '../src/index.ts';
import fc from 'fast-check';
import { HOLE_MIN_PAGES, LinuxBackend, MAX_HOLES, worthwhileHoles } from '../platform/linux/index.ts';
import { longHoles } from '../platform/linux/layers.ts';
import { SEEK_DATA, SEEK_HOLE } from '../platform/libc.ts';
import { useBackend } from './backends.ts';

/** Runs `fn` with `linux` as the backend Segment uses, then a default Linux backend again. */
function useLinux(linux: LinuxBackend, fn: () => void): void {
  useBackend(linux);
  try {
    fn();
  } finally {
    useBackend(new LinuxBackend());
  }
}

const linuxOnly = process.platform !== 'linux' && 'Linux only';

interface Outcome {
  outcome: 'ok' | 'refused';
  refusal: string;
  mappings: number;
  budget: number;
  segments: number;
  layers: number;
}

function run(mib: number, stride: number, zero: boolean): Outcome {
  const fixture = path.join(projectRoot, 'test', 'fixtures', 'sparse-clones.ts');
  const { command, args } = tsCommand(fixture, [String(mib), String(stride), ...(zero ? ['zero'] : [])]);
  const r = spawnSync(command, args, { cwd: projectRoot, encoding: 'utf8', timeout: 600_000, maxBuffer: 1 << 24 });
  assert.equal(r.signal, null, `the child was killed by ${r.signal}\n${r.stderr}`);
  assert.equal(r.status, 0, `the child exited with ${r.status}\n${r.stderr}`);
  return JSON.parse(r.stdout.trim().split('\n').pop() ?? '') as Outcome;
}

// 256 MiB on every runtime; 1 and 2 GiB on the runtime of the main suite
// only (the same engine code runs): two of them by default, all six with
// MEMFORK_SPARSE_ALL=1 (each takes half a minute to several minutes here).
const cases: [number, number, boolean][] = [
  [256, 2, false],
  [256, 3, false],
  [256, 5, false],
  [256, 2, true],
  [256, 3, true],
  [256, 5, true],
];
const big = runtime === 'node' && Number(process.versions.node.split('.')[0]) === 20;
if (big) {
  cases.push([1024, 2, true], [2048, 5, false]);
  if (process.env.MEMFORK_SPARSE_ALL === '1') cases.push([1024, 3, false], [1024, 5, true], [2048, 2, false], [2048, 3, true]);
}

describe('sparse first clones', { skip: linuxOnly }, () => {
  for (const [mib, stride, zero] of cases) {
    const holes = zero ? 'holes mapped anonymously' : 'holes left on the layer';
    it(`${mib} MiB, every ${stride === 2 ? '2nd' : stride === 3 ? '3rd' : `${stride}th`} page written (${holes}): clone, write, clone, restore read every page right and stay within the mapping budget`, (t) => {
      const o = run(mib, stride, zero);
      t.diagnostic(JSON.stringify(o));
      // A budget refusal is clean (the fixture checked every segment after it), never a crash.
      assert.ok(o.outcome === 'ok' || o.outcome === 'refused');
      assert.ok(o.mappings <= o.budget, `${o.mappings} mappings over a budget of ${o.budget}`);
      assert.equal(o.segments, 0);
      assert.equal(o.layers, 0);
    });
  }
});

describe('which holes a first clone maps', () => {
  it('only holes of at least HOLE_MIN_PAGES, the MAX_HOLES largest, largest first', () => {
    const holes = [];
    for (let i = 0; i < 100; i++) holes.push({ start: i * 10_000, end: i * 10_000 + HOLE_MIN_PAGES - 1 + i * 3 });
    const chosen = worthwhileHoles(holes);
    assert.equal(chosen.length, MAX_HOLES);
    for (const h of chosen) assert.ok(h.end - h.start >= HOLE_MIN_PAGES);
    for (let i = 1; i < chosen.length; i++) assert.ok(chosen[i - 1]!.end - chosen[i - 1]!.start >= chosen[i]!.end - chosen[i]!.start);
    // The largest of all is first; a hole too small is never chosen.
    assert.deepEqual(chosen[0], holes[99]);
    assert.deepEqual(worthwhileHoles([{ start: 0, end: HOLE_MIN_PAGES - 1 }]), []);
  });

  it('longHoles() finds every hole of at least `min` pages exactly, by SEEK_DATA every min/2 pages and short SEEK_HOLE walks', () => {
    const PS = 4096;
    fc.assert(
      fc.property(
        // A file as runs of data and holes, and the least hole length asked for.
        fc.array(fc.tuple(fc.boolean(), fc.integer({ min: 1, max: 40 })), { maxLength: 20 }),
        fc.integer({ min: 1, max: 24 }),
        (parts, min) => {
          const data: boolean[] = [];
          for (const [isData, n] of parts) for (let i = 0; i < n; i++) data.push(isData);
          const pages = data.length;
          // lseek(2) over the model: the file is `pages` long; past its end there is neither.
          let walked = 0;
          const seek = (offset: number, whence: number): number => {
            assert.equal(offset % PS, 0);
            let p = offset / PS;
            const want = whence === SEEK_DATA;
            assert.ok(whence === SEEK_DATA || whence === SEEK_HOLE);
            const from = p;
            while (p < pages && data[p] !== want) p++;
            if (!want) walked += p - from;
            if (p >= pages) return want ? -1 : pages * PS;
            return p * PS;
          };
          const found = longHoles(seek, PS, pages, min);
          // Every range found is a whole hole: all holes, data (or an end) either side.
          for (const h of found) {
            assert.ok(h.start < h.end);
            for (let p = h.start; p < h.end; p++) assert.equal(data[p], false, `page ${p} of [${h.start}, ${h.end}) holds data`);
            assert.ok(h.start === 0 || data[h.start - 1] === true, 'starts where the hole starts');
            assert.ok(h.end === pages || data[h.end] === true, 'ends where the hole ends');
          }
          // Every hole of at least `min` pages is found.
          const holes: { start: number; end: number }[] = [];
          for (let p = 0; p < pages; ) {
            if (data[p]) { p++; continue; }
            const start = p;
            while (p < pages && !data[p]) p++;
            holes.push({ start, end: p });
          }
          for (const h of holes.filter((h) => h.end - h.start >= min)) assert.ok(found.some((f) => f.start === h.start && f.end === h.end), `hole [${h.start}, ${h.end}) missed`);
          // No walk through data longer than half of `min` a hole found.
          assert.ok(walked <= found.length * Math.ceil(min / 2), `SEEK_HOLE walked ${walked} pages for ${found.length} holes`);
        },
      ),
      { numRuns: 5000, examples: [[[[true, 1], [false, 1], [true, 1], [false, 1]], 5]] },
    );
  });

  it('a first clone maps holes only within the mapping budget, and the contents stay right', { skip: linuxOnly }, () => {
    const budget = 24;
    const linux = new LinuxBackend({ zeroPage: true, mapBudget: budget });
    const page = linux.pageSize;
    const pages = 64 * HOLE_MIN_PAGES;
    useLinux(linux, () => {
      const seg = Segment.create(pages * page);
      const bytes = new Uint8Array(seg.buffer);
      // A written page after every hole of HOLE_MIN_PAGES: 63 holes worth mapping.
      for (let p = HOLE_MIN_PAGES; p < pages; p += HOLE_MIN_PAGES + 1) bytes[p * page] = 1;
      const written = linux.memory().layerBytes;
      const clone = seg.clone();
      const { mappings, layerBytes } = linux.memory();
      assert.ok(mappings <= budget, `${mappings} mappings over a budget of ${budget}`);
      // Some holes were mapped (more than the two segments' own mappings and
      // the moved-aside one), and none was read into the layer by a forced compaction.
      assert.ok(mappings > 3, `only ${mappings} mappings: no hole was mapped`);
      assert.equal(layerBytes, written);
      const other = new Uint8Array(clone.buffer);
      for (let p = 0; p < pages; p++) {
        const want = p >= HOLE_MIN_PAGES && (p - HOLE_MIN_PAGES) % (HOLE_MIN_PAGES + 1) === 0 ? 1 : 0;
        assert.equal(other[p * page], want);
        assert.equal(bytes[p * page], want);
      }
      clone.close();
      seg.close();
    });
  });
});
