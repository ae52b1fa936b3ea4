// One process that runs memfork cases of the bench's matrix, for
// examples/bench.ts, so that a case that crashes the process costs the bench
// only that case. Reads one case a line on stdin (JSON, see CaseSpec), prints
// `{"start":ID}` when it begins one and `{"result":{...}}` when it is done;
// progress goes to stderr. Ends when stdin ends.
//
// A case: a segment of `size` bytes, every byte written; then `rounds` times:
// write the pattern's pages (one byte each), clone(); the clone is closed at
// once (letgo), kept, or kept and one byte of each of its pages read (read).
// Then memory and mappings are measured, and every kept snapshot (and the
// segment itself) is checked byte for byte against what it must hold.
import { Buffer } from 'node:buffer';
import * as readline from 'node:readline';
import { Segment, backend, memoryStats } from '../../src/index.ts';
import * as sys from '../../platform/libc.ts';
import { heldMemory, kb, readProc } from './proc.ts';
import { FILL, XorShift32, foldPages, pagesPerRound, pickPages, roundValue, runsOf } from './pattern.ts';
import type { ModeId, PatternId } from './pattern.ts';

/** What the bench asks for. */
export interface CaseSpec {
  id: string;
  size: number;
  pattern: PatternId;
  mode: ModeId;
  rounds: number;
  seed: number;
  /** Bytes of MemAvailable to leave: a round is not started below this plus twice what it writes. */
  reserve: number;
  /** Measure what dropping a page costs (once a size is enough). */
  measureDrop: boolean;
}

const PAGE = backend.pageSize;
/** The most a case's warm-up writes (warmUp). */
const WARM_UP_BYTES = 16 * 2 ** 20;
/** The most rounds a case's warm-up runs (warmUp). */
const WARM_UP_ROUNDS = 40;
const now = () => performance.now();
const gc = () => (globalThis as { gc?: () => void }).gc?.();
const log = (s: string) => process.stderr.write(`${s}\n`);

/** The memory figures of the case process; the process's own first, before memoryStats() does any work of its own. */
function snapshot() {
  const mi = readProc('/proc/meminfo');
  const st = readProc('/proc/self/status');
  const held = heldMemory();
  const mapsLines = readProc('/proc/self/maps').split('\n').filter(Boolean).length;
  const ms = memoryStats();
  return {
    held,
    accounted: ms.layerBytes + ms.privateBytes,
    machine: kb(mi, 'Shmem') + kb(mi, 'AnonPages'),
    pageTables: kb(mi, 'PageTables'),
    process: kb(st, 'RssAnon') + kb(st, 'RssShmem'),
    mapsLines,
    memforkMappings: ms.mappings,
  };
}

/**
 * Wrong bytes of a kept snapshot. One that was read is read again through its
 * own views. One never touched is left so: it is restored into a scratch
 * segment, which is read and closed (a rollback, the use such snapshots are
 * kept for), where reading each would map it for good: old snapshots of
 * scattered writes each need their own copy of the pages they differ in to
 * be read at once (README, limits).
 */
function checkKept(snap: Segment, read: boolean, first: Uint8Array, ref: Uint8Array): number {
  if (read) return new Windows(snap).wrongBytes(first, ref);
  // A clone shares the snapshot's run list; reading it maps its largest
  // layer and copies in only the pages other layers hold, where a restore
  // into a fresh segment would copy every page that differs from it (all
  // of them: 4 GiB at 4 GiB, every 2nd page, which the machine's memory
  // did not have beside six snapshots).
  const scratch = snap.clone();
  try {
    return new Windows(scratch).wrongBytes(first, ref);
  } finally {
    scratch.close();
  }
}

