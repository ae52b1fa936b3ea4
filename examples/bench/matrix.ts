// The bench's pattern matrix: every write pattern × what happens to the
// snapshots × size, memfork against fork() used as a snapshot, and the copy
// floor, measured in the same run. Driven by examples/bench.ts.
//
// memfork cases run in child processes (matrix-case.ts): a case that crashes
// its process is recorded as "crashed (SIGNAL)" and the bench goes on. The
// fork() peer is fork-peer.c, built here with the system's C compiler into
// the output folder; without a compiler the fork column says why it is empty.
import { spawn, spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { modes, patternSeed, patterns } from './pattern.ts';
import type { ModeId, PatternId } from './pattern.ts';
import type { CaseResult, CaseSpec } from './matrix-case.ts';

export interface MatrixOptions {
  sizes: number[];
  rounds: number;
  seed: number;
  /** MemAvailable bytes a case leaves free (it stops its rounds instead). */
  reserve: number;
  caseTimeoutMs: number;
  /** One child process for all memfork cases of a size (restarted after a crash), instead of one per case. */
  shared: boolean;
  patterns: PatternId[];
  modes: ModeId[];
  outDir: string;
  log: (line: string) => void;
}

/** What fork-peer prints. */
export interface PeerResult {
  outcome: 'ok' | 'error' | 'stopped';
  error: string;
  roundsDone: number;
  pagesPerRound: number;
  checksum: number;
  forkMs: number[];
  writeMs: number[];
  readMs: number[];
  machineBefore: number;
  machineAfter: number;
  pssBefore: number;
  pssAfter: number;
  pageTablesBefore: number;
  pageTablesAfter: number;
  childrenPrivateDirty: number;
  selfPrivateDirty: number;
  children: number;
  /** copyMs into touched memory; newCopyMs into new memory (-1: not measured; absent from an older peer). */
  floor: { copyMs: number; newCopyMs?: number; pages: number; runs: number; dropMicrosPerPage: number; batchedDropMicrosPerPage: number };
}

export interface Summary {
  cloneMs: { median: number; min: number };
  writeMs: number;
  forkMs: { median: number; min: number };
  forkWriteMs: number;
  /** fork() median / memfork clone() median. */
  ratio: number;
  /** (writes + fork()) / (writes + clone()), medians per round. */
  roundRatio: number;
  floorMs: number;
  floorSource: string;
  /**
   * Round 1's pages copied once into new memory (C, pwritev into a new memory
   * file), as a kept snapshot's copies must be: fork() pays it at the writes
   * after it, memfork at the clone. NaN where not measured.
   */
  newFloorMs: number;
  // Memory, per snapshot in the kept modes, the whole growth over the case for snapshots let go:
  /** memfork: the case process's anonymous pages + its memory files' pages (each file once). */
  memforkBytes: number;
  /** fork: Pss_Anon summed over the peer and its children (every page once). */
  forkBytes: number;
  /** Machine-wide Shmem + AnonPages growth (other processes add noise). */
  memforkMachineBytes: number;
  forkMachineBytes: number;
  /** The case process's RssAnon + RssShmem growth (a file page mapped twice counts twice). */
  processBytes: number;
  /** memoryStats() layerBytes + privateBytes growth: memfork's own count. */
  accountedBytes: number;
  /** Private_Dirty of fork's children, per child. */
  forkChildDirtyBytes: number;
  mappings: number;
  mapsLines: number;
  wrongBytes: number;
  checkedBytes: number;
  patternsMatch: boolean | undefined;
}

export interface MatrixCase {
  size: number;
  pattern: PatternId;
  mode: ModeId;
  name: string;
  memfork?: CaseResult;
  /** ok, stopped, or what went wrong: "ENOMEM at round 1 (clone)", "crashed (SIGABRT)", "timed out after 600 s". */
  memforkOutcome: string;
  fork?: PeerResult;
  forkOutcome: string;
  summary: Summary;
}

export interface MatrixResult {
  rounds: number;
  seed: number;
  reserve: number;
  shared: boolean;
  peer: { path?: string; compiler?: string; missing?: string };
  /** How the memfork case processes ran: bundled, as the package ships, or through ts-node (and why). */
  caseProcess: string;
  skipped: { size: number; why: string }[];
  /** Per size: µs to drop one written page, by madvise() a page, process_madvise() batches (C), madvise() through koffi (JS). */
  drops: ({ size: number } & Drops)[];
  cases: MatrixCase[];
  /** Per size and over all: geometric means of fork/memfork over the cases where both ran. */
  geomean: { size: number | 'all'; clone: number; round: number; cases: number; failed: number; of: number }[];
}

// ---- small helpers ----------------------------------------------------------------

export function fmtMs(ms: number): string {
  if (!Number.isFinite(ms)) return '—';
  if (ms >= 1000) return `${(ms / 1000).toFixed(2)} s`;
  if (ms >= 10) return `${ms.toFixed(0)} ms`;
  if (ms >= 1) return `${ms.toFixed(1)} ms`;
  if (ms >= 0.01) return `${ms.toFixed(2)} ms`;
  return `${(ms * 1000).toFixed(1)} µs`;
}
export function fmtBytes(n: number): string {
  const a = Math.abs(n);
  if (a >= 2 ** 30) return `${+(n / 2 ** 30).toFixed(2)} GiB`;
  if (a >= 2 ** 20) return `${+(n / 2 ** 20).toFixed(1)} MiB`;
  if (a >= 2 ** 10) return `${+(n / 2 ** 10).toFixed(1)} KiB`;
  return `${n} B`;
}
const fmtUs = (us: number) => (Number.isFinite(us) ? `${us.toFixed(2)} µs` : '—');
const mib = (n: number) => (Number.isFinite(n) ? (n / 2 ** 20).toFixed(Math.abs(n) >= 100 * 2 ** 20 ? 0 : 1) : '—');
function median(v: number[]): number {
  if (v.length === 0) return NaN;
  const s = [...v].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}
const minOf = (v: number[]) => (v.length === 0 ? NaN : v.reduce((a, b) => Math.min(a, b)));
function geomean(v: number[]): number {
  return v.length === 0 ? NaN : Math.exp(v.reduce((a, x) => a + Math.log(x), 0) / v.length);
}
function memAvailable(): number {
  try {
    const m = /^MemAvailable:\s+(\d+) kB/m.exec(fs.readFileSync('/proc/meminfo', 'utf8'));
    return m === null ? NaN : Number(m[1]) * 1024;
  } catch {
    return NaN;
  }
}
/** `-1` (what fork-peer prints where it could not measure) as NaN. */
const known = (x: number) => (typeof x === 'number' && x >= 0 ? x : NaN);

/** The folder of this file: argv[1] is examples/bench.ts on every runtime; else from the working directory. */
function hereDir(): string {
  const fromArgv = process.argv[1] ? path.join(path.dirname(path.resolve(process.argv[1])), 'bench') : '';
  if (fromArgv && fs.existsSync(path.join(fromArgv, 'matrix-case.ts'))) return fromArgv;
  return path.resolve('examples', 'bench');
}

/** How to start a TypeScript file on this runtime, loading TypeScript as this process does. */
function tsChild(file: string): { command: string; args: string[] } {
  if ('Deno' in globalThis) {
    return { command: process.execPath, args: ['run', '--no-check', '--no-lock', '--allow-all', '--v8-flags=--expose-gc', file] };
  }
  if ('Bun' in globalThis) return { command: process.execPath, args: [file] };
  return { command: process.execPath, args: [...process.execArgv, file] };
}

/**
 * How to start a case process. On Node.js, matrix-case.ts bundled with the
 * library as the package ships it (tsup), into node_modules/.cache so that
 * koffi resolves from there: run through ts-node, a case process carries
 * the TypeScript compiler in its heap (about 60 MiB, against 6 for the
 * bundle), and every garbage collection a round brings on takes that much
 * longer, counted as memfork's time (a snapshot read through its 256 MiB
 * buffer is external memory to V8, which collects for it: a full
 * collection each round, 3 to 5 ms each under ts-node). Bun and Deno run
 * TypeScript themselves; where bundling fails, ts-node it is, and `how`
 * says so.
 */
function caseProcess(): { command: string; args: string[]; how: string; outDir?: string } {
  const file = path.join(hereDir(), 'matrix-case.ts');
  if ('Deno' in globalThis || 'Bun' in globalThis) return { ...tsChild(file), how: 'TypeScript run by the runtime' };
  const root = path.resolve(hereDir(), '..', '..');
  // One folder a bench process: two benches at once never share a file.
  const outDir = path.join(root, 'node_modules', '.cache', 'memfork-bench', String(process.pid));
  let why: string;
  try {
    const req = createRequire(path.join(root, 'package.json'));
    const cli = path.join(path.dirname(req.resolve('tsup/package.json')), (req('tsup/package.json') as { bin: { tsup: string } }).bin.tsup);
    const r = spawnSync(
      process.execPath,
      [cli, file, '--format', 'cjs', '--platform', 'node', '--target', 'node20', '--external', 'koffi', '--out-dir', outDir, '--no-config', '--silent'],
      { cwd: root, encoding: 'utf8' },
    );
    const out = path.join(outDir, 'matrix-case.js');
    if (r.status === 0 && fs.existsSync(out)) {
      const gc = process.execArgv.filter((a) => a === '--expose-gc');
      return { command: process.execPath, args: [...gc, out], how: 'bundled with tsup, as the package ships', outDir };
    }
    why = (r.stderr || r.error?.message || `tsup exited with ${r.status}`).trim().split('\n')[0]!;
  } catch (err) {
    why = (err as Error).message;
  }
  return { ...tsChild(file), how: `through ts-node (bundling failed: ${why})` };
}

// ---- the fork() peer ----------------------------------------------------------------

/** Builds fork-peer.c into `outDir` with $CC, cc, gcc or clang; or says why there is none. */
export function buildPeer(outDir: string): MatrixResult['peer'] {
  const source = path.join(hereDir(), 'fork-peer.c');
  const out = path.join(outDir, 'fork-peer');
  fs.mkdirSync(outDir, { recursive: true });
  const compilers = [process.env.CC, 'cc', 'gcc', 'clang'].filter((c): c is string => c !== undefined && c !== '');
  const failures: string[] = [];
  for (const cc of compilers) {
    const r = spawnSync(cc, ['-O2', '-o', out, source], { encoding: 'utf8', timeout: 60_000 });
    if (r.error !== undefined) {
      failures.push(`${cc}: ${(r.error as NodeJS.ErrnoException).code ?? r.error.message}`);
      continue;
    }
    if (r.status === 0 && fs.existsSync(out)) return { path: out, compiler: cc };
    failures.push(`${cc} failed: ${(r.stderr || '').trim().split('\n')[0] ?? `exit ${r.status}`}`);
  }
  return { missing: `no C compiler built fork-peer.c (${failures.join('; ')})` };
}

interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
}

