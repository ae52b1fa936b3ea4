// memfork against copying the bytes, side by side.
//
//   npm run bench                         # 256 MiB, 1 GiB and 4 GiB
//   npm run bench -- --sizes 256M,1G      # chosen sizes (or MEMFORK_BENCH_SIZES)
//   npm run bench -- --quick              # about a minute, small sizes (the smoke test)
//   npm run bench -- --matrix-only --rounds 100   # only the pattern matrix, 100 rounds a case
//
// Options: --sizes LIST, --chain DEPTH (500), --chain-size SIZE (64M),
// --restore-size SIZE (256M), --seconds S (restore loop, 2),
// --out DIR (bench-results), --quick.
// The pattern matrix (examples/bench/matrix.ts): --no-matrix, --matrix-only,
// --matrix-sizes LIST (default: --sizes), --rounds N (6), --patterns LIST and
// --modes LIST (ids from examples/bench/pattern.ts), --case-timeout SECONDS,
// --reserve SIZE (MemAvailable a case leaves free), --case-child each|shared
// (one process per memfork case, or one per size restarted after a crash;
// default each, shared with --quick).
//
// What a user does without memfork is copy: `Uint8Array.prototype.slice()`
// into fresh memory, or `set()` into a buffer that is already touched (the
// cheapest copy there is). Each case is timed for both. Every figure is the
// median of repeated runs after a warm-up (the minimum in brackets); cases
// that take seconds run fewer times, and say so (n). Progress goes to stderr,
// the table to stdout, raw figures to bench-results/bench.json and a chart to
// bench-results/bench.svg.
//
// fork() is not in the first table: child_process.fork() starts a whole new
// Node.js process (not comparable), and calling fork(2) itself from a
// multi-threaded Node.js process is unsafe. The pattern matrix compares with
// fork() through a small C program (examples/bench/fork-peer.c), built at bench
// time when a C compiler exists: every write pattern × snapshots let go, kept,
// or kept and read, memfork's clone() against fork() doing the same writes,
// and the copy floor of those writes. Each memfork case runs in a child
// process, so a case that crashes is a row of the table, not the end of the bench.
//
// Memory: a 4 GiB size needs about 12 GiB free at its peak (the segment, a
// copy, and the layer a 100%-written clone makes). Sizes that do not fit in
// MemAvailable are skipped with a message.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Segment, backend, memoryStats } from '../src/index.ts';
import * as sys from '../platform/libc.ts';
import { defaultReserve, fmtBytes, fmtMs, matrixSvg, printMatrix, runMatrix } from './bench/matrix.ts';
import { heldMemory, kb, readProc } from './bench/proc.ts';
import type { MatrixResult } from './bench/matrix.ts';
import { modes, patterns } from './bench/pattern.ts';
import type { ModeId, PatternId } from './bench/pattern.ts';

// ---- options --------------------------------------------------------------------

const argv = process.argv.slice(2);
function arg(name: string): string | undefined {
  const i = argv.indexOf(`--${name}`);
  if (i >= 0) return argv[i + 1];
  return argv.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3);
}
function parseSize(text: string): number {
  const m = /^(\d+(?:\.\d+)?)([kmgt]?)(?:i?b)?$/i.exec(text.trim());
  if (m === null) throw new RangeError(`Invalid size: ${text} (e.g. 256M, 1G)`);
  const unit = { '': 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40 }[m[2].toLowerCase() as '' | 'k' | 'm' | 'g' | 't'];
  return Math.round(Number(m[1]) * unit);
}

const quick = argv.includes('--quick') || process.env.MEMFORK_BENCH_QUICK === '1';
const PAGE = backend.pageSize;
const sizes = (arg('sizes') ?? process.env.MEMFORK_BENCH_SIZES ?? (quick ? '16M' : '256M,1G,4G'))
  .split(',')
  .filter((t) => t.trim() !== '') // --sizes '' runs only the chain and the restore loop
  .map(parseSize)
  .map((s) => Math.ceil(s / PAGE) * PAGE);
const chainDepth = Number(arg('chain') ?? (quick ? 50 : 500));
// 64 MiB: deep enough to reach the process's mapping budget within 500 links.
const chainSize = parseSize(arg('chain-size') ?? (quick ? '16M' : '64M'));
const restoreSize = parseSize(arg('restore-size') ?? (quick ? '16M' : '256M'));
const restoreSeconds = Number(arg('seconds') ?? (quick ? 0.3 : 2));
const outDir = arg('out') ?? 'bench-results';
/** Time one case may take at one size before it stops repeating (ms). */
const budgetMs = quick ? 300 : 4000;
const maxReps = quick ? 3 : 15;
const hasGc = typeof globalThis.gc === 'function';
const matrixOnly = argv.includes('--matrix-only');
const withMatrix = !argv.includes('--no-matrix');
const matrixSizes = (arg('matrix-sizes') ?? sizes.map(String).join(','))
  .split(',')
  .filter((t) => t.trim() !== '')
  .map(parseSize)
  .map((s) => Math.ceil(s / PAGE) * PAGE);
