// Stale ArrayBuffers of closed segments can never reach memory: not right
// after close(), and not after their addresses are reused by new segments.
// Segments dropped without close() live as long as their ArrayBuffers, and
// are released after.
// The checks run in one child process for all backends, so a SIGSEGV fails
// these tests instead of ending the test runner.
import { describe, it, before } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync, type SpawnSyncReturns } from 'node:child_process';
import * as path from 'node:path';
import { backends } from './backends.ts';
import { projectRoot, tsCommand } from './helpers/runtime.ts';

const root = projectRoot;
const fixture = path.join(root, 'test', 'fixtures', 'stale-views.ts');

interface Report {
  backend: string;
  staleBuffers: number;
  newSegments: number;
  reused: number;
  touched: number;
  collected: number;
  released: number;
}

describe('views of a closed or collected segment', () => {
  let child: SpawnSyncReturns<string>;
  const reports = new Map<string, Report>();
  before(() => {
    const { command, args } = tsCommand(fixture, backends.map((b) => b.name), { exposeGc: true });
    child = spawnSync(command, args, {
      cwd: root,
      encoding: 'utf8',
      env: { ...process.env, MEMFORK_BACKEND: '' },
    });
    for (const line of child.stdout.split('\n')) {
      if (!line.startsWith('{')) continue;
      const r = JSON.parse(line) as Report;
      reports.set(r.backend, r);
    }
  });

  it('are checked in a child process that exits cleanly, without a signal', () => {
    const detail = `status ${child.status}, signal ${child.signal}\nstdout: ${child.stdout}\nstderr: ${child.stderr}`;
    assert.equal(child.error, undefined, detail);
    assert.equal(child.signal, null, detail);
    assert.equal(child.status, 0, detail);
  });

  for (const b of backends) {
    it(`read as empty and write nowhere, even after the memory is reused, on the ${b.name} backend`, (t) => {
      const report = reports.get(b.name);
      assert.ok(report !== undefined, `no report for ${b.name}: status ${child.status}, signal ${child.signal}\nstderr: ${child.stderr}`);
      t.diagnostic(`${report.newSegments} new segments, ${report.reused} over freed addresses`);
      assert.equal(report.touched, 0);
      assert.ok(report.staleBuffers > 0);
      // The point of the test is reuse: the new segments must have landed on freed memory.
      assert.ok(report.reused > 0, 'no new segment reused a freed address');
    });

    it(`keep a collected segment alive while reachable, and let it be released after, on the ${b.name} backend`, () => {
      const report = reports.get(b.name);
      assert.ok(report !== undefined, `no report for ${b.name}: status ${child.status}, signal ${child.signal}\nstderr: ${child.stderr}`);
      assert.ok(report.collected > 0);
      assert.equal(report.released, report.collected, `${report.released} of ${report.collected} collected segments released`);
    });
  }
});