function run(command: string, args: string[], timeoutMs: number): Promise<Exit> {
  return new Promise((resolve) => {
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-4000)));
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    child.on('error', (err) => {
      clearTimeout(timer);
      resolve({ code: null, signal: null, stdout, stderr: `${stderr}${err.message}`, timedOut });
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr, timedOut });
    });
  });
}

/** Why a child ended without an answer: "crashed (SIGSEGV)", "timed out after 60 s", "exit 1: <last line>". */
function whyEnded(e: { code: number | null; signal: string | null; stderr: string; timedOut: boolean }, timeoutMs: number): string {
  if (e.timedOut) return `timed out after ${Math.round(timeoutMs / 1000)} s`;
  const last = e.stderr
    .trim()
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '' && !l.startsWith('memfork ') && !/^\s*at /.test(l))
    .pop();
  const tail = last !== undefined ? `: ${last.slice(0, 160)}` : '';
  if (e.signal !== null) return `crashed (${e.signal})${tail}`;
  return `crashed (exit ${e.code})${tail}`;
}

async function runPeer(peer: string, spec: CaseSpec, timeoutMs: number): Promise<{ result?: PeerResult; outcome: string }> {
  const args = [spec.size, spec.pattern, spec.mode, spec.rounds, spec.seed, spec.reserve, spec.measureDrop ? 1 : 0];
  const e = await run(peer, args.map(String), timeoutMs);
  const line = e.stdout.trim().split('\n').pop() ?? '';
  if (e.code === 0 && line.startsWith('{')) {
    try {
      const result = JSON.parse(line) as PeerResult;
      return { result, outcome: result.outcome === 'ok' ? 'ok' : result.error || result.outcome };
    } catch {
      // falls through
    }
  }
  return { outcome: whyEnded(e, timeoutMs) };
}

