// Resource limits, each in a child process of its own so nothing here changes
// for this process or the system: a low descriptor limit (RLIMIT_NOFILE), a
// tight address-space limit (RLIMIT_AS), a file-size limit (RLIMIT_FSIZE),
// and the mapping limit (vm.max_map_count, not changed: the child fills its
// own address space with mappings until it is near). The children are in
// test/fixtures/limits-*.ts; each prints one JSON line of findings.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { backend } from '../src/index.ts';
import { linuxOnly } from './helpers/proc.ts';
import { projectRoot, runtime, tsCommand } from './helpers/runtime.ts';
import type { ErrorInfo } from './fixtures/limits-common.ts';

function hasPrlimit(): boolean {
  return spawnSync('prlimit', ['--version'], { encoding: 'utf8' }).status === 0;
}

const skip =
  linuxOnly ||
  (backend.name !== 'linux' && `the ${backend.name} backend is loaded, not linux`) ||
  (!hasPrlimit() && 'prlimit (util-linux) is not installed');

/**
 * Runs a fixture on this runtime and returns what it printed. Each fixture
 * sets its own limit with prlimit, relative to what it uses once loaded, so
 * the descriptors and limits this process inherited do not decide its outcome.
 */
function runFixture(fixture: string): Record<string, unknown> {
  const { command, args } = tsCommand(path.join(projectRoot, 'test', 'fixtures', fixture));
  const r = spawnSync(command, args, {
    cwd: projectRoot,
    encoding: 'utf8',
    timeout: 120_000,
  });
  assert.equal(r.signal, null, `${fixture} was killed by ${r.signal}\n${r.stderr}`);
  assert.equal(r.status, 0, `${fixture} exited with ${r.status}\n${r.stderr}`);
  const line = r.stdout.trim().split('\n').pop() ?? '';
  return JSON.parse(line) as Record<string, unknown>;
}

function assertSegmentError(e: unknown, code: string, errno: number, what: string): void {
  const err = e as ErrorInfo | null;
  assert.ok(err !== null, `${what} succeeded`);
  assert.equal(err.name, 'SegmentError', `${what}: ${err.name}: ${err.message}`);
  assert.equal(err.code, code, `${what}: code`);
  assert.equal(err.errno, errno, `${what}: errno`);
  assert.ok(typeof err.syscall === 'string' && err.syscall.length > 0, `${what}: syscall`);
  assert.ok(err.message.startsWith(`${err.syscall} ${code}: `), `${what}: message "${err.message}"`);
}

test('out of file descriptors, create() throws SegmentError EMFILE, a clone at the limit throws EMFILE or holds the right bytes, nothing is lost, and work resumes once segments close', { skip }, (t) => {
  const out = runFixture('limits-fds.ts');
  t.diagnostic(JSON.stringify(out));
  assertSegmentError(out.createError, 'EMFILE', 24, 'create() at the limit');
  assert.ok((out.created as number) > 10, 'segments were created before the limit');
  assert.equal(out.allIntact, true, 'every segment made before the limit reads as written');
  assert.equal(out.spreadIntact, true, 'a segment compacted to free descriptors reads as before');
  assert.ok(
    (out.layersAtLimit as number) <= (out.created as number) + (out.layersAtStart as number),
    'no layer is held beyond one per segment',
  );
  // At the limit memfork may compact and retry: the clone fails with EMFILE
  // or succeeds, and either way every segment keeps its bytes.
  if (out.cloneError !== null) {
    assertSegmentError(out.cloneError, 'EMFILE', 24, 'clone() of a written segment at the limit');
  } else {
    assert.equal(out.cloneHolds, true, 'a clone made at the limit holds the source\'s bytes');
    assert.equal(out.cloneSeparate, true, 'a write to that clone does not show in its source');
  }
  assert.equal(out.sourceIntactAfterClone, true, 'the source of the clone is unchanged');
  assert.equal(out.firstCloneIntact, true, 'an earlier clone is unchanged');
  assert.equal(out.allIntactAtLimit, true, 'every other segment is unchanged');
  assert.equal(out.spreadIntactAtLimit, true, 'the compacted segment is unchanged');
  assert.equal(out.resumeError, undefined, 'no error once descriptors are free');
  assert.equal(out.resumed, true, 'create, clone and restore work again');
  assert.equal(out.stillIntact, true, 'the remaining segments are intact');
  assert.equal(out.layersAtEnd, 0, 'every layer closed');
  assert.equal(out.segmentsAtEnd, 0, 'every segment released');
});

// Deno's V8 grows its heap's address space as it goes, and under the tight
// limit this fixture sets its own allocation aborts (out of memory, in V8),
// whatever memfork does.
const skipAs = skip || (runtime === 'deno' && "Deno's own heap cannot grow under the limit the fixture sets");

