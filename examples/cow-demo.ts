// The classic copy-on-write demonstration, in one process.
//
// Mach's vm_remap example writes 'a' into memory, remaps it with copy = TRUE,
// writes 'b' into the copy and shows that the original still reads 'a'. Here
// the same steps run on a memfork segment, and the process's memory is shown
// after each step: the clone costs (almost) nothing, and writing 'b' into the
// clone costs one page.
//
//   npm run demo                 # 64 MiB segment
//   npm run demo -- --pages 1    # exactly one page, as in the Mach example
//   npm run demo -- --size 1G
//
// Exits 0 when the clone reads 'b' and the origin still reads 'a', else 1.
import * as fs from 'node:fs';
import { Segment, backend, memoryStats } from '../src/index.ts';

const PAGE = backend.pageSize;
const A = 'a'.charCodeAt(0);
const B = 'b'.charCodeAt(0);

// ---- arguments -------------------------------------------------------------

function parseSize(text: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?$/i.exec(text.trim());
  if (m === null) throw new RangeError(`Invalid size: ${text} (try 4096, 64M, 1G)`);
  const scale = { '': 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40 }[m[2].toLowerCase() as '' | 'k' | 'm' | 'g' | 't'];
  return Math.round(Number(m[1]) * scale);
}

function option(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  if (i >= 0) return process.argv[i + 1];
  const eq = process.argv.find((a) => a.startsWith(`--${name}=`));
  return eq?.slice(name.length + 3);
}

const pagesArg = option('pages');
const sizeArg = option('size') ?? process.env.MEMFORK_DEMO_SIZE;
const size =
  pagesArg !== undefined ? Number(pagesArg) * PAGE : sizeArg !== undefined ? parseSize(sizeArg) : 64 * 2 ** 20;
if (!Number.isSafeInteger(size) || size < PAGE) {
  console.error(`cow-demo: the segment must be at least one page (${PAGE} bytes)`);
  process.exit(2);
}
if (size > backend.maxViewLength) {
  console.error(`cow-demo: at most ${backend.maxViewLength} bytes here (one buffer); examples/large-segment.ts shows larger ones`);
  process.exit(2);
}

// ---- measuring the process -------------------------------------------------

interface Sample {
  /** Virtual size of the process (VmSize). */
  vmSize: number;
  /** Resident set: pages mapped into this process's page tables (VmRSS). */
  rss: number;
  /**
   * Memory the process really holds: its private anonymous pages plus the
   * pages stored in its memfd files, each counted once however many times it
   * is mapped. NaN where /proc is unavailable.
   */
  held: number;
}

const linux = process.platform === 'linux' && fs.existsSync('/proc/self/status');

function statusField(text: string, key: string): number {
  const m = new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(text);
  return m === null ? NaN : Number(m[1]) * 1024;
}

/** Bytes stored in every memfd this process has open or mapped. */
function memfdBytes(): number {
  const seen = new Set<string>();
  let total = 0;
  const visit = (path: string): void => {
    let target: string;
    try {
      target = fs.readlinkSync(path);
    } catch {
      return;
    }
    if (!target.startsWith('/memfd:')) return;
    try {
      const st = fs.statSync(path);
      const key = `${st.dev}:${st.ino}`;
      if (seen.has(key)) return;
      seen.add(key);
      total += st.blocks * 512;
    } catch {
      // Closed between readlink and stat: nothing to count.
    }
  };
  for (const fd of fs.readdirSync('/proc/self/fd')) visit(`/proc/self/fd/${fd}`);
  // Layers whose descriptor is closed stay reachable through their mappings.
  try {
    for (const range of fs.readdirSync('/proc/self/map_files')) visit(`/proc/self/map_files/${range}`);
  } catch {
    // map_files needs privileges on some systems; open descriptors still count.
  }
  return total;
}

function sample(): Sample {
  if (!linux) return { vmSize: NaN, rss: process.memoryUsage().rss, held: NaN };
  const status = fs.readFileSync('/proc/self/status', 'utf8');
  return {
    vmSize: statusField(status, 'VmSize'),
    rss: statusField(status, 'VmRSS'),
    held: statusField(status, 'RssAnon') + memfdBytes(),
  };
}

// ---- pretty printing ---------------------------------------------------------

const tty = process.stdout.isTTY === true && process.env.NO_COLOR === undefined;
const paint = (code: number) => (s: string) => (tty ? `\x1b[${code}m${s}\x1b[0m` : s);
const bold = paint(1);
const dim = paint(2);
const green = paint(32);
const red = paint(31);
const yellow = paint(33);

function bytes(n: number): string {
  if (!Number.isFinite(n)) return 'n/a';
  const abs = Math.abs(n);
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let u = 0;
  let v = abs;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  const text = u === 0 ? `${v} ${units[u]}` : `${v.toFixed(v >= 100 ? 0 : 1)} ${units[u]}`;
  return n < 0 ? `-${text}` : text;
}

function delta(d: number): string {
  if (!Number.isFinite(d)) return '';
  // Pages are the unit that matters; anything under a page is noise from the runtime.
  const text = `${d >= 0 ? '+' : ''}${bytes(d)}`;
  return Math.abs(d) >= 2 ** 20 ? yellow(text) : green(text);
}

