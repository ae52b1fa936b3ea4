// Stale ArrayBuffers of closed segments can never reach memory: not right
// after close(), and not after their addresses are reused by new segments.
// Segments dropped without close() live as long as their ArrayBuffers, and
// are released after.
// The checks run in a child process, so a SIGSEGV fails this test instead of
// ending the test runner.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { backends } from './backends.ts';

const fixture = path.join(__dirname, 'fixtures', 'stale-views.ts');
const root = path.join(__dirname, '..');

describe('views of a closed or collected segment', () => {
  for (const b of backends) {
    it(`read as empty and write nowhere, even after the memory is reused, on the ${b.name} backend`, (t) => {
      const child = spawnSync(process.execPath, ['--expose-gc', '-r', 'ts-node/register', fixture, b.name], {
        cwd: root,
        encoding: 'utf8',
        env: { ...process.env, MEMFORK_BACKEND: '' },
      });
      const detail = `status ${child.status}, signal ${child.signal}\nstdout: ${child.stdout}\nstderr: ${child.stderr}`;
      assert.equal(child.error, undefined, detail);
      assert.equal(child.signal, null, detail);
      assert.equal(child.status, 0, detail);
      const lines = child.stdout.trim().split('\n');
      const report = JSON.parse(lines[lines.length - 1]!) as {
        staleBuffers: number;
        newSegments: number;
        reused: number;
        touched: number;
        collected: number;
        released: number;
      };
      t.diagnostic(`${report.newSegments} new segments, ${report.reused} over freed addresses`);
      assert.equal(report.touched, 0);
      assert.ok(report.staleBuffers > 0);
      // The point of the test is reuse: the new segments must have landed on freed memory.
      assert.ok(report.reused > 0, `no new segment reused a freed address: ${detail}`);
      // Segments dropped without close() are released once their views are gone.
      assert.equal(report.released, report.collected, `${report.released} of ${report.collected} collected segments released`);
    });
  }
});