test('under an address-space limit, create() beyond it throws SegmentError ENOMEM, from() and clone() throw ENOMEM or copy right, and nothing is lost', { skip: skipAs }, (t) => {
  const out = runFixture('limits-as.ts');
  t.diagnostic(JSON.stringify(out));
  if (typeof out.skip === 'string') {
    t.skip(out.skip);
    return;
  }
  assertSegmentError(out.createError, 'ENOMEM', 12, 'create() of 1 GiB with 128 MiB to spare');
  // memfork may free address space of its own and retry: either outcome.
  if (out.fromError !== null) assertSegmentError(out.fromError, 'ENOMEM', 12, 'from() of 160 MiB with 128 MiB to spare');
  else assert.equal(out.fromHolds, true, 'from() that fit holds the source\'s bytes');
  if (out.cloneError !== null) assertSegmentError(out.cloneError, 'ENOMEM', 12, 'clone() of 256 MiB with 128 MiB to spare');
  else assert.equal(out.cloneHolds, true, 'clone() that fit holds the source\'s bytes');
  assert.equal(out.intact, true, 'every segment reads as before');
  assert.equal(out.usableError, undefined, 'what fits still works');
  assert.equal(out.usable, true, 'a small clone and a restore work under the limit');
  if (out.bigRestoreError !== null) assertSegmentError(out.bigRestoreError, 'ENOMEM', 12, 'restore() of 256 MiB under the limit');
  assert.equal(out.bigAfterRestore, true, 'restore() of the big segment either worked or left it as it was');
  assert.equal(out.snapAfterRestore, true, 'the snapshot it restored from is unchanged');
});

test('under a file-size limit, a segment larger than it throws SegmentError EFBIG and the process lives on', { skip }, (t) => {
  const out = runFixture('limits-fsize.ts');
  t.diagnostic(JSON.stringify(out));
  if (typeof out.skip === 'string') {
    t.skip(out.skip);
    return;
  }
  assertSegmentError(out.cloneError, 'EFBIG', 27, 'clone() of a written 8 MiB segment under a 2 MiB file-size limit');
  assert.equal(out.bigIntact, true, 'the source of the failed clone is unchanged');
  assert.equal(out.snapIntact, true, 'its snapshot is unchanged');
  if (out.restoreError !== null) assertSegmentError(out.restoreError, 'EFBIG', 27, 'restore() under the limit');
  assert.equal(out.bigAfterRestore, true, 'restore() either worked or left the segment as it was');
  assertSegmentError(out.createError, 'EFBIG', 27, 'create() of 8 MiB under a 2 MiB file-size limit');
  assertSegmentError(out.fromError, 'EFBIG', 27, 'from() of 3 MiB under a 2 MiB file-size limit');
  assert.equal(out.smallWorks, true, 'a segment under the limit clones and restores');
});

test('near vm.max_map_count, clone() and restore() of a segment with thousands of runs throw SegmentError ENOMEM or work, and lose no data', { skip }, (t) => {
  const out = runFixture('limits-maps.ts');
  t.diagnostic(JSON.stringify(out));
  if (typeof out.skip === 'string') {
    t.skip(out.skip);
    return;
  }
  assert.ok((out.runs as number) > 1000, 'the segment has thousands of runs');
  // Cloning and then reading the clone at the limit: a clean ENOMEM, or (when
  // compaction found room) the clone's bytes right.
  if (out.cloneError !== null) assertSegmentError(out.cloneError, 'ENOMEM', 12, 'clone() at the mapping limit');
  else assert.equal(out.cloneHolds, true, 'the clone made at the limit reads what it was cloned from');
  const restores = [
    ...(out.restores as { error: ErrorInfo | null; intact: boolean }[]),
    { error: out.restoreError as ErrorInfo | null, intact: out.freshAfterRestore as boolean },
  ];
  for (const [i, r] of restores.entries()) {
    if (r.error !== null) assertSegmentError(r.error, 'ENOMEM', 12, `restore() ${i + 1}`);
    assert.equal(r.intact, true, `restore() ${i + 1} either worked or left its target as it was${r.error ? ` (${r.error.message})` : ''}`);
  }
  if (out.freezeError !== null) assertSegmentError(out.freezeError, 'ENOMEM', 12, 'clone() of thousands of written runs at the limit');
  assert.equal(out.intact, true, 'the segment and its clones read as before');
  assert.equal(out.afterFillerError, null, 'no error once mappings are free again');
  assert.equal(out.afterFiller, true, 'clone and restore work again once mappings are free');
});