const hex = (addr: bigint) => `0x${addr.toString(16).padStart(12, '0')}`;
const char = (code: number) => `'${String.fromCharCode(code)}'`;
const pad = (s: string, n: number) => {
  // eslint-disable-next-line no-control-regex
  const visible = s.replace(/\x1b\[\d+m/g, '').length;
  return s + ' '.repeat(Math.max(0, n - visible));
};

// ---- the scenario ----------------------------------------------------------

interface Outcome {
  origin: Segment;
  clone: Segment;
  samples: Sample[];
}

/**
 * Writes 'a' over the whole segment, clones it, checks the origin still
 * reads 'a' everywhere, then writes 'b' into the clone's first page.
 * A sample of the process's memory is taken after each of the three steps.
 */
function run(length: number): Outcome {
  const samples: Sample[] = [];
  samples.push(sample()); // before anything

  const origin = Segment.create(length);
  new Uint8Array(origin.buffer).fill(A);
  samples.push(sample()); // 1: after write 'a'

  const clone = origin.clone();
  // Reading the origin maps its (shared) pages back into the page tables, so
  // that VmRSS counts them again; it allocates nothing.
  const o = new Uint8Array(origin.buffer);
  for (let i = 0; i < length; i += PAGE) if (o[i] !== A) throw new Error(`origin changed at byte ${i}`);
  samples.push(sample()); // 2: after clone

  new Uint8Array(clone.buffer)[0] = B;
  samples.push(sample()); // 3: after write 'b'
  return { origin, clone, samples };
}

// The runtime allocates a little memory of its own now and then (compiled
// code, heap pages), a few KiB at a time. To keep that out of the figures, run
// once to warm up, churn through short-lived objects so that the heap's
// nursery has been touched throughout, then repeat the scenario and report
// the median change at each step.
const rounds = Math.max(1, Number(option('rounds') ?? 5));
{
  const w = run(size);
  w.origin.close();
  w.clone.close();
  let keep = 0;
  for (let i = 0; i < 2_000_000; i++) keep += [i, i + 1].length;
  if (keep === 0) console.log();
}
const runs: Outcome[] = [];
for (let r = 0; r < rounds; r++) {
  if (r > 0) {
    runs[r - 1].origin.close();
    runs[r - 1].clone.close();
  }
  runs.push(run(size));
}
const { origin, clone, samples } = runs[rounds - 1];

function median(values: number[]): number {
  const v = [...values].sort((x, y) => x - y);
  return v.length % 2 === 1 ? v[(v.length - 1) / 2] : (v[v.length / 2 - 1] + v[v.length / 2]) / 2;
}
/** Median change of one figure at step `i` (1..3) over all rounds. */
function step(i: number, key: keyof Sample): number {
  return median(runs.map((o) => o.samples[i][key] - o.samples[i - 1][key]));
}

const originByte = new Uint8Array(origin.buffer)[0];
const cloneByte = new Uint8Array(clone.buffer)[0];
const originLast = new Uint8Array(origin.buffer)[size - 1];
const cloneLast = new Uint8Array(clone.buffer)[size - 1];

console.log(bold('memfork copy-on-write demo'));
console.log(
  dim(
    `backend ${backend.name}, page ${bytes(PAGE)}, segment ${bytes(size)} (${size / PAGE} page${size / PAGE === 1 ? '' : 's'}), node ${process.version}`,
  ),
);
console.log();
console.log(`  1. origin = Segment.create(${size}); every byte written with ${char(A)}`);
console.log(`  2. clone  = origin.clone()`);
console.log(`  3. clone's first byte written with ${char(B)}`);
console.log();
console.log(`  ${pad('', 10)}${pad('address', 18)}${pad('byte 0', 9)}last byte`);
console.log(`  ${pad('origin', 10)}${pad(hex(origin.address), 18)}${pad(char(originByte), 9)}${char(originLast)}`);
console.log(`  ${pad('clone', 10)}${pad(hex(clone.address), 18)}${pad(char(cloneByte), 9)}${char(cloneLast)}`);
console.log();

const cols = [22, 22, 22, 22];
const header = ['', 'VmSize', 'VmRSS', 'memory held ¹'];
console.log('  ' + header.map((h, i) => pad(bold(h), cols[i])).join(''));
const labels = [`after write ${char(A)}`, 'after clone', `after write ${char(B)}`];
for (let i = 1; i <= 3; i++) {
  const s = samples[i];
  const cell = (key: keyof Sample) =>
    Number.isFinite(s[key]) ? `${bytes(s[key])} ${delta(step(i, key))}` : 'n/a';
  console.log(
    '  ' + [labels[i - 1], cell('vmSize'), cell('rss'), cell('held')].map((c, j) => pad(c, cols[j])).join(''),
  );
}
console.log();
if (linux) {
  console.log(dim(`  changes: median of ${rounds} runs.  ¹ private anonymous pages + pages in memfd files, each counted once.`));
  console.log(dim('    VmRSS counts a page once per mapping; VmSize grows by the clone\'s address range.'));
} else {
  console.log(dim('  (RSS from process.memoryUsage(); VmSize and memory held need Linux /proc)'));
}
const stats = memoryStats();
console.log(
  dim(
    `  memoryStats(): ${stats.segments} segments, ${stats.layers} layer${stats.layers === 1 ? '' : 's'} holding ${bytes(stats.layerBytes)}, ` +
      `${bytes(stats.privateBytes)} private, ${stats.mappings} mappings`,
  ),
);
console.log();

const ok = cloneByte === B && originByte === A && cloneLast === A && originLast === A;
const cloneGrowth = step(2, 'held');
const writeGrowth = step(3, 'held');
if (ok) {
  console.log(
    green(bold(`✔ clone reads ${char(cloneByte)}, origin still reads ${char(originByte)}`)) +
      (linux
        ? dim(`  (the clone cost ${bytes(cloneGrowth)} of memory, the write ${bytes(writeGrowth)})`)
        : ''),
  );
} else {
  console.log(red(bold(`✘ clone reads ${char(cloneByte)}, origin reads ${char(originByte)}: copy-on-write is broken`)));
}
origin.close();
clone.close();
process.exit(ok ? 0 : 1);