// ---- memfork cases in child processes -------------------------------------------

/** A child process running matrix-case.ts; one case at a time. */
class CaseChild {
  readonly #shared: boolean;
  readonly #timeoutMs: number;
  #child: ReturnType<typeof spawn> | undefined;
  #lines = '';
  #stderr = '';
  #timedOut = false;
  #waiting: ((r: { result?: CaseResult; outcome?: string }) => void) | undefined;
  #timer: ReturnType<typeof setTimeout> | undefined;

  readonly #process: { command: string; args: string[] };

  constructor(shared: boolean, timeoutMs: number, process: { command: string; args: string[] }) {
    this.#shared = shared;
    this.#timeoutMs = timeoutMs;
    this.#process = process;
  }

  #start(): ReturnType<typeof spawn> {
    const { command, args } = this.#process;
    const child = spawn(command, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    this.#lines = '';
    this.#stderr = '';
    this.#timedOut = false;
    child.stdout!.on('data', (d: Buffer) => {
      this.#lines += d.toString();
      let i: number;
      while ((i = this.#lines.indexOf('\n')) >= 0) {
        const line = this.#lines.slice(0, i);
        this.#lines = this.#lines.slice(i + 1);
        let msg: { start?: string; result?: CaseResult };
        try {
          msg = JSON.parse(line) as typeof msg;
        } catch {
          continue;
        }
        if (msg.result !== undefined) this.#answer({ result: msg.result });
      }
    });
    child.stderr!.on('data', (d: Buffer) => {
      const text = d.toString();
      process.stderr.write(text);
      this.#stderr = (this.#stderr + text).slice(-4000);
    });
    child.on('error', (err) => {
      this.#stderr += `\n${err.message}`;
    });
    child.on('close', (code, signal) => {
      if (this.#child === child) this.#child = undefined;
      this.#answer({ outcome: whyEnded({ code, signal, stderr: this.#stderr, timedOut: this.#timedOut }, this.#timeoutMs) });
    });
    child.stdin!.on('error', () => {
      // the child died: 'close' reports it
    });
    return child;
  }

  #answer(r: { result?: CaseResult; outcome?: string }): void {
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
    const w = this.#waiting;
    this.#waiting = undefined;
    w?.(r);
  }

  async run(spec: CaseSpec): Promise<{ result?: CaseResult; outcome?: string }> {
    this.#child ??= this.#start();
    const child = this.#child;
    const answer = new Promise<{ result?: CaseResult; outcome?: string }>((resolve) => (this.#waiting = resolve));
    this.#timer = setTimeout(() => {
      this.#timedOut = true;
      child.kill('SIGKILL');
    }, this.#timeoutMs);
    child.stdin!.write(`${JSON.stringify(spec)}\n`);
    const r = await answer;
    if (!this.#shared) await this.stop();
    return r;
  }

  /** Ends the child (stdin closed; killed if it has not exited within 10 s). */
  async stop(): Promise<void> {
    const child = this.#child;
    if (child === undefined) return;
    this.#child = undefined;
    if (child.exitCode !== null || child.signalCode !== null) return;
    await new Promise<void>((resolve) => {
      const t = setTimeout(() => child.kill('SIGKILL'), 10_000);
      child.once('close', () => {
        clearTimeout(t);
        resolve();
      });
      child.stdin!.end();
    });
  }
}

function memforkOutcome(r: CaseResult): string {
  if (r.outcome === 'ok') return 'ok';
  if (r.outcome === 'stopped') return r.stopped ?? 'stopped';
  const f = r.failure!;
  return `${f.code ?? f.name} at round ${f.round} (${f.phase}): ${f.message}`;
}

// ---- one case ------------------------------------------------------------------

/** Drop costs per page measured once a size (µs; NaN: not measured). */
interface Drops {
  c: number;
  cBatched: number;
  js: number;
  jsBatched: number;
}

function summarize(m: CaseResult | undefined, f: PeerResult | undefined, mode: ModeId, drops: Drops): Summary {
  const cloneMs = m?.cloneMs ?? [];
  const forkMs = f?.forkMs ?? [];
  const writeMs = median(m?.writeMs.slice(1) ?? []); // round 1 writes into a segment nobody shares yet
  const forkWriteMs = median(f?.writeMs.slice(1) ?? []);
  const cloneMedian = median(cloneMs);
  const forkMedian = median(forkMs);
  // The floor: round 1's pages copied once, plus one drop per page (batched where the kernel allows).
  let floorMs = NaN;
  let floorSource = '';
  if (f !== undefined && known(f.floor.copyMs) >= 0) {
    const batched = Number.isFinite(drops.cBatched);
    const drop = batched ? drops.cBatched : drops.c;
    floorMs = f.floor.copyMs + (f.floor.pages * (Number.isFinite(drop) ? drop : 0)) / 1000;
    floorSource = `C memcpy${Number.isFinite(drop) ? ` + ${batched ? 'process_madvise (1,024 pages a call)' : 'madvise (a call a page)'} drop` : ''}`;
  } else if (m?.floor !== undefined) {
    const batched = Number.isFinite(drops.jsBatched);
    const drop = batched ? drops.jsBatched : drops.js;
    floorMs = m.floor.copyMs + (m.floor.pages * (Number.isFinite(drop) ? drop : 0)) / 1000;
    floorSource = `JS TypedArray#set${Number.isFinite(drop) ? ` + ${batched ? 'process_madvise (1,024 pages a call)' : 'madvise (a call a page)'} drop through koffi` : ''}`;
  }
  const kept = mode !== 'letgo';
  const mDone = m?.roundsDone ?? 0;
  const fDone = f?.roundsDone ?? 0;
  const perSnap = (delta: number, n: number) => (kept ? (n > 0 ? delta / n : NaN) : delta);
  const delta = (key: 'machine' | 'process' | 'held' | 'accounted') =>
    m?.before !== undefined && m.after !== undefined ? m.after[key] - m.before[key] : NaN;
  return {
    cloneMs: { median: cloneMedian, min: minOf(cloneMs) },
    writeMs,
    forkMs: { median: forkMedian, min: minOf(forkMs) },
    forkWriteMs,
    ratio: forkMedian / cloneMedian,
    roundRatio: (forkMedian + (Number.isFinite(forkWriteMs) ? forkWriteMs : 0)) / (cloneMedian + (Number.isFinite(writeMs) ? writeMs : 0)),
    floorMs,
    floorSource,
    newFloorMs: f !== undefined && f.floor.newCopyMs !== undefined && f.floor.newCopyMs >= 0 ? f.floor.newCopyMs : NaN,
    memforkBytes: perSnap(delta('held'), mDone),
    forkBytes: f !== undefined ? perSnap(known(f.pssAfter) - known(f.pssBefore), fDone) : NaN,
    memforkMachineBytes: perSnap(delta('machine'), mDone),
    forkMachineBytes: f !== undefined ? perSnap(known(f.machineAfter) - known(f.machineBefore), fDone) : NaN,
    processBytes: perSnap(delta('process'), mDone),
    accountedBytes: perSnap(delta('accounted'), mDone),
    forkChildDirtyBytes: f !== undefined && f.children > 0 ? known(f.childrenPrivateDirty) / f.children : NaN,
    mappings: m?.memoryStats?.mappings ?? NaN,
    mapsLines: m?.before !== undefined && m.after !== undefined ? m.after.mapsLines - m.before.mapsLines : NaN,
    wrongBytes: m?.verify?.wrongBytes ?? NaN,
    checkedBytes: m?.verify?.checkedBytes ?? 0,
    patternsMatch: m !== undefined && f !== undefined && mDone === fDone && mDone > 0 ? m.checksum === f.checksum : undefined,
  };
}

// ---- the matrix -----------------------------------------------------------------

export async function runMatrix(o: MatrixOptions): Promise<MatrixResult> {
  const peer = buildPeer(o.outDir);
  const cases = caseProcess();
  o.log(`\n== pattern matrix: ${o.rounds} rounds; fork() peer: ${peer.path !== undefined ? `${peer.path} (built with ${peer.compiler})` : peer.missing}; memfork cases: ${cases.how} ==`);
  const result: MatrixResult = {
    rounds: o.rounds,
    seed: o.seed,
    reserve: o.reserve,
    shared: o.shared,
    peer,
    caseProcess: cases.how,
    skipped: [],
    drops: [],
    cases: [],
    geomean: [],
  };
  const list = patterns.filter((p) => o.patterns.includes(p.id));
  const modeList = modes.filter((m) => o.modes.includes(m.id));
  for (const size of o.sizes) {
    const available = memAvailable();
    const needed = Math.ceil(1.5 * size) + o.reserve;
    if (Number.isFinite(available) && available < needed) {
      const why = `needs about ${fmtBytes(needed)} available, ${fmtBytes(available)} is`;
      o.log(`\n  ${fmtBytes(size)}: skipped, ${why}`);
      result.skipped.push({ size, why });
      continue;
    }
    o.log(`\n  ${fmtBytes(size)}`);
    const child = new CaseChild(o.shared, o.caseTimeoutMs, cases);
    const drops: Drops = { c: NaN, cBatched: NaN, js: NaN, jsBatched: NaN };
    try {
      for (const p of list) {
        for (const m of modeList) {
          const spec: CaseSpec = {
            id: `${p.id}-${m.id}-${size}`,
            size,
            pattern: p.id,
            mode: m.id,
            rounds: o.rounds,
            seed: patternSeed(o.seed, p.id),
            reserve: o.reserve,
            measureDrop: Number.isNaN(drops.c) && Number.isNaN(drops.js),
          };
          const mf = await child.run(spec);
          const fk = peer.path !== undefined ? await runPeer(peer.path, spec, o.caseTimeoutMs) : { outcome: `not run: ${peer.missing}` };
          if (spec.measureDrop) {
            const f = 'result' in fk ? fk.result?.floor : undefined;
            drops.c = known(f?.dropMicrosPerPage ?? -1);
            drops.cBatched = known(f?.batchedDropMicrosPerPage ?? -1);
            drops.js = mf.result?.floor?.dropMicrosPerPage ?? NaN;
            drops.jsBatched = mf.result?.floor?.batchedDropMicrosPerPage ?? NaN;
          }
          const c: MatrixCase = {
            size,
            pattern: p.id,
            mode: m.id,
            name: `${p.label}, ${m.label}`,
            memfork: mf.result,
            memforkOutcome: mf.result !== undefined ? memforkOutcome(mf.result) : (mf.outcome ?? 'no answer'),
            fork: 'result' in fk ? fk.result : undefined,
            forkOutcome: fk.outcome,
            summary: summarize(mf.result, 'result' in fk ? fk.result : undefined, m.id, drops),
          };
          result.cases.push(c);
          const s = c.summary;
          o.log(
            `    ${c.name}: memfork ${c.memforkOutcome === 'ok' ? `clone ${fmtMs(s.cloneMs.median)}` : c.memforkOutcome.slice(0, 120)}; ` +
              `fork ${c.forkOutcome === 'ok' ? fmtMs(s.forkMs.median) : c.forkOutcome.slice(0, 200)}; floor ${fmtMs(s.floorMs)}` +
              (s.patternsMatch === false ? '; PAGES DIFFER between memfork and the fork peer' : ''),
          );
        }
      }
    } finally {
      await child.stop();
    }
    result.drops.push({ size, ...drops });
    o.log(
      `    drop a page: C: ${fmtUs(drops.cBatched)} batched, ${fmtUs(drops.c)} a call; ` +
        `through koffi: ${fmtUs(drops.jsBatched)} batched, ${fmtUs(drops.js)} a call`,
    );
  }
  result.geomean = geomeans(result.cases, o.sizes);
  if (cases.outDir !== undefined) fs.rmSync(cases.outDir, { recursive: true, force: true });
  return result;
}

/** A case "ran" when memfork finished its rounds (or stopped for memory) without error and the peer did too. */
const ran = (c: MatrixCase) =>
  c.memfork !== undefined && c.memfork.outcome !== 'error' && c.memfork.roundsDone > 0 && c.fork !== undefined && c.fork.roundsDone > 0;
const failed = (c: MatrixCase) => c.memfork === undefined || c.memfork.outcome === 'error' || c.summary.wrongBytes > 0;

function geomeans(cases: MatrixCase[], sizes: number[]): MatrixResult['geomean'] {
  const out: MatrixResult['geomean'] = [];
  for (const size of [...sizes, 'all' as const]) {
    const of = cases.filter((c) => size === 'all' || c.size === size);
    if (of.length === 0) continue;
    const both = of.filter(ran);
    out.push({
      size,
      clone: geomean(both.map((c) => c.summary.ratio).filter((x) => x > 0 && Number.isFinite(x))),
      round: geomean(both.map((c) => c.summary.roundRatio).filter((x) => x > 0 && Number.isFinite(x))),
      cases: both.length,
      failed: of.filter(failed).length,
      of: of.length,
    });
  }
  return out;
}

// ---- output -------------------------------------------------------------------------

function outcomeCell(c: MatrixCase): string {
  const s = c.summary;
  const wrong = Number.isFinite(s.wrongBytes) ? `${s.wrongBytes} wrong` : '';
  if (c.memfork === undefined) return c.memforkOutcome;
  if (c.memfork.outcome === 'error') {
    const f = c.memfork.failure!;
    return `${f.code ?? f.name} at round ${f.round} (${f.phase})${wrong ? `, ${wrong}` : ''}`;
  }
  if (c.memfork.outcome === 'stopped') return `stopped after ${c.memfork.roundsDone} rounds (memory), ${wrong}`;
  return `ok, ${wrong}`;
}

export function printMatrix(r: MatrixResult): void {
  console.log();
  console.log(
    `pattern matrix: ${r.rounds} rounds a case, each: write the pattern (one byte a page), clone(); fork() peer: ` +
      `${r.peer.path !== undefined ? `fork-peer.c (${r.peer.compiler})` : r.peer.missing}; memfork cases: ${r.caseProcess ?? 'through ts-node'}`,
  );
  for (const s of r.skipped) console.log(`${fmtBytes(s.size)}: skipped, ${s.why}`);
  const sizes = [...new Set(r.cases.map((c) => c.size))];
  const head = [
    'case',
    'memfork clone',
    'fork()',
    'fork/memfork',
    'floor',
    'new-memory floor',
    'writes: memfork / fork',
    'MiB/snapshot: memfork',
    'fork',
    'machine-wide: memfork / fork',
    'mappings',
    'outcome, wrong bytes',
  ];
  for (const size of sizes) {
    const body = r.cases
      .filter((c) => c.size === size)
      .map((c) => {
        const s = c.summary;
        const kept = c.mode !== 'letgo';
        const memCell = (b: number) => (kept || !Number.isFinite(b) ? mib(b) : `${mib(b)} total`);
        return [
          c.name,
          c.memfork !== undefined && c.memfork.roundsDone > 0 ? `${fmtMs(s.cloneMs.median)} (${fmtMs(s.cloneMs.min)})` : '—',
          c.fork !== undefined && c.fork.roundsDone > 0 ? `${fmtMs(s.forkMs.median)} (${fmtMs(s.forkMs.min)})` : c.fork !== undefined ? '—' : r.peer.path !== undefined ? 'failed' : 'not run',
          Number.isFinite(s.ratio) ? `${s.ratio >= 10 ? s.ratio.toFixed(0) : s.ratio.toFixed(2)}` : '—',
          fmtMs(s.floorMs),
          fmtMs(s.newFloorMs),
          `${fmtMs(s.writeMs)} / ${fmtMs(s.forkWriteMs)}`,
          memCell(s.memforkBytes),
          memCell(s.forkBytes),
          `${mib(s.memforkMachineBytes)} / ${mib(s.forkMachineBytes)}`,
          Number.isFinite(s.mappings) ? `${s.mappings} (${s.mapsLines >= 0 ? '+' : ''}${s.mapsLines} maps)` : '—',
          outcomeCell(c) + (s.patternsMatch === false ? ' PAGES DIFFER' : ''),
        ];
      });
    const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i].length)));
    const line = (cols: string[]) => cols.map((c, i) => (i === 0 || i === cols.length - 1 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  ');
    console.log();
    console.log(`${fmtBytes(size)}:`);
    console.log(line(head).trimEnd());
    console.log(widths.map((w) => '-'.repeat(w)).join('  '));
    for (const b of body) console.log(line(b).trimEnd());
    for (const c of r.cases.filter((x) => x.size === size)) {
      if (c.memfork?.outcome === 'error') console.log(`  ${c.name}: ${c.memforkOutcome}`);
      else if (c.memfork === undefined) console.log(`  ${c.name}: memfork ${c.memforkOutcome}`);
      if (c.fork === undefined && r.peer.path !== undefined) console.log(`  ${c.name}: fork peer ${c.forkOutcome}`);
      else if (c.fork !== undefined && c.fork.outcome !== 'ok') console.log(`  ${c.name}: fork peer ${c.forkOutcome}`);
    }
  }
  console.log();
  for (const g of r.geomean) {
    console.log(
      `${g.size === 'all' ? 'all sizes' : fmtBytes(g.size)}: ${g.failed} of ${g.of} cases failed (error, crash, timeout or wrong bytes); ` +
        (g.cases > 0
          ? `over the ${g.cases} that ran on both sides, geometric mean of fork/memfork: clone ${g.clone.toFixed(2)}, round (writes + clone) ${g.round.toFixed(2)}`
          : 'no case ran on both sides'),
    );
  }
  const floorSources = [...new Set(r.cases.map((c) => c.summary.floorSource).filter((s) => s !== ''))];
  console.log();
  console.log('memfork clone, fork(): median (minimum) over the rounds; fork/memfork: ratio of the medians (above 1: memfork faster).');
  console.log(`floor: round 1's pages copied once into touched memory, plus one drop per page (${floorSources.join('; ') || 'not measured'}).`);
  console.log('new-memory floor: round 1\'s pages copied once into new memory (C, pwritev into a new memory file), as kept snapshots');
  console.log('  need them: fork() pays it at the writes after it, memfork at the clone.');
  for (const d of r.drops) {
    console.log(
      `  ${fmtBytes(d.size)}: drop a page: C: ${fmtUs(d.cBatched)} batched, ${fmtUs(d.c)} a call; ` +
        `through koffi: ${fmtUs(d.jsBatched)} batched, ${fmtUs(d.js)} a call`,
    );
  }
  console.log('writes: median time of a round\'s writes from round 2 on (fork pays its copies there, memfork its faults).');
  console.log('MiB/snapshot: memory added over the case / snapshots kept ("total": snapshots let go, the whole growth). memfork: the');
  console.log('  case process\'s RssAnon + pages of its memory files; fork: Pss_Anon summed over the peer and its children.');
  console.log('  machine-wide: Shmem + AnonPages from /proc/meminfo, the same way (noisy: other processes count too).');
  console.log('mappings: memoryStats().mappings after the last round (+ /proc/self/maps lines added).');
  console.log('wrong bytes: every kept snapshot and the segment checked byte for byte against what they must hold (a snapshot never read: through a clone of it, read and closed, leaving it unread).');
}

// ---- chart ------------------------------------------------------------------------------

/** The matrix as an SVG fragment: per size, memfork clone, fork() and the floor for every case (log scale). */
export function matrixSvg(r: MatrixResult, y0: number): { svg: string; width: number; height: number } {
  const esc = (t: string) => t.replace(/&/g, '&amp;').replace(/</g, '&lt;');
  const series = [
    { label: 'memfork clone()', color: '#2b8a3e', get: (c: MatrixCase) => c.summary.cloneMs.median },
    { label: 'fork()', color: '#1864ab', get: (c: MatrixCase) => c.summary.forkMs.median },
    { label: 'copy floor', color: '#868e96', get: (c: MatrixCase) => c.summary.floorMs },
    { label: 'new-memory floor', color: '#ced4da', get: (c: MatrixCase) => c.summary.newFloorMs },
  ];
  const values = r.cases.flatMap((c) => series.map((s) => s.get(c))).filter((v) => Number.isFinite(v) && v > 0);
  if (values.length === 0) values.push(1);
  const lo = Math.pow(10, Math.floor(Math.log10(Math.max(1e-3, minOf(values)))));
  const hi = Math.pow(10, Math.ceil(Math.log10(values.reduce((a, b) => Math.max(a, b)))));
  const bar = 6;
  const groupW = series.length * bar + 6;
  const left = 70;
  const top = y0 + 60;
  const plotH = 260;
  const sizes = [...new Set(r.cases.map((c) => c.size))];
  const out: string[] = [];
  let x = left + 10;
  const xOf = new Map<MatrixCase, number>();
  for (const size of sizes) {
    for (const c of r.cases.filter((k) => k.size === size)) {
      xOf.set(c, x);
      x += groupW;
    }
    x += 30;
  }
  const width = Math.max(x + 40, 760);
  const y = (v: number) => top + plotH - ((Math.log10(v) - Math.log10(lo)) / (Math.log10(hi) - Math.log10(lo))) * plotH;
  out.push(`<text x="${left}" y="${y0 + 22}" font-size="15" font-weight="bold">pattern matrix: time per snapshot, memfork clone() vs fork() vs the copy floors (log scale; ✗ memfork failed)</text>`);
  let lx = left;
  for (const s of series) {
    out.push(`<rect x="${lx}" y="${y0 + 34}" width="11" height="11" fill="${s.color}"/><text x="${lx + 16}" y="${y0 + 44}">${esc(s.label)}</text>`);
    lx += 16 + s.label.length * 6.5 + 24;
  }
  for (let d = lo; d <= hi * 1.0001; d *= 10) {
    out.push(`<line x1="${left}" x2="${width - 20}" y1="${y(d).toFixed(1)}" y2="${y(d).toFixed(1)}" stroke="#e0e0e0"/>`);
    out.push(`<text x="${left - 6}" y="${(y(d) + 4).toFixed(1)}" text-anchor="end">${esc(fmtMs(+d.toPrecision(1)))}</text>`);
  }
  for (const c of r.cases) {
    const x0 = xOf.get(c)!;
    series.forEach((s, i) => {
      const v = s.get(c);
      if (!(Number.isFinite(v) && v > 0)) return;
      const yy = y(Math.max(v, lo));
      out.push(
        `<rect x="${x0 + i * bar}" y="${yy.toFixed(1)}" width="${bar - 1}" height="${(top + plotH - yy).toFixed(1)}" fill="${s.color}">` +
          `<title>${esc(`${c.name}, ${fmtBytes(c.size)}, ${s.label}: ${fmtMs(v)}`)}</title></rect>`,
      );
    });
    if (failed(c)) {
      out.push(`<text x="${x0 + bar / 2}" y="${top + plotH - 4}" fill="#c92a2a" font-weight="bold"><title>${esc(`${c.name}: ${c.memforkOutcome}`)}</title>✗</text>`);
    }
    out.push(`<text transform="translate(${x0 + bar},${top + plotH + 10}) rotate(60)" font-size="9">${esc(c.name)}</text>`);
  }
  for (const size of sizes) {
    const xs = r.cases.filter((c) => c.size === size).map((c) => xOf.get(c)!);
    const a = Math.min(...xs);
    const b = Math.max(...xs) + groupW;
    out.push(`<line x1="${a}" x2="${b}" y1="${top + plotH + 150}" y2="${top + plotH + 150}" stroke="#555"/>`);
    out.push(`<text x="${(a + b) / 2}" y="${top + plotH + 166}" text-anchor="middle" font-weight="bold">${esc(fmtBytes(size))}</text>`);
  }
  out.push(`<line x1="${left}" x2="${left}" y1="${top}" y2="${top + plotH}" stroke="#333"/>`);
  out.push(`<line x1="${left}" x2="${width - 20}" y1="${top + plotH}" y2="${top + plotH}" stroke="#333"/>`);
  return { svg: out.join('\n'), width, height: plotH + 240 };
}

/** Defaults: the machine's reserve a case leaves free. */
export function defaultReserve(): number {
  return Math.max(2 * 2 ** 30, Math.floor(os.totalmem() / 8));
}
