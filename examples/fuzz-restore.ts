// A fuzzing loop that resets its target's memory thousands of times a second.
//
// Fuzzers run a target over and over from the same starting state. Forking a
// process for each input is the classic way to get a clean state cheaply; here
// the target's whole heap is a memfork segment, and after every input it is
// reset with restore(snapshot): only the pages the input dirtied are dropped,
// whatever the size of the heap.
//
//   node -r ts-node/register examples/fuzz-restore.ts [--size 256M] [--seconds 2] [--iterations N] [--dirty 8]
//
// Exits 0 when every reset gave back exactly the starting state, 1 otherwise.
import { createHash } from 'node:crypto';
import { Segment, backend } from '../src/index.ts';

function option(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : undefined;
}
function size(text: string): number {
  const m = /^(\d+)([kKmMgG]?)$/.exec(text);
  if (m === null) throw new RangeError(`Invalid size: ${text}`);
  return Number(m[1]) * { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 }[m[2].toLowerCase() as '' | 'k' | 'm' | 'g'];
}

const SIZE = size(option('size') ?? '256M');
const SECONDS = Number(option('seconds') ?? 2);
const ITERATIONS = option('iterations') === undefined ? Infinity : Number(option('iterations'));
const PAGE = backend.pageSize;
const PAGES = SIZE / PAGE;
const MAX_DIRTY = Number(option('dirty') ?? 8); // an input dirties 1..MAX_DIRTY pages of the heap

// ---- the target: a toy program with a 'heap' it scribbles on ------------------
const heap = Segment.create(SIZE);
const mem = new Uint8Array(heap.buffer); // valid across every restore()

// Starting state: a header page and a marker at the start of every page.
mem.set(new TextEncoder().encode('fuzz target heap v1'), 0);
for (let p = 1; p < PAGES; p++) mem[p * PAGE] = p & 0xff;
const startDigest = digest();
const snapshot = heap.clone(); // the state every input starts from

function digest(): string {
  const h = createHash('sha256');
  const window = Math.min(SIZE, 1 << 28);
  for (let off = 0; off < SIZE; off += window) h.update(mem.subarray(off, off + window));
  return h.digest('hex');
}

/**
 * Runs one input: writes into up to MAX_DIRTY pages. It 'crashes' (returns
 * true) when it finds a page marker clobbered, which can only be the leftover
 * of an earlier input if resetting failed.
 */
function target(input: Uint32Array): boolean {
  let crashed = false;
  for (let i = 0; i < input.length; i++) {
    const page = input[i] % PAGES;
    if (page !== 0 && mem[page * PAGE] !== (page & 0xff)) crashed = true;
  }
  for (let i = 0; i < input.length; i++) {
    const page = input[i] % PAGES;
    mem[page * PAGE + ((input[i] >>> 20) % PAGE)] ^= 0x5a;
    mem[page * PAGE] = 0xee; // clobbers the marker: the next input would see it if not reset
  }
  return crashed;
}

// ---- the loop ----------------------------------------------------------------
let seed = 0x9e3779b9;
const next = () => (seed = (Math.imul(seed ^ (seed >>> 15), 0x2c1b3c6d) + 0x6d2b79f5) >>> 0);
const input = new Uint32Array(MAX_DIRTY);
let runs = 0;
let dirtied = 0;
let leaks = 0;
let failures = 0;
let targetMs = 0; // running inputs, including the kernel's copy-on-write of each first write
let restoreMs = 0;

console.log(`target heap ${SIZE / 2 ** 20} MiB (${PAGES} pages), backend ${backend.name}; each input dirties 1–${MAX_DIRTY} pages`);
const start = performance.now();
const deadline = start + SECONDS * 1000;
let lastReport = start;
while (runs < ITERATIONS && (ITERATIONS !== Infinity || performance.now() < deadline)) {
  const n = 1 + (next() % MAX_DIRTY);
  for (let i = 0; i < n; i++) input[i] = next();
  const t0 = performance.now();
  if (target(input.subarray(0, n))) leaks++;
  const t1 = performance.now();
  heap.restore(snapshot); // back to the starting state
  restoreMs += performance.now() - t1;
  targetMs += t1 - t0;
  runs++;
  dirtied += n;
  // Spot check after each reset: the pages this input touched read as before.
  for (let i = 0; i < n; i++) {
    const page = input[i] % PAGES;
    if (page !== 0 && mem[page * PAGE] !== (page & 0xff)) failures++;
  }
  const now = performance.now();
  if (now - lastReport >= 500) {
    process.stderr.write(`  ${runs} inputs, ${((runs * 1000) / (now - start)).toFixed(0)}/s\r`);
    lastReport = now;
  }
}
const seconds = (performance.now() - start) / 1000;
process.stderr.write('\n');

const rate = runs / seconds;
console.log(`ran ${runs} inputs in ${seconds.toFixed(2)} s: ${rate.toFixed(0)} restores per second`);
console.log(
  `  ${(dirtied / runs).toFixed(1)} pages dirtied per input on average; per input: ` +
    `${((restoreMs * 1000) / runs).toFixed(1)} µs in restore(), ${((targetMs * 1000) / runs).toFixed(1)} µs running it ` +
    `(mostly the kernel copying each page on its first write)`,
);
let ok = true;
const check = (pass: boolean, what: string) => {
  console.log(`  ${pass ? '✔' : '✘'} ${what}`);
  ok &&= pass;
};
check(failures === 0, 'after every restore() the pages the input wrote read as at the start');
check(leaks === 0, 'no input ever saw the writes of an earlier one');
check(digest() === startDigest, 'the whole heap is byte for byte the starting state at the end');
check(heap.stats().mappings < 64, `the heap still uses few mappings (${heap.stats().mappings})`);
snapshot.close();
heap.close();
console.log(ok ? 'OK' : 'FAILED');
process.exit(ok ? 0 : 1);