/** A segment's bytes as windows of at most 1 GiB (views detach when it closes). */
class Windows {
  readonly windows: Uint8Array[] = [];
  readonly pagesPer: number;
  constructor(seg: Segment) {
    const span = Math.floor(Math.min(backend.maxViewLength, 2 ** 30) / PAGE) * PAGE;
    this.pagesPer = span / PAGE;
    for (let off = 0; off < seg.byteLength; off += span) {
      this.windows.push(new Uint8Array(seg.view(off, Math.min(span, seg.byteLength - off))));
    }
  }
  write(list: Uint32Array, count: number, value: number): void {
    const per = this.pagesPer;
    for (let i = 0; i < count; i++) {
      const p = list[i];
      const w = (p / per) | 0;
      this.windows[w][(p - w * per) * PAGE] = value;
    }
  }
  /** Reads one byte of every page. */
  readAll(): number {
    let sum = 0;
    for (const w of this.windows) for (let off = 0; off < w.length; off += PAGE) sum += w[off];
    return sum;
  }
  /**
   * Wrong bytes against the model: byte 0 of page p must be `first[p]`, every
   * other byte FILL. Compared 256 pages at a time with Buffer#equals (memcmp).
   */
  wrongBytes(first: Uint8Array, ref: Uint8Array): number {
    const chunkPages = ref.length / PAGE;
    let wrong = 0;
    let page = 0;
    for (const w of this.windows) {
      for (let off = 0; off < w.length; off += ref.length) {
        const len = Math.min(ref.length, w.length - off);
        const n = len / PAGE;
        for (let i = 0; i < n; i++) ref[i * PAGE] = first[page + i];
        const got = Buffer.from(w.buffer, w.byteOffset + off, len);
        if (!got.equals(Buffer.from(ref.buffer, ref.byteOffset, len))) {
          for (let i = 0; i < len; i++) if (got[i] !== ref[i]) wrong++;
        }
        for (let i = 0; i < n; i++) ref[i * PAGE] = FILL;
        page += n;
        if (n < chunkPages) break;
      }
    }
    return wrong;
  }
}

interface Failure {
  name: string;
  code?: string;
  message: string;
  round: number;
  phase: string;
}

function describe(err: unknown, round: number, phase: string): Failure {
  const e = err as { name?: unknown; code?: unknown; message?: unknown };
  return {
    name: typeof e?.name === 'string' ? e.name : 'Error',
    code: typeof e?.code === 'string' ? e.code : undefined,
    message: typeof e?.message === 'string' ? e.message.slice(0, 400) : String(err).slice(0, 400),
    round,
    phase,
  };
}

/**
 * The copy floor measured here, in JS: round 1's runs copied with
 * TypedArray#set; what dropping a written page costs, through madvise() a
 * page and through process_madvise() 1,024 pages a call (where the kernel
 * takes it for the calling process).
 */
function jsFloor(
  w: Windows,
  spec: CaseSpec,
  pages: number,
): { copyMs: number; pages: number; runs: number; dropMicrosPerPage: number; batchedDropMicrosPerPage: number } {
  const list = new Uint32Array(pagesPerRound(spec.pattern, pages));
  const n = pickPages(spec.pattern, pages, new XorShift32(spec.seed), list, new Uint8Array(pages));
  const runs = runsOf(list, n);
  const cap = Math.min(n, 65536);
  const dst = new Uint8Array(cap * PAGE).fill(3);
  let copyMs = Infinity;
  for (let rep = 0; rep < 3; rep++) {
    let at = 0;
    const t = now();
    for (const [first, count] of runs) {
      let p = first;
      let left = count;
      while (left > 0) {
        const win = (p / w.pagesPer) | 0;
        const inWin = Math.min(left, cap, (win + 1) * w.pagesPer - p);
        if (at + inWin > cap) at = 0;
        const off = (p - win * w.pagesPer) * PAGE;
        dst.set(w.windows[win].subarray(off, off + inWin * PAGE), at * PAGE);
        at += inWin;
        p += inWin;
        left -= inWin;
      }
    }
    copyMs = Math.min(copyMs, now() - t);
  }
  let dropMicrosPerPage = NaN;
  let batchedDropMicrosPerPage = NaN;
  if (spec.measureDrop && process.platform === 'linux' && backend.name === 'linux') {
    const k = 2048;
    const rw = sys.PROT_READ | sys.PROT_WRITE;
    const addr = sys.mmap(null, k * PAGE, rw, sys.MAP_PRIVATE | sys.MAP_ANONYMOUS, -1, 0);
    const a = new Uint8Array(sys.view(addr, k * PAGE));
    for (let rep = 0; rep < 3; rep++) {
      a.fill(2);
      const t = now();
      for (let i = 0; i < k; i += 2) sys.madvise(addr + BigInt(i * PAGE), PAGE, sys.MADV_DONTNEED);
      const us = ((now() - t) * 1000) / (k / 2);
      dropMicrosPerPage = Number.isNaN(dropMicrosPerPage) ? us : Math.min(dropMicrosPerPage, us);
    }
    const iov = new BigUint64Array(2 * 1024);
    try {
      for (let rep = 0; rep < 3; rep++) {
        a.fill(2);
        const t = now();
        for (let i = 0; i < k; ) {
          let c = 0;
          for (; i < k && c < 1024; i += 2, c++) {
            iov[2 * c] = addr + BigInt(i * PAGE);
            iov[2 * c + 1] = BigInt(PAGE);
          }
          if (sys.processMadvise(iov, c, sys.MADV_DONTNEED) !== c * PAGE) throw new Error('process_madvise stopped early');
        }
        const us = ((now() - t) * 1000) / (k / 2);
        batchedDropMicrosPerPage = Number.isNaN(batchedDropMicrosPerPage) ? us : Math.min(batchedDropMicrosPerPage, us);
      }
    } catch {
      // not on this kernel: madvise() a page is the figure
    }
    sys.munmap(addr, k * PAGE);
  }
  return { copyMs, pages: n, runs: runs.length, dropMicrosPerPage, batchedDropMicrosPerPage };
}

