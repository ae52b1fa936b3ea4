// One mapping budget and one descriptor budget per process: vm.max_map_count
// and RLIMIT_NOFILE are shared by every thread, so every thread's memfork
// works out its budgets from the process's real mapping and descriptor counts
// (platform/linux/map-budget.ts, platform/linux/fd-budget.ts).
import { describe, it } from 'node:test';
import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import * as sys from '../platform/libc.ts';
import { FLOOR as FD_FLOOR, ProcessFdBudget, RECHECK as FD_RECHECK, fdBudgetFrom } from '../platform/linux/fd-budget.ts';
import { LinuxBackend } from '../platform/linux/index.ts';
import { ProcessMapBudget, RECHECK, RECHECK_PART, RESERVE, budgetFrom } from '../platform/linux/map-budget.ts';
import { Segment } from '../src/index.ts';
import { useBackend } from './backends.ts';
import { projectRoot, runtime, tsCommand } from './helpers/runtime.ts';

const linuxOnly = process.platform !== 'linux' && 'Linux only';

describe('the process-wide mapping budget', { skip: linuxOnly }, () => {
  it('is half of vm.max_map_count, less the reserve, less what the rest of the process maps', () => {
    assert.equal(budgetFrom(65530, 1000, 0), 32765 - RESERVE - 1000);
    // This backend's own mappings are not the rest of the process.
    assert.equal(budgetFrom(65530, 1000, 400), 32765 - RESERVE - 600);
    assert.equal(budgetFrom(1048576, 0, 0), 524288 - RESERVE);
  });

  it('reads the process count again after RECHECK mappings of growth, and at every decision near the limit', () => {
    let processMaps = 2000;
    let reads = 0;
    const budget = new ProcessMapBudget(() => {
      reads++;
      return processMaps;
    }, 65530);
    const far = budget.limit(0);
    assert.equal(reads, 1);
    assert.equal(far, 32765 - RESERVE - 2000);
    // Far from the limit, small growth is not worth a reading.
    budget.limit(RECHECK - 1);
    assert.equal(reads, 1);
    // Another thread mapped 10,000 more: seen once this backend has grown by RECHECK.
    processMaps += 10_000 + RECHECK;
    assert.equal(budget.limit(RECHECK), 32765 - RESERVE - 12_000);
    assert.equal(reads, 2);
    // Near the limit, every decision reads.
    const near = 32765 - RESERVE - 12_000 - RECHECK / 2;
    processMaps = 12_000 + near;
    budget.limit(near);
    budget.limit(near, 1);
    assert.equal(reads, 4);
  });

  it('under a raised vm.max_map_count, reads again after 1/RECHECK_PART of the budget of growth, not RECHECK', () => {
    let reads = 0;
    const budget = new ProcessMapBudget(() => {
      reads++;
      return 2000;
    }, 1_048_576);
    const limit = budget.limit(0);
    assert.equal(limit, 524_288 - RESERVE - 2000);
    const interval = Math.floor(limit / RECHECK_PART);
    assert.ok(interval > RECHECK);
    budget.limit(interval - 1);
    assert.equal(reads, 1, 'far from the limit, growth short of the interval');
    budget.limit(interval);
    assert.equal(reads, 2);
  });

  // A minute or more of work: on Node.js 20, Bun and Deno (Node.js 22 and 26
  // run the same engine code on the same V8 as 20 does here).
  const otherNode = runtime === 'node' && Number(process.versions.node.split('.')[0]) !== 20 && 'runs on Node.js 20, Bun and Deno';
  it('holds for several workers fragmenting segments at once: the process stays far from vm.max_map_count, and every snapshot reads right', { skip: otherNode }, (t) => {
    const fixture = path.join(projectRoot, 'test', 'fixtures', 'budget-threads.ts');
    // 4 workers, 8 rounds, 32 MiB: each mapped snapshot costs about 2,000
    // mappings, so together they would need about 64,000.
    const { command, args } = tsCommand(fixture, ['4', '8', '8192', runtime]);
    const r = spawnSync(command, args, { cwd: projectRoot, encoding: 'utf8', timeout: 600_000 });
    assert.equal(r.signal, null, `the child was killed by ${r.signal}\n${r.stderr}`);
    assert.equal(r.status, 0, `the child exited with ${r.status}\n${r.stderr}`);
    const out = JSON.parse(r.stdout.trim().split('\n').pop() ?? '') as {
      peak: number;
      maxMapCount: number;
      intact: boolean;
      reports: { peak: number; refusals: number; snapshots: number; error?: string }[];
    };
    t.diagnostic(JSON.stringify(out));
    for (const w of out.reports) assert.equal(w.error, undefined, w.error);
    assert.equal(out.intact, true);
    // Budgets decided at the same moment by several threads can pass the
    // shared limit (half of vm.max_map_count, less the reserve) by what those
    // decisions need together, never by the other half of the kernel's limit.
    const peak = Math.max(out.peak, ...out.reports.map((w) => w.peak));
    assert.ok(peak < out.maxMapCount - RESERVE, `${peak} mappings: near vm.max_map_count (${out.maxMapCount})`);
    // Fragmenting as they did (about 64,000 mappings wanted), the workers
    // reached the shared budget wherever it is smaller than that.
    if (Math.floor(out.maxMapCount / 2) - RESERVE < 50_000) {
      assert.ok(peak > Math.floor(out.maxMapCount / 2) - 2 * RESERVE, `only ${peak} mappings: the workers never reached the budget`);
    }
  });
});