const rounds = Number(arg('rounds') ?? 6);
if (!Number.isInteger(rounds) || rounds < 1) throw new RangeError(`Invalid --rounds: ${arg('rounds')} (a positive integer)`);
function listArg<T extends string>(name: string, all: readonly { id: T }[]): T[] {
  const text = arg(name);
  if (text === undefined) return all.map((x) => x.id);
  const ids = text.split(',').map((t) => t.trim()) as T[];
  for (const id of ids) {
    if (!all.some((x) => x.id === id)) throw new RangeError(`Invalid --${name}: ${id} (one of ${all.map((x) => x.id).join(', ')})`);
  }
  return ids;
}
const matrixPatterns = listArg<PatternId>('patterns', patterns);
const matrixModes = listArg<ModeId>('modes', modes);
const caseTimeoutMs = Number(arg('case-timeout') ?? (quick ? 120 : 1800)) * 1000;
const reserve = arg('reserve') !== undefined ? parseSize(arg('reserve')!) : defaultReserve();
const caseChild = arg('case-child') ?? (quick ? 'shared' : 'each');
if (caseChild !== 'each' && caseChild !== 'shared') throw new RangeError(`Invalid --case-child: ${caseChild} (each or shared)`);
let matrix: MatrixResult | undefined;

// ---- small helpers --------------------------------------------------------------

const log = (s: string) => process.stderr.write(`${s}\n`);
const gc = () => (globalThis as { gc?: () => void }).gc?.();
const now = () => performance.now();

