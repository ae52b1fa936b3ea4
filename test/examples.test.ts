// Runs every example in its own process with small sizes, and checks that it
// exits 0 and prints what it is meant to show.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { backend } from '../src/index.ts';
import { projectRoot, tsCommand } from './helpers/runtime.ts';

const linuxOnly = {
  skip:
    process.platform !== 'linux'
      ? 'Linux only: the example reads /proc or maps gigabytes lazily'
      : backend.name !== 'linux'
        ? `needs copy-on-write: the ${backend.name} backend copies eagerly`
        : false,
};

interface Result {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs `examples/<file>` on this runtime in a child process. */
function runExample(file: string, args: string[] = [], options: { exposeGc?: boolean; env?: Record<string, string> } = {}): Promise<Result> {
  const { command, args: argv } = tsCommand(path.join(projectRoot, 'examples', file), args, options);
  return new Promise((resolve) => {
    execFile(
      command,
      argv,
      { cwd: projectRoot, env: { ...process.env, NO_COLOR: '1', ...options.env }, timeout: 120_000, maxBuffer: 16 << 20 },
      (err, stdout, stderr) => {
        const code = err === null ? 0 : typeof err.code === 'number' ? err.code : null;
        resolve({ code, stdout, stderr });
      },
    );
  });
}

function assertSucceeded(r: Result): void {
  assert.equal(r.code, 0, `exit code ${r.code}\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`);
  assert.doesNotMatch(r.stdout, /✘/, 'no check failed');
}

test('the copy-on-write demo writes one page with a, clones it, writes b into the clone, and shows each side\'s address and byte', async () => {
  const r = await runExample('cow-demo.ts');
  assertSucceeded(r);
  assert.match(r.stdout, /one page, as in Mach's vm_remap example/);
  assert.match(r.stdout, /^1\. origin = Segment\.create\(\d+\); its page written 'a'$/m);
  assert.match(r.stdout, /^2\. clone = origin\.clone\(\)$/m);
  assert.match(r.stdout, /^3\. clone's first byte written 'b'$/m);
  const origins = [...r.stdout.matchAll(/^\s+origin\s+(0x[0-9a-f]+)\s+reads ('.')$/gm)].map((m) => [m[1], m[2]]);
  const clones = [...r.stdout.matchAll(/^\s+clone\s+(0x[0-9a-f]+)\s+reads ('.')$/gm)].map((m) => [m[1], m[2]]);
  assert.deepEqual(
    origins.map((o) => o[1]),
    ["'a'", "'a'", "'a'"],
    'the origin reads a after every step',
  );
  assert.deepEqual(
    clones.map((c) => c[1]),
    ["'a'", "'b'"],
    'the clone reads a, then b',
  );
  assert.equal(new Set(origins.map((o) => o[0])).size, 1, 'the origin keeps its address');
  assert.notEqual(clones[0]![0], origins[0]![0], 'the clone has an address of its own');
  assert.match(r.stdout, /clone reads 'b', origin still reads 'a'/);
});

test('the copy-on-write demo shows memory growing by the page written, not at all for the clone, and by one page for the write into it', linuxOnly, async () => {
  const one = await runExample('cow-demo.ts');
  assertSucceeded(one);
  const lines = (out: string) => [...out.matchAll(/^\s+memory: (.*)$/gm)].map((m) => m[1]!.replace(/:.*$/, ''));
  assert.deepEqual(lines(one.stdout), ['1 page (+1)', '1 page (+0)', '2 pages (+1)'], one.stdout);
  assert.match(one.stdout, /memory per step \(pages\): 1, 1, 2$/m);
  const big = await runExample('cow-demo.ts', ['--size', '32M']);
  assertSucceeded(big);
  const pages = (32 * 2 ** 20) / backend.pageSize;
  assert.deepEqual(lines(big.stdout), [`${pages} pages (+${pages})`, `${pages} pages (+0)`, `${pages + 1} pages (+1)`], big.stdout);
  assert.match(big.stdout, /the clone cost 0 pages, the write 1 page/);
});

test('the checkpoint simulation rolls back exactly', async () => {
  const r = await runExample('checkpoint-simulation.ts', ['--side', '192', '--generations', '20', '--every', '5']);
  assertSucceeded(r);
  assert.match(r.stdout, /✔ after restore\(\) the world is exactly generation \d+ again/);
  assert.match(r.stdout, /✔ replaying gives exactly the same generation 20/);
  assert.match(r.stdout, /OK: checkpoints and rollbacks are exact/);
});

test('the snapshot table saves a consistent file while the table keeps changing', async () => {
  const r = await runExample('snapshot-table.ts', ['--rows', '32768', '--chunk', '64K']);
  assertSucceeded(r);
  assert.match(r.stdout, /✔ the file equals the snapshot byte for byte/);
  assert.match(r.stdout, /✔ the file is the table as it was at the snapshot/);
  assert.match(r.stdout, /✔ the live table moved on meanwhile/);
  assert.match(r.stdout, /^OK:/m);
});

test('the fuzz loop resets its target with restore() and prints the rate', async () => {
  const r = await runExample('fuzz-restore.ts', ['--size', '8M', '--iterations', '100']);
  assertSucceeded(r);
  assert.match(r.stdout, /ran 100 inputs in [\d.]+ s: \d+ restores per second/);
  assert.match(r.stdout, /✔ the whole heap is byte for byte the starting state at the end/);
  assert.match(r.stdout, /^OK$/m);
});

test('the large segment example works past 4 GiB through view() windows', linuxOnly, async () => {
  const r = await runExample('large-segment.ts', ['--size', '5G', '--window', '512M']);
  assertSucceeded(r);
  if (backend.maxViewLength <= 2 ** 32) {
    assert.match(r.stdout, /✔ buffer throws RangeError pointing to view\(\)/);
  } else {
    assert.match(r.stdout, /✔ buffer covers all/);
  }
  assert.match(r.stdout, /✔ the origin still reads its own marker and 0 in all 10 windows/);
  assert.match(r.stdout, /✔ after clone\.restore\(origin\) the clone reads as the origin again/);
  assert.match(r.stdout, /^OK$/m);
});

test('the bench in quick mode prints its table and writes JSON and SVG', async () => {
  const out = fs.mkdtempSync(path.join(os.tmpdir(), 'memfork-bench-'));
  try {
    const r = await runExample('bench.ts', ['--quick', '--sizes', '8M', '--chain', '20', '--no-matrix', '--out', out], { exposeGc: true });
    assert.equal(r.code, 0, `exit code ${r.code}\n${r.stdout}\n${r.stderr}`);
    assert.match(r.stdout, /^case\s+size\s+memfork\s+copy: slice\(\)/m);
    for (const row of ['fill', 'first clone', 'clone, nothing written', 'clone after 1% written, random', 'clone after 100% written', 'restore loop']) {
      assert.match(r.stdout, new RegExp(`^${row.replace(/[()%]/g, '\\$&')}`, 'm'), `row ${row}`);
    }
    const json = JSON.parse(fs.readFileSync(path.join(out, 'bench.json'), 'utf8')) as { rows: { case: string; memfork: { n: number } }[] };
    assert.ok(json.rows.length >= 10);
    assert.ok(json.rows.every((row) => row.memfork.n >= 1));
    const svg = fs.readFileSync(path.join(out, 'bench.svg'), 'utf8');
    assert.match(svg, /^<svg [^>]*xmlns="http:\/\/www\.w3\.org\/2000\/svg"/);
    assert.match(svg, /<rect [^>]*fill="#2b8a3e"/);
  } finally {
    fs.rmSync(out, { recursive: true, force: true });
  }
});

interface MatrixJson {
  matrix: {
    peer: { path?: string; missing?: string };
    caseProcess: string;
    cases: {
      name: string;
      pattern: string;
      mode: string;
      memforkOutcome: string;
      memfork?: { roundsDone: number; cloneMs: number[]; verify?: { wrongBytes: number; checkedBytes: number; segments: number } };
      fork?: { roundsDone: number; forkMs: number[] };
      forkOutcome: string;
      summary: { patternsMatch?: boolean; floorMs: number; newFloorMs: number };
    }[];
    geomean: { size: number | 'all'; cases: number; of: number }[];
  };
}

test('the bench matrix records a crashed case and goes on, checks every kept snapshot, and runs the fork peer on the same pages', linuxOnly, async () => {
  const out = fs.mkdtempSync(path.join(os.tmpdir(), 'memfork-bench-'));
  const crashed = 'stride3-kept-8388608';
  try {
    const r = await runExample('bench.ts', ['--quick', '--matrix-only', '--sizes', '8M', '--rounds', '3', '--reserve', '0', '--out', out], {
      exposeGc: true,
      env: { MEMFORK_BENCH_CRASH_CASE: crashed },
    });
    assert.equal(r.code, 0, `exit code ${r.code}\n${r.stdout}\n${r.stderr}`);
    assert.match(r.stdout, /^8 MiB:$/m);
    assert.match(r.stdout, /^case\s+memfork clone\s+fork\(\)\s+fork\/memfork\s+floor\s+new-memory floor/m);
    assert.match(r.stdout, /^all sizes: \d+ of 21 cases failed/m);
    const json = JSON.parse(fs.readFileSync(path.join(out, 'bench.json'), 'utf8')) as MatrixJson;
    const cases = json.matrix.cases;
    // On Node.js the cases run as the package ships (a bundle), not with the TypeScript compiler in their heap.
    const native = 'Bun' in globalThis || 'Deno' in globalThis;
    assert.match(json.matrix.caseProcess, native ? /^TypeScript run by the runtime/ : /^bundled with tsup/);
    assert.match(r.stdout, new RegExp(`memfork cases: ${native ? 'TypeScript' : 'bundled'}`));
    assert.equal(cases.length, 21, 'seven patterns, three modes');
    for (const c of cases) assert.match(r.stdout, new RegExp(`^${c.name.replace(/[()%]/g, '\\$&')}\\s`, 'm'), `a row for ${c.name}`);
    const crash = cases.find((c) => c.pattern === 'stride3' && c.mode === 'kept')!;
    assert.match(crash.memforkOutcome, /^crashed \(SIGKILL\)/);
    assert.equal(crash.memfork, undefined);
    for (const c of cases.filter((x) => x !== crash)) {
      assert.ok(c.memfork !== undefined, `${c.name}: ${c.memforkOutcome}`);
      assert.equal(c.memfork.roundsDone, 3, `${c.name}: ${c.memforkOutcome}`);
      assert.equal(c.memfork.cloneMs.length, 3);
      assert.equal(c.memfork.verify?.wrongBytes, 0, `${c.name}: every byte as cloned`);
      assert.equal(c.memfork.verify?.segments, c.mode === 'letgo' ? 1 : 4, `${c.name}: the segment and each kept snapshot checked`);
      assert.equal(c.memfork.verify?.checkedBytes, c.memfork.verify?.segments * 8 * 2 ** 20);
    }
    if (json.matrix.peer.path !== undefined) {
      for (const c of cases) {
        assert.equal(c.fork?.roundsDone, 3, `${c.name}: fork peer ${c.forkOutcome}`);
        assert.equal(c.fork?.forkMs.length, 3);
        assert.ok(c.summary.floorMs > 0, `${c.name}: a floor`);
        assert.ok(c.summary.newFloorMs > 0, `${c.name}: a new-memory floor`);
        if (c !== crash) assert.equal(c.summary.patternsMatch, true, `${c.name}: memfork and the fork peer wrote the same pages`);
      }
    } else {
      assert.match(r.stdout, /fork\(\) peer: no C compiler/);
      assert.ok(cases.every((c) => c.fork === undefined && /^not run/.test(c.forkOutcome)));
    }
    const svg = fs.readFileSync(path.join(out, 'bench.svg'), 'utf8');
    assert.match(svg, /^<svg [^>]*xmlns="http:\/\/www\.w3\.org\/2000\/svg"/);
    assert.match(svg, /pattern matrix/);
  } finally {
    fs.rmSync(out, { recursive: true, force: true });
  }
});
