// A segment's buffers are never moved out of it: structuredClone and every
// postMessage with one in the transfer list throw DataCloneError, or copy it
// (Node.js 20, and BroadcastChannel, which has no transfer list), and the
// segment keeps its memory. Run in a child process (test/fixtures/transfers.ts),
// so that a moved buffer read after close() or garbage collection, a SIGSEGV,
// fails this test instead of killing the runner.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { projectRoot, runtime, tsCommand } from './helpers/runtime.ts';
import type { Line } from './fixtures/transfers.ts';

const FILL = 0x5a;
const nodeMajor = Number.parseInt(process.versions.node, 10);
/** Node.js 20 copies an ArrayBuffer over outside memory instead of moving it; every other runtime here refuses. */
const copies = runtime === 'node' && nodeMajor < 22;

function runFixture(): Line[] {
  const { command, args } = tsCommand(path.join(projectRoot, 'test', 'fixtures', 'transfers.ts'), [], { exposeGc: true });
  const child = spawnSync(command, args, { cwd: projectRoot, encoding: 'utf8', timeout: 120_000 });
  const output = `${child.stdout}\n${child.stderr}`;
  assert.equal(child.signal, null, `the child died of ${child.signal} (a moved buffer read unmapped memory):\n${output}`);
  assert.equal(child.status, 0, `the child failed:\n${output}`);
  return child.stdout
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Line);
}

let lines: Line[] | undefined;
const results = (): Line[] => (lines ??= runFixture());

test('structuredClone and postMessage refuse (or copy) a segment buffer in the transfer list, and the segment keeps its bytes', () => {
  const guarded = results().filter((l) => !l.path.includes('taken before'));
  const paths = new Set(guarded.map((l) => l.path));
  for (const p of ['structuredClone', 'structuredClone (options iterable)', 'MessagePort (web)', 'MessagePort (worker_threads)', 'Worker (worker_threads)']) {
    assert.ok(paths.has(p), `${p} was tried`);
  }
  if (runtime !== 'node') assert.ok(paths.has('Worker (web)'), 'a web Worker was tried');
  for (const l of guarded) {
    const what = `${l.path}, ${l.source}, then ${l.end}`;
    assert.notEqual(l.outcome, 'moved', `${what}: the buffer was moved out of the segment`);
    assert.equal(l.segmentIntact, true, `${what}: the segment's bytes changed`);
    assert.equal(l.originLength, l.source === 'buffer' ? 3 * 4096 : 2 * 4096, `${what}: the origin lost its memory`);
    assert.equal(l.originFirst, FILL, `${what}: the origin reads other bytes`);
    if (l.end === 'close') assert.equal(l.originAfter, 0, `${what}: close() did not detach the origin`);
    const copy = copies || l.path.startsWith('BroadcastChannel');
    if (copy) {
      assert.equal(l.outcome, 'copied', `${what}: expected a copy, got ${l.outcome} ${l.error ?? ''}`);
      assert.notEqual(l.aliases, true, `${what}: the copy aliases the segment`);
      assert.equal(l.resultFirst, FILL, `${what}: the copy read after ${l.end} holds other bytes`);
    } else {
      assert.equal(l.outcome, 'refused', `${what}: expected DataCloneError, got ${l.outcome}`);
      assert.match(l.error ?? '', /^DataCloneError: /, `${what}: refused with ${l.error}`);
    }
  }
});

test('a buffer moved by a transfer memfork cannot refuse still reads the segment’s bytes after close()', () => {
  const bypass = results().filter((l) => l.path.includes('taken before'));
  assert.ok(bypass.length > 0, 'the transfers taken before memfork loaded were tried');
  for (const l of bypass) {
    const what = `${l.path}, ${l.source}`;
    assert.equal(l.segmentIntact, true, `${what}: the segment's bytes changed`);
    assert.equal(l.originAfter, 0, `${what}: close() did not detach the origin`);
    if (l.outcome === 'refused') assert.match(l.error ?? '', /DataCloneError|TypeError/, `${what}: ${l.error}`);
    else assert.equal(l.resultFirst, FILL, `${what}: after close() the ${l.outcome} buffer reads other bytes`);
  }
});
