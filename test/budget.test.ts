// One mapping budget per process: vm.max_map_count is shared by every thread,
// so every thread's memfork works out its budget from the process's real
// mapping count (platform/linux/map-budget.ts).
import { describe, it } from 'node:test';
import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { ProcessMapBudget, RECHECK, RESERVE, budgetFrom } from '../platform/linux/map-budget.ts';
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