/**
 * The case itself at a sixteenth of its size, at most 16 MiB (at least 64
 * pages): its pattern and mode for WARM_UP_ROUNDS rounds, at most six
 * snapshots kept at once (the oldest closed), everything closed after. A
 * fresh process runs the engine's code interpreted until the JIT has
 * compiled it, and grows its heaps (V8's young generation, the allocator's,
 * the FFI's call memory) once: costs of the process's first clones, not of
 * the case's, which a cold six-round case would count as its own (README,
 * Performance, has the cold figures). Six rounds of warm-up were too few
 * (256 MiB, 1% at random, kept: the bookkeeping around the copies took
 * 1.1–1.4 ms a clone after six, 0.3 after 40). No more memory than that:
 * memory freed just before a case is handed back to the host on this VM
 * and costs the case a fault in the host to use again (README, Performance).
 */
function warmUp(spec: CaseSpec): void {
  const pages = Math.max(64, Math.floor(Math.min(spec.size / 16, WARM_UP_BYTES) / PAGE));
  const list = new Uint32Array(pagesPerRound(spec.pattern, pages));
  const mark = new Uint8Array(pages);
  const rng = new XorShift32(spec.seed ^ 0x5bd1e995);
  const seg = Segment.create(pages * PAGE);
  const kept: Segment[] = [];
  try {
    const w = new Windows(seg);
    for (const v of w.windows) v.fill(FILL);
    for (let round = 0; round < WARM_UP_ROUNDS; round++) {
      w.write(list, pickPages(spec.pattern, pages, rng, list, mark), roundValue(round));
      const c = seg.clone();
      if (spec.mode === 'letgo') c.close();
      else kept.push(c);
      if (spec.mode === 'read') new Windows(c).readAll();
      if (kept.length > 6) kept.shift()!.close();
    }
  } finally {
    for (const k of kept) k.close();
    seg.close();
  }
}