function fmtUs(us: number): string {
  return us >= 1000 ? fmtMs(us / 1000) : `${us.toFixed(us < 1 ? 2 : us < 10 ? 1 : 0)} µs`;
}
function median(v: number[]): number {
  if (v.length === 0) return NaN;
  const s = [...v].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

let seed = 0x2545f491;
function rand(): number {
  seed ^= seed << 13;
  seed ^= seed >>> 17;
  seed ^= seed << 5;
  return (seed >>> 0) / 4294967296;
}
/** `count` distinct random page numbers below `pages`. */
function randomPages(pages: number, count: number): number[] {
  const set = new Set<number>();
  while (set.size < count) set.add(Math.floor(rand() * pages));
  return [...set];
}

function meminfo(key: string): number {
  return kb(readProc('/proc/meminfo'), key);
}
const mapsLines = () => readProc('/proc/self/maps').split('\n').filter(Boolean).length;
/** Shmem + AnonPages from /proc/meminfo: machine-wide, so other processes add noise. */
const machineMemory = () => meminfo('Shmem') + meminfo('AnonPages');
/** This process: its anonymous pages plus the pages in its memfd files, each counted once. */
const processMemory = heldMemory;

/**
 * The segment's bytes as windows no larger than one ArrayBuffer may be here.
 * Created once per segment and phase; they detach when the segment closes.
 */
class Bytes {
  readonly windows: Uint8Array[] = [];
  readonly span: number;
  readonly seg: Segment;
  constructor(seg: Segment) {
    this.seg = seg;
    this.span = Math.min(backend.maxViewLength, 2 ** 30);
    for (let off = 0; off < seg.byteLength; off += this.span) {
      this.windows.push(new Uint8Array(seg.view(off, Math.min(this.span, seg.byteLength - off))));
    }
  }
  fill(value: number): void {
    for (const w of this.windows) w.fill(value);
  }
  /** Writes one byte into each of the given pages. */
  touch(pages: number[], value: number): void {
    for (const p of pages) {
      const off = p * PAGE;
      this.windows[Math.floor(off / this.span)][off % this.span] = value;
    }
  }
  /** Writes one byte into `count` pages starting at page `first`. */
  touchRun(first: number, count: number, value: number): void {
    for (let p = first; p < first + count; p++) {
      const off = p * PAGE;
      this.windows[Math.floor(off / this.span)][off % this.span] = value;
    }
  }
  get(offset: number): number {
    return this.windows[Math.floor(offset / this.span)][offset % this.span];
  }
}

function filledSegment(size: number, value: number): Segment {
  const seg = Segment.create(size);
  new Bytes(seg).fill(value);
  return seg;
}

// ---- measuring ----------------------------------------------------------------

interface Row {
  case: string;
  size: number;
  unit: 'ms' | 'µs/page' | '/s' | 'bytes' | 'count';
  memfork: Stat;
  slice?: Stat;
  set?: Stat;
  note?: string;
}
interface Stat {
  median: number;
  min: number;
  n: number;
  samples: number[];
}
const stat = (samples: number[]): Stat => ({ median: median(samples), min: Math.min(...samples), n: samples.length, samples });
const single = (value: number): Stat => stat([value]);

/**
 * Repeats `once` (which returns the measured ms, preparing whatever it needs
 * outside the timed part) until `budgetMs` of wall time is used, at least
 * `minReps` and at most `maxReps` times. With `warm`, the first run is a
 * warm-up and is not counted, unless it alone used most of the budget.
 */
function repeat(
  label: string,
  once: () => number,
  opts: { warm?: boolean; min?: number; max?: number; unit?: 'ms' | 'µs/page' } = {},
): Stat {
  const samples: number[] = [];
  const start = now();
  const min = opts.min ?? 3;
  const max = opts.max ?? maxReps;
  if (opts.warm !== false) {
    const ms = once();
    if (now() - start > budgetMs / 2) samples.push(ms); // too costly to throw away
  }
  while (samples.length < max && (samples.length < min || now() - start < budgetMs)) {
    if (samples.length > 0 && now() - start > budgetMs) break; // costly: keep what we have
    samples.push(once());
  }
  const s = stat(samples);
  const f = opts.unit === 'µs/page' ? (x: number) => `${x.toFixed(2)} µs/page` : fmtMs;
  log(`    ${label}: ${f(s.median)} (min ${f(s.min)}, n=${s.n})`);
  return s;
}

// ---- the cases --------------------------------------------------------------------

const rows: Row[] = [];
const extra: Record<string, unknown> = {};
const began = now();

function benchSize(size: number): void {
  const pages = size / PAGE;
  const onePercent = Math.max(1, Math.floor(pages / 100));
  log(`\n== ${fmtBytes(size)} (${pages} pages) ==`);

  // fill: a new segment, every byte written, against a new Uint8Array filled.
  log('  fill');
  // The last filled segment is kept for the first-clone case, so that a
  // costly size is filled once less.
  let spare: Segment | undefined;
  const fillM = repeat('memfork create + fill', () => {
    spare?.close();
    spare = undefined;
    const t = now();
    const s = filledSegment(size, 1);
    const ms = now() - t;
    spare = s;
    return ms;
  });
  const fillC = repeat('new Uint8Array + fill', () => {
    gc(); // free the last one first
    const t = now();
    const a = new Uint8Array(size).fill(1);
    const ms = now() - t;
    if (a[size - 1] !== 1) throw new Error('fill failed');
    return ms;
  });
  rows.push({ case: 'fill', size, unit: 'ms', memfork: fillM, slice: fillC });

  // The copy baselines every clone case is compared with.
  log('  copy the bytes');
  // The source is the filled segment itself: copying out of it is a plain
  // memory copy, and it saves holding one more copy of the size.
  const src = spare !== undefined ? new Uint8Array(spare.buffer) : new Uint8Array(size).fill(3);
  let keep: Uint8Array | undefined;
  const slice = repeat('slice() into fresh memory', () => {
    keep = undefined;
    gc();
    const t = now();
    keep = src.slice();
    return now() - t;
  });
  let dst: Uint8Array | undefined = keep ?? new Uint8Array(size).fill(0); // already touched by slice()
  keep = undefined;
  const set = repeat('set() into touched memory', () => {
    const t = now();
    dst!.set(src);
    return now() - t;
  });
  gc();

  // first clone: of a segment that was never cloned (it is remapped private).
  // first clone: of a segment never cloned before (it is remapped private).
  // Each run needs a newly filled segment, so it repeats only while another
  // fill fits in the budget. The last one goes on as the origin below.
  log('  first clone');
  const firstSamples: number[] = [];
  let origin: Segment | undefined;
  const firstStart = now();
  do {
    origin?.close();
    const s = spare ?? filledSegment(size, 1);
    spare = undefined;
    const t = now();
    const c = s.clone();
    firstSamples.push(now() - t);
    c.close();
    origin = s;
  } while (firstSamples.length < maxReps && now() - firstStart + fillM.median < budgetMs);
  const first = stat(firstSamples);
  log(`    first clone: ${fmtMs(first.median)} (min ${fmtMs(first.min)}, n=${first.n})`);
  rows.push({ case: 'first clone', size, unit: 'ms', memfork: first, slice, set });

  const bytes = new Bytes(origin);

  log('  clone, nothing written since the last');
  const nothing = repeat('clone', () => {
    const t = now();
    const c = origin.clone();
    const ms = now() - t;
    c.close();
    return ms;
  }, { min: 5 });
  rows.push({ case: 'clone, nothing written', size, unit: 'ms', memfork: nothing, slice, set });

  log('  clone after 1% of pages written at random');
  let v = 10;
  const random1 = repeat('clone', () => {
    bytes.touch(randomPages(pages, onePercent), v++ & 0xff);
    const t = now();
    const c = origin.clone();
    const ms = now() - t;
    c.close();
    return ms;
  });
  rows.push({ case: 'clone after 1% written, random', size, unit: 'ms', memfork: random1, slice, set });

  log('  clone after 1% of pages written in one run');
  const run1 = repeat('clone', () => {
    bytes.touchRun(Math.floor(rand() * (pages - onePercent)), onePercent, v++ & 0xff);
    const t = now();
    const c = origin.clone();
    const ms = now() - t;
    c.close();
    return ms;
  });
  rows.push({ case: 'clone after 1% written, one run', size, unit: 'ms', memfork: run1, slice, set });

  log('  clone after 100% written');
  const all = repeat(
    'clone',
    () => {
      bytes.fill(v++ & 0xff);
      const t = now();
      const c = origin.clone();
      const ms = now() - t;
      c.close();
      return ms;
    },
    { warm: size <= 2 ** 28, min: 1 },
  );
  rows.push({ case: 'clone after 100% written', size, unit: 'ms', memfork: all, slice, set });

  // First write to a page after a clone: the kernel copies the page.
  log('  first write per page');
  const probe = Math.min(pages, quick ? 1024 : 65536);
  const cowWrite = repeat('after clone (copy-on-write fault)', () => {
    const c = origin.clone();
    const cb = new Bytes(c);
    const stride = Math.max(1, Math.floor(pages / probe));
    const list: number[] = [];
    for (let i = 0; i < probe; i++) list.push(i * stride);
    const t = now();
    cb.touch(list, 0x77);
    const us = ((now() - t) * 1000) / probe;
    c.close();
    return us;
  }, { unit: 'µs/page' });
  const freshWrite = repeat('fresh Uint8Array (zero-fill fault)', () => {
    const a = new Uint8Array(Math.min(size, probe * PAGE));
    const t = now();
    for (let i = 0; i < a.length; i += PAGE) a[i] = 1;
    const us = ((now() - t) * 1000) / (a.length / PAGE);
    gc();
    return us;
  }, { unit: 'µs/page' });
  const touchedWrite = repeat('touched memory (no fault)', () => {
    const t = now();
    for (let i = 0, n = Math.min(size, probe * PAGE); i < n; i += PAGE) dst![i] = 2;
    return ((now() - t) * 1000) / Math.min(pages, probe);
  }, { unit: 'µs/page' });
  rows.push({
    case: 'first write to a page',
    size,
    unit: 'µs/page',
    memfork: cowWrite,
    slice: freshWrite,
    set: touchedWrite,
  });
  dst = undefined; // the copy is no longer needed: give its memory back
  gc();

  // Memory and mappings per clone, with 1% of pages written before each.
  log('  memory per clone');
  gc();
  const before = { machine: machineMemory(), proc: processMemory(), maps: mapsLines(), mf: memoryStats().mappings };
  const clones: Segment[] = [];
  const floor = Math.max(4 * 2 ** 30, os.totalmem() / 5);
  for (let i = 0; i < (quick ? 4 : 8); i++) {
    // A clone may compact its source into a new layer as large as the
    // segment: only go on while that still leaves room.
    if (i > 0 && meminfo('MemAvailable') < floor + size) {
      log(`    stopped after ${i} clones: MemAvailable below ${fmtBytes(floor + size)}`);
      break;
    }
    bytes.touch(randomPages(pages, onePercent), v++ & 0xff);
    clones.push(origin.clone());
  }
  const K = clones.length;
  const after = { machine: machineMemory(), proc: processMemory(), maps: mapsLines(), mf: memoryStats().mappings };
  const perClone = {
    machineBytes: (after.machine - before.machine) / K,
    processBytes: (after.proc - before.proc) / K,
    mapsLines: (after.maps - before.maps) / K,
    memforkMappings: (after.mf - before.mf) / K,
    mappingsPerClone: median(clones.map((c) => c.stats().mappings)),
  };
  log(
    `    per clone: ${fmtBytes(perClone.processBytes)} (process), ${fmtBytes(perClone.machineBytes)} (machine), ` +
      `${perClone.mapsLines.toFixed(1)} maps lines, ${perClone.memforkMappings.toFixed(1)} memfork mappings`,
  );
  rows.push({
    case: 'memory per clone (1% written)',
    size,
    unit: 'bytes',
    memfork: single(perClone.processBytes),
    slice: single(size),
    note: `average of ${K} clones; machine-wide Shmem+AnonPages ${fmtBytes(perClone.machineBytes)}; copy: the whole size`,
  });
  rows.push({
    case: 'mappings per clone',
    size,
    unit: 'count',
    memfork: single(perClone.memforkMappings),
    note: `/proc/self/maps lines per clone ${perClone.mapsLines.toFixed(1)}; stats().mappings of a clone ${perClone.mappingsPerClone}`,
  });
  extra[`memory-${size}`] = { before, after, clones: K, perClone };
  for (const c of clones) c.close();
  origin.close();
  gc();
}

function benchChain(size: number, depth: number): void {
  log(`\n== chain: ${depth} clones of clones, ${fmtBytes(size)}, one page written per link ==`);
  const pages = size / PAGE;
  gc();
  const heldBefore = processMemory();
  const chain: Segment[] = [filledSegment(size, 1)];
  const times: number[] = [];
  const start = now();
  // Every segment of the chain stays alive, so memory use is watched: stop
  // early rather than run the machine out of memory.
  const floor = Math.max(4 * 2 ** 30, os.totalmem() / 5);
  let stopped = '';
  for (let i = 0; i < depth; i++) {
    const t = now();
    const c = chain[chain.length - 1].clone();
    times.push(now() - t);
    new Bytes(c).touch([Math.floor(rand() * pages)], (i % 250) + 1);
    chain.push(c);
    if (i % 50 === 49) log(`    ${i + 1} links, last clone ${fmtMs(times[times.length - 1])}, layers hold ${fmtBytes(memoryStats().layerBytes)}`);
    if (meminfo('MemAvailable') < floor) {
      stopped = `stopped at link ${i + 1}: MemAvailable below ${fmtBytes(floor)}`;
      log(`    ${stopped}`);
      break;
    }
  }
  const total = now() - start;
  const mappings = chain.map((s) => s.stats().mappings);
  const links = times.length;
  const k = Math.max(1, Math.min(20, Math.floor(links / 5)));
  const early = stat(times.slice(0, k));
  const late = stat(times.slice(-k));
  const ms = memoryStats();
  const held = processMemory() - heldBefore;
  const result = {
    depth: links,
    stopped,
    size,
    totalMs: total,
    early,
    late,
    mappingsMax: Math.max(...mappings),
    mappingsMedian: median(mappings),
    mappingsLast: mappings[mappings.length - 1],
    memoryStatsMappings: ms.mappings,
    layers: ms.layers,
    layerBytes: ms.layerBytes,
    heldBytes: held,
    mapsLines: mapsLines(),
  };
  log(
    `    clone: first ${k} ${fmtMs(early.median)}, last ${k} ${fmtMs(late.median)}; mappings per segment ` +
      `median ${result.mappingsMedian}, max ${result.mappingsMax}; all segments ${ms.mappings}, /proc/self/maps ${result.mapsLines} lines`,
  );
  rows.push({ case: `chain: clone, links 1–${k}`, size, unit: 'ms', memfork: early });
  rows.push({
    case: `chain: clone, links ${links - k + 1}–${links}`,
    size,
    unit: 'ms',
    memfork: late,
    note: `copy: ${links} × ${fmtBytes(size)}, not run${stopped ? `; ${stopped}` : ''}`,
  });
  rows.push({
    case: `chain: mappings per segment (max)`,
    size,
    unit: 'count',
    memfork: single(result.mappingsMax),
    note: `median ${result.mappingsMedian}; all ${links + 1} segments ${ms.mappings}; maps lines ${result.mapsLines}`,
  });
  rows.push({
    case: `chain: memory of all ${links + 1} segments`,
    size,
    unit: 'bytes',
    memfork: single(held),
    slice: single((links + 1) * size),
    note: `this process (RssAnon + memfd pages); memoryStats(): layers ${fmtBytes(ms.layerBytes)}, private ${fmtBytes(ms.privateBytes)}; copy: one full copy per segment`,
  });
  extra.chain = { ...result, times };
  for (const s of chain) s.close();
  gc();
}

function benchRestore(size: number, seconds: number): void {
  log(`\n== restore loop: ${fmtBytes(size)}, 64 random pages written, then restore(snapshot) ==`);
  const pages = size / PAGE;
  const state = filledSegment(size, 1);
  const bytes = new Bytes(state);
  const snapshot = state.clone();
  const dirty = Math.min(64, pages);
  // Time spent in the writes themselves (each one a page fault after a
  // restore) and in restore(), apart: the loop cannot beat its own writes.
  let writeMs = 0;
  let stepMs = 0;
  const loop = (limitMs: number, step: () => void): { rate: number; n: number } => {
    const t = now();
    let n = 0;
    while (now() - t < limitMs) {
      const list = randomPages(pages, dirty);
      const a = now();
      bytes.touch(list, 0x55);
      const b = now();
      step();
      stepMs += now() - b;
      writeMs += b - a;
      n++;
    }
    return { rate: (n * 1000) / (now() - t), n };
  };
  loop(Math.min(200, seconds * 200), () => state.restore(snapshot)); // warm-up
  writeMs = stepMs = 0;
  const rates: number[] = [];
  let total = 0;
  for (let r = 0; r < 5; r++) {
    const { rate, n } = loop((seconds * 1000) / 5, () => state.restore(snapshot));
    rates.push(rate);
    total += n;
  }
  const m = stat(rates);
  // For a restores-per-second figure, higher is better: report the best as "min".
  m.min = Math.max(...rates);
  if (bytes.get(0) !== 1) throw new Error('restore did not bring the snapshot back');
  log(`    memfork: ${m.median.toFixed(0)}/s (${total} restores)`);
  const perWrite = (writeMs * 1000) / (total * dirty);
  const perRestore = (stepMs * 1000) / total;
  log(`    per loop: ${dirty} writes ${fmtUs(perWrite * dirty)} (${fmtUs(perWrite)} each), restore() ${fmtUs(perRestore)}`);
  // The copy way: keep a saved copy and set() it back each time.
  const saved = new Uint8Array(size).fill(1);
  const live = new Uint8Array(size).fill(1);
  const copyRates: number[] = [];
  for (let r = 0; r < 3; r++) {
    const t = now();
    let n = 0;
    while (n < 2 || now() - t < Math.min(1000, (seconds * 1000) / 3)) {
      for (const p of randomPages(pages, dirty)) live[p * PAGE] = 0x55;
      live.set(saved);
      n++;
    }
    copyRates.push((n * 1000) / (now() - t));
  }
  const c = stat(copyRates);
  c.min = Math.max(...copyRates);
  log(`    set() from a saved copy: ${c.median.toFixed(1)}/s`);
  rows.push({
    case: 'restore loop (64 pages dirtied)',
    size,
    unit: '/s',
    memfork: m,
    set: c,
    note: `per loop, memfork: the ${dirty} writes ${fmtUs(perWrite * dirty)} (a page fault each, ${fmtUs(perWrite)}), restore() ${fmtUs(perRestore)}; the writes alone allow ${(1e6 / (perWrite * dirty)).toFixed(0)}/s`,
  });
  extra.restore = { size, dirty, rates, copyRates, writeMicros: perWrite, restoreMicros: perRestore };
  snapshot.close();
  state.close();
  gc();
}

/**
 * What the kernel operations memfork is built from cost on this machine, each
 * per page or per call. memfork's figures above are sums of these: a clone
 * after scattered writes costs about (copy + 2 × map) per written page, the
 * restore loop (fault) per written page. Linux only: it calls libc directly.
 */
function benchMachine(): void {
  if (process.platform !== 'linux' || backend.name !== 'linux') return;
  log('\n== this machine: kernel operations, per page or per call ==');
  const n = quick ? 256 : 2048;
  const bytes = n * 4 * PAGE;
  const fd = sys.memfdCreate('memfork-bench', 0);
  const costs: { what: string; micros: number }[] = [];
  const time = (what: string, count: number, f: () => void) => {
    const t = now();
    f();
    const micros = ((now() - t) * 1000) / count;
    costs.push({ what, micros });
    log(`    ${what}: ${fmtUs(micros)}`);
  };
  try {
    sys.ftruncate(fd, bytes);
    const rw = sys.PROT_READ | sys.PROT_WRITE;
    const anon = sys.mmap(null, bytes, rw, sys.MAP_PRIVATE | sys.MAP_ANONYMOUS, -1, 0);
    const a = new Uint8Array(sys.view(anon, bytes));
    const pages = Array.from({ length: n }, (_, i) => i * 4); // one page in four: no neighbours
    time('system call (lseek)', n, () => {
      for (let i = 0; i < n; i++) sys.seek(fd, 0, 0);
    });
    time('write fault, new anonymous page', n, () => {
      for (const p of pages) a[p * PAGE] = 1;
    });
    time('write to a page already written', n, () => {
      for (const p of pages) a[p * PAGE] = 2;
    });
    time('copy a page just written into a memory file (pwrite)', n, () => {
      for (const p of pages) sys.pwriteAll(fd, anon + BigInt(p * PAGE), PAGE, p * PAGE);
    });
    time('the same again (pwrite, both pages known)', n, () => {
      for (const p of pages) sys.pwriteAll(fd, anon + BigInt(p * PAGE), PAGE, p * PAGE);
    });
    time('map one page of a memory file over a written page (mmap)', n, () => {
      for (const p of pages) sys.mmap(anon + BigInt(p * PAGE), PAGE, rw, sys.MAP_PRIVATE | sys.MAP_FIXED, fd, p * PAGE);
    });
    time('first read of a mapped page (fault)', n, () => {
      let x = 0;
      for (const p of pages) x += a[p * PAGE];
      if (x < 0) log('');
    });
    time('first write of a page read before (copy-on-write fault)', n, () => {
      for (const p of pages) a[p * PAGE] = 3;
    });
    time('drop one written page (madvise MADV_DONTNEED)', n, () => {
      for (const p of pages) sys.madvise(anon + BigInt(p * PAGE), PAGE, sys.MADV_DONTNEED);
    });
    sys.munmap(anon, bytes);
    const whole = sys.mmap(null, bytes, rw, sys.MAP_SHARED, fd, 0);
    const w = new Uint8Array(sys.view(whole, bytes));
    sys.madvise(whole, bytes, MADV_POPULATE_WRITE);
    time('first write to a page mapped by the kernel already (populated)', n, () => {
      for (const p of pages) w[p * PAGE] = 4;
    });
    time('unmap, per page mapped', n * 4, () => sys.munmap(whole, bytes));
  } finally {
    sys.closeFd(fd);
  }
  extra.machine = costs;
}
/** MADV_POPULATE_WRITE (Linux 5.14). */
const MADV_POPULATE_WRITE = 23;

// ---- output -------------------------------------------------------------------

function cell(s: Stat | undefined, unit: Row['unit']): string {
  if (s === undefined || !Number.isFinite(s.median)) return '—';
  switch (unit) {
    case 'ms':
      return s.n > 1 ? `${fmtMs(s.median)} (${fmtMs(s.min)})` : `${fmtMs(s.median)} (n=1)`;
    case 'µs/page':
      return `${s.median.toFixed(2)} µs (${s.min.toFixed(2)})`;
    case '/s':
      return `${s.median.toFixed(s.median < 100 ? 1 : 0)}/s (${s.min.toFixed(s.min < 100 ? 1 : 0)})`;
    case 'bytes':
      return fmtBytes(s.median);
    case 'count':
      return String(+s.median.toFixed(1));
  }
}
/** How memfork compares with the cheapest copy: time, memory or rate. */
function ratio(r: Row): string {
  const base = r.set ?? r.slice;
  if (base === undefined || !Number.isFinite(r.memfork.median) || r.memfork.median <= 0) return '';
  const x = r.unit === '/s' ? r.memfork.median / base.median : base.median / r.memfork.median;
  const f = (v: number) => (v >= 100 ? v.toFixed(0) : v.toFixed(1));
  if (r.unit === 'ms' || r.unit === '/s') return x >= 1 ? `${f(x)}× faster` : `${f(1 / x)}× slower`;
  if (r.unit === 'bytes') return x >= 1 ? `${f(x)}× less` : `${f(1 / x)}× more`;
  return '';
}

function printTable(): void {
  const head = ['case', 'size', 'memfork', 'copy: slice()', 'copy: set() into touched', 'memfork vs cheapest copy'];
  const body = rows.map((r) => [r.case, fmtBytes(r.size), cell(r.memfork, r.unit), cell(r.slice, r.unit), cell(r.set, r.unit), ratio(r)]);
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i].length)));
  const line = (cols: string[]) => cols.map((c, i) => (i < 2 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  ');
  console.log(line(head));
  console.log(widths.map((w) => '-'.repeat(w)).join('  '));
  for (const b of body) console.log(line(b));
  console.log();
  const notes = new Map<string, string>();
  for (const r of rows) if (r.note !== undefined) notes.set(`${r.case} (${fmtBytes(r.size)})`, r.note);
  for (const [k, n] of notes) console.log(`${k}: ${n}`);
  console.log();
  console.log('median (minimum) of n runs after a warm-up; (n=1): measured once, too costly to repeat.');
  console.log('restore loop: median (best) rate. first write to a page: memfork column = after a clone;');
  console.log('  the copy columns = first write to fresh memory / write to already touched memory.');
  console.log('fill: the copy column is new Uint8Array(n).fill(). memory per clone: this process (RssAnon + memfd pages).');
  const machineCosts = extra.machine as { what: string; micros: number }[] | undefined;
  if (machineCosts !== undefined) {
    console.log();
    console.log('this machine, kernel operations (per page or per call):');
    const width = Math.max(...machineCosts.map((c) => c.what.length));
    for (const c of machineCosts) console.log(`  ${c.what.padEnd(width)}  ${fmtUs(c.micros).padStart(8)}`);
  }
}

/** Short names for the chart. */
const shortName: Record<string, string> = {
  fill: 'fill',
  'first clone': 'first clone',
  'clone, nothing written': 'nothing written',
  'clone after 1% written, random': '1% random',
  'clone after 1% written, one run': '1% one run',
  'clone after 100% written': '100% written',
};

function tick(ms: number): string {
  if (ms >= 1000) return `${ms / 1000} s`;
  if (ms >= 1) return `${ms} ms`;
  return `${+(ms * 1000).toPrecision(3)} µs`;
}

/** The chart of the cases above, then the pattern matrix's, one above the other. */
function fullSvg(): string {
  const parts: { svg: string; width: number; height: number }[] = [];
  if (rows.some((r) => r.unit === 'ms' && shortName[r.case] !== undefined) || matrix === undefined) {
    const first = svg();
    const m = /width="(\d+(?:\.\d+)?)" height="(\d+(?:\.\d+)?)"/.exec(first)!;
    parts.push({ svg: first, width: Number(m[1]), height: Number(m[2]) });
  }
  if (matrix !== undefined && matrix.cases.length > 0) parts.push(matrixSvg(matrix, 0));
  if (parts.length === 1 && matrix === undefined) return parts[0].svg;
  const width = Math.max(...parts.map((p) => p.width));
  const height = parts.reduce((a, p) => a + p.height, 0);
  const out = [`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="11">`];
  out.push(`<rect width="100%" height="100%" fill="white"/>`);
  let y = 0;
  for (const p of parts) {
    out.push(`<svg y="${y}" width="${p.width}" height="${p.height}">`, p.svg, '</svg>');
    y += p.height;
  }
  out.push('</svg>');
  return out.join('\n');
}

/** A grouped bar chart, log scale: memfork vs the two copies for each timed case, one block per size. */
function svg(): string {
  const timed = rows.filter((r) => r.unit === 'ms' && shortName[r.case] !== undefined);
  const series: { key: 'memfork' | 'slice' | 'set'; label: string; color: string }[] = [
    { key: 'memfork', label: 'memfork', color: '#2b8a3e' },
    { key: 'slice', label: 'copy: slice() (for fill: new Uint8Array + fill)', color: '#c92a2a' },
    { key: 'set', label: 'copy: set() into touched memory', color: '#e8590c' },
  ];
  const values = timed.flatMap((r) => series.map((s) => r[s.key]?.median).filter((x): x is number => x !== undefined && x > 0));
  if (values.length === 0) values.push(1);
  const lo = Math.pow(10, Math.floor(Math.log10(Math.max(1e-4, Math.min(...values)))));
  const hi = Math.pow(10, Math.ceil(Math.log10(Math.max(...values))));
  const bar = 13;
  const gap = 16;
  const blockGap = 30;
  const groupW = series.length * bar + gap;
  const left = 70;
  const top = 70;
  const plotH = 300;
  const sizesShown = [...new Set(timed.map((r) => r.size))];
  const xOf = new Map<Row, number>();
  let x = left + 10;
  for (const size of sizesShown) {
    for (const r of timed.filter((t) => t.size === size)) {
      xOf.set(r, x);
      x += groupW;
    }
    x += blockGap;
  }
  const width = Math.max(x + 40, 760);
  const height = top + plotH + 120;
  const y = (v: number) => top + plotH - ((Math.log10(v) - Math.log10(lo)) / (Math.log10(hi) - Math.log10(lo))) * plotH;
  const esc = (t: string) => t.replace(/&/g, '&amp;').replace(/</g, '&lt;');
  const out: string[] = [];
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="11">`);
  out.push(`<rect width="100%" height="100%" fill="white"/>`);
  out.push(`<text x="${left}" y="22" font-size="15" font-weight="bold">memfork vs copying the bytes: median time per case (log scale, lower is better)</text>`);
  let lx = left;
  for (const s of series) {
    out.push(`<rect x="${lx}" y="36" width="11" height="11" fill="${s.color}"/><text x="${lx + 16}" y="46">${esc(s.label)}</text>`);
    lx += 16 + s.label.length * 6.5 + 24; // about 6.5 px per character at 11 px
  }
  for (let d = lo; d <= hi * 1.0001; d *= 10) {
    out.push(`<line x1="${left}" x2="${width - 20}" y1="${y(d).toFixed(1)}" y2="${y(d).toFixed(1)}" stroke="#e0e0e0"/>`);
    out.push(`<text x="${left - 6}" y="${(y(d) + 4).toFixed(1)}" text-anchor="end">${esc(tick(+d.toPrecision(1)))}</text>`);
  }
  for (const r of timed) {
    const x0 = xOf.get(r)!;
    series.forEach((s, i) => {
      const v = r[s.key]?.median;
      if (v === undefined || !(v > 0)) return;
      const yy = y(Math.max(v, lo));
      out.push(
        `<rect x="${x0 + i * bar}" y="${yy.toFixed(1)}" width="${bar - 2}" height="${(top + plotH - yy).toFixed(1)}" fill="${s.color}">` +
          `<title>${esc(`${r.case}, ${fmtBytes(r.size)}, ${s.label}: ${fmtMs(v)}`)}</title></rect>`,
      );
    });
    const cx = x0 + (series.length * bar) / 2;
    out.push(`<text transform="translate(${cx},${top + plotH + 12}) rotate(40)">${esc(shortName[r.case])}</text>`);
  }
  for (const size of sizesShown) {
    const xs = timed.filter((t) => t.size === size).map((t) => xOf.get(t)!);
    const a = Math.min(...xs);
    const b = Math.max(...xs) + series.length * bar;
    out.push(`<line x1="${a}" x2="${b}" y1="${top + plotH + 88}" y2="${top + plotH + 88}" stroke="#555"/>`);
    out.push(`<text x="${(a + b) / 2}" y="${top + plotH + 104}" text-anchor="middle" font-weight="bold">${esc(fmtBytes(size))}</text>`);
  }
  out.push(`<line x1="${left}" x2="${left}" y1="${top}" y2="${top + plotH}" stroke="#333"/>`);
  out.push(`<line x1="${left}" x2="${width - 20}" y1="${top + plotH}" y2="${top + plotH}" stroke="#333"/>`);
  out.push('</svg>');
  return out.join('\n');
}

// ---- main -----------------------------------------------------------------------

async function main(): Promise<void> {
  const from = arg('chart-from');
  if (from !== undefined) {
    // Redraw the chart from an earlier run's JSON, without measuring.
    const saved = JSON.parse(fs.readFileSync(from, 'utf8')) as { rows: Row[]; matrix?: MatrixResult };
    rows.push(...saved.rows);
    matrix = saved.matrix;
    fs.mkdirSync(outDir, { recursive: true });
    fs.writeFileSync(path.join(outDir, 'bench.svg'), `${fullSvg()}\n`);
    log(`wrote ${path.join(outDir, 'bench.svg')}`);
    return;
  }
  log(
    `memfork bench: backend ${backend.name}, node ${process.version}, ${os.cpus().length} CPUs, ` +
      `load ${os.loadavg().map((l) => l.toFixed(1)).join(' ')}${hasGc ? '' : ' (run with --expose-gc for steadier figures)'}`,
  );
  // Warm-up of every code path on a small size, so compiling is not measured.
  {
    const w = filledSegment(1 << 20, 1);
    const b = new Bytes(w);
    for (let i = 0; i < 20; i++) {
      b.touch(randomPages(256, 3), i);
      w.clone().close();
      w.restore(w.clone());
    }
    w.close();
  }
  for (const size of matrixOnly ? [] : sizes) {
    const available = meminfo('MemAvailable');
    const needed = 3 * size + 2 ** 30;
    if (Number.isFinite(available) && available < needed) {
      log(`\n== ${fmtBytes(size)}: skipped, needs about ${fmtBytes(needed)} free, ${fmtBytes(available)} available ==`);
      continue;
    }
    if (size > 2 ** 32 && backend.maxViewLength <= 2 ** 32) {
      log(`\n== ${fmtBytes(size)}: skipped, a Uint8Array copy over 4 GiB is not possible on this runtime ==`);
      continue;
    }
    benchSize(size);
  }
  if (!matrixOnly) {
    if (chainDepth > 0) benchChain(chainSize, chainDepth);
    if (restoreSeconds > 0) benchRestore(restoreSize, restoreSeconds);
    benchMachine();
  }
  if (withMatrix || matrixOnly) {
    matrix = await runMatrix({
      sizes: matrixSizes,
      rounds,
      seed: 0x2545f491,
      reserve,
      caseTimeoutMs,
      shared: caseChild === 'shared',
      patterns: matrixPatterns,
      modes: matrixModes,
      outDir,
      log,
    });
  }

  const seconds = (now() - began) / 1000;
  if (rows.length > 0) printTable();
  if (matrix !== undefined) printMatrix(matrix);
  console.log(`total ${seconds.toFixed(0)} s; load average at the end ${os.loadavg().map((l) => l.toFixed(1)).join(' ')}`);

  fs.mkdirSync(outDir, { recursive: true });
  const meta = {
    date: new Date().toISOString(),
    node: process.version,
    platform: `${process.platform} ${os.release()} ${process.arch}`,
    cpus: os.cpus().length,
    cpu: os.cpus()[0]?.model,
    memory: os.totalmem(),
    loadavg: os.loadavg(),
    backend: backend.name,
    pageSize: PAGE,
    quick,
    seconds,
  };
  fs.writeFileSync(path.join(outDir, 'bench.json'), `${JSON.stringify({ meta, rows, extra, matrix }, null, 2)}\n`);
  fs.writeFileSync(path.join(outDir, 'bench.svg'), `${fullSvg()}\n`);
  log(`\nwrote ${path.join(outDir, 'bench.json')} and ${path.join(outDir, 'bench.svg')}`);
}

main().catch((err: unknown) => {
  process.stderr.write(`${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exitCode = 1;
});