describe('the process-wide descriptor budget', { skip: linuxOnly }, () => {
  it('is half of the descriptor limit, less what the rest of the process holds, never below the floor', () => {
    assert.equal(fdBudgetFrom(1024, 30, 0), 512 - 30);
    // This backend's own layers are not the rest of the process.
    assert.equal(fdBudgetFrom(1024, 130, 100), 512 - 30);
    assert.equal(fdBudgetFrom(64, 200, 0), FD_FLOOR);
  });

  it('reads the process count again after RECHECK layers of change, at every decision near the budget, and follows a changed limit', () => {
    let open = 100;
    let nofile = 1024;
    let reads = 0;
    const budget = new ProcessFdBudget(
      () => {
        reads++;
        return open;
      },
      () => nofile,
    );
    assert.equal(budget.limit(0), 512 - 100);
    assert.equal(reads, 1);
    budget.limit(FD_RECHECK - 1);
    assert.equal(reads, 1);
    // Another thread opened 200 more: seen once this backend has changed by RECHECK.
    open += 200 + FD_RECHECK;
    assert.equal(budget.limit(FD_RECHECK), 512 - 300);
    assert.equal(reads, 2);
    // The limit lowered while running, and the process near it: every decision reads.
    nofile = 2 * (300 + FD_RECHECK + 8);
    open += FD_RECHECK; // this backend's own new layers
    assert.equal(budget.limit(2 * FD_RECHECK), FD_RECHECK + 8);
    budget.limit(2 * FD_RECHECK, 1);
    assert.equal(reads, 4);
  });

  it("counts another backend's layers in this process against this backend's budget", () => {
    const nofile = sys.fdLimit();
    const held = 16;
    if (nofile === undefined || Math.floor(nofile / 2) - sys.countOpenFds()! < 4 * held) {
      return void assert.ok(true, 'the descriptor limit leaves too little room to compare');
    }
    const a = new LinuxBackend();
    const segs = Array.from({ length: held }, () => a.create(a.pageSize));
    try {
      assert.equal(a.layerCount(), held);
      // A backend loaded now (another thread's, say) sees A's layers as the rest of the process.
      const b = new LinuxBackend();
      try {
        assert.ok(b.fdBudget <= Math.floor(nofile / 2) - held, `${b.fdBudget} layers allowed with ${held} held by another backend`);
        // B read the count before opening descriptors of its own: a count now finds no fewer.
        assert.ok(b.fdBudget >= fdBudgetFrom(nofile, sys.countOpenFds()!, 0), `${b.fdBudget} layers allowed`);
      } finally {
        b.shutdown();
      }
    } finally {
      for (const s of segs) a.release(s);
      a.shutdown();
    }
  });
});

describe('reclaiming descriptors', { skip: linuxOnly }, () => {
  it('never leaves more layers open than not reclaiming at all, and every kept snapshot reads right', () => {
    // Snapshots of a segment written on every 8th page, shifted each round,
    // kept unmapped: they share most of their layers, so flattening one
    // closes none of them and only adds its own.
    const run = (fdBudget: number): { layers: number; intact: boolean } => {
      const b = new LinuxBackend({ fdBudget });
      useBackend(b);
      try {
        const pages = 256;
        const seg = Segment.create(pages * 4096);
        const bytes = new Uint8Array(seg.buffer);
        const kept: { snap: Segment; round: number }[] = [];
        for (let round = 1; round <= 48; round++) {
          for (let p = round % 8; p < pages; p += 8) bytes[p * 4096] = round;
          kept.push({ snap: seg.clone(), round });
        }
        const layers = b.layerCount();
        let intact = true;
        for (const { snap, round } of kept) {
          const view = new Uint8Array(snap.buffer);
          for (let p = 0; p < pages; p++) {
            let want = 0;
            for (let r = round; r >= 1; r--) if (r % 8 === p % 8) { want = r; break; }
            if (view[p * 4096] !== want) intact = false;
          }
          snap.close();
        }
        seg.close();
        return { layers, intact };
      } finally {
        useBackend(new LinuxBackend());
      }
    };
    const free = run(100_000);
    const tight = run(4);
    assert.equal(free.intact, true);
    assert.equal(tight.intact, true);
    assert.ok(tight.layers <= free.layers, `${tight.layers} layers with a budget of 4, ${free.layers} without one`);
  });
});