export function runCase(spec: CaseSpec) {
  const pages = Math.floor(spec.size / PAGE);
  const size = pages * PAGE;
  const perRound = pagesPerRound(spec.pattern, pages);
  const list = new Uint32Array(perRound);
  const mark = new Uint8Array(pages);
  const cloneMs: number[] = [];
  const writeMs: number[] = [];
  const readMs: number[] = [];
  const kept: Segment[] = [];
  let failure: Failure | undefined;
  let stopped: string | undefined;
  let checksum = 0;
  let hot: Segment | undefined;
  let before: ReturnType<typeof snapshot> | undefined;
  let after: ReturnType<typeof snapshot> | undefined;
  let segmentMappings: { hot: number; keptMax: number; keptMedian: number } | undefined;
  let memory: ReturnType<typeof memoryStats> | undefined;
  let verify: { checkedBytes: number; wrongBytes: number; segments: number } | undefined;
  let floor: ReturnType<typeof jsFloor> | undefined;
  let round = 0;
  let phase = 'warm-up';
  try {
    warmUp(spec);
    phase = 'create';
    hot = Segment.create(size);
    const hotWindows = new Windows(hot);
    phase = 'fill';
    for (const w of hotWindows.windows) w.fill(FILL);
    gc();
    before = snapshot();
    const rng = new XorShift32(spec.seed);
    for (round = 0; round < spec.rounds; round++) {
      const available = kb(readProc('/proc/meminfo'), 'MemAvailable');
      const need = spec.reserve + 2 * perRound * PAGE;
      if (available < need) {
        stopped = `stopped before round ${round + 1}: MemAvailable ${Math.round(available / 2 ** 20)} MiB, below ${Math.round(need / 2 ** 20)} MiB`;
        break;
      }
      phase = 'write';
      const n = pickPages(spec.pattern, pages, rng, list, mark);
      checksum = foldPages(checksum, list, n);
      const t0 = now();
      hotWindows.write(list, n, roundValue(round));
      const t1 = now();
      phase = 'clone';
      const c = hot.clone();
      const t2 = now();
      writeMs.push(t1 - t0);
      cloneMs.push(t2 - t1);
      if (spec.mode === 'letgo') {
        phase = 'close';
        c.close();
      } else {
        kept.push(c);
        if (spec.mode === 'read') {
          phase = 'read';
          const t3 = now();
          new Windows(c).readAll();
          readMs.push(now() - t3);
        }
      }
    }
  } catch (err) {
    failure = describe(err, round + 1, phase);
  }
  try {
    gc();
    after = snapshot();
    memory = memoryStats();
    if (hot !== undefined && !hot.closed && before !== undefined) {
      const m = kept.map((k) => k.stats().mappings).sort((a, b) => a - b);
      segmentMappings = { hot: hot.stats().mappings, keptMax: m.length ? m[m.length - 1] : 0, keptMedian: m.length ? m[m.length >> 1] : 0 };
      // Every kept snapshot, then the segment, against the model replayed from the seed.
      phase = 'verify';
      const first = new Uint8Array(pages).fill(FILL);
      const ref = new Uint8Array(256 * PAGE).fill(FILL);
      const rng = new XorShift32(spec.seed);
      verify = { checkedBytes: 0, wrongBytes: 0, segments: 0 };
      const done = cloneMs.length;
      for (let r = 0; r < done; r++) {
        const n = pickPages(spec.pattern, pages, rng, list, mark);
        const v = roundValue(r);
        for (let i = 0; i < n; i++) first[list[i]] = v;
        if (r < kept.length) {
          verify.wrongBytes += checkKept(kept[r], spec.mode === 'read', first, ref);
          verify.checkedBytes += size;
          verify.segments++;
        }
      }
      // A round whose clone() threw had written its pages.
      if (failure?.phase === 'clone') {
        const n = pickPages(spec.pattern, pages, rng, list, mark);
        const v = roundValue(done);
        for (let i = 0; i < n; i++) first[list[i]] = v;
      }
      verify.wrongBytes += new Windows(hot).wrongBytes(first, ref);
      verify.checkedBytes += size;
      verify.segments++;
      phase = 'floor';
      floor = jsFloor(new Windows(hot), spec, pages);
    }
  } catch (err) {
    failure ??= describe(err, round + 1, phase);
  }
  for (const k of kept) k.close();
  hot?.close();
  gc();
  return {
    id: spec.id,
    outcome: failure !== undefined ? 'error' : stopped !== undefined ? 'stopped' : 'ok',
    failure,
    stopped,
    size,
    pattern: spec.pattern,
    mode: spec.mode,
    rounds: spec.rounds,
    roundsDone: cloneMs.length,
    pagesPerRound: perRound,
    checksum,
    cloneMs,
    writeMs,
    readMs,
    before,
    after,
    kept: kept.length,
    segmentMappings,
    memoryStats: memory,
    verify,
    floor,
  };
}

export type CaseResult = ReturnType<typeof runCase>;

function main(): void {
  const lines = readline.createInterface({ input: process.stdin, terminal: false });
  lines.on('line', (line) => {
    if (line.trim() === '') return;
    const spec = JSON.parse(line) as CaseSpec;
    process.stdout.write(`${JSON.stringify({ start: spec.id })}\n`);
    // For the bench's own test: a case that takes its process down.
    if (process.env.MEMFORK_BENCH_CRASH_CASE === spec.id) process.kill(process.pid, 'SIGKILL');
    const t = now();
    const result = runCase(spec);
    log(`    memfork ${spec.id}: ${result.outcome}${result.failure ? ` (${result.failure.code ?? result.failure.name})` : ''}, ${((now() - t) / 1000).toFixed(1)} s`);
    process.stdout.write(`${JSON.stringify({ result })}\n`);
  });
}

main();
