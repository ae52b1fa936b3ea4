// The classic copy-on-write demonstration, in one process.
//
// Mach's vm_remap example writes 'a' into a page, remaps it with copy = TRUE,
// writes 'b' into the copy, and prints after each step the addresses, the
// byte each side reads and the task's resident memory (task_info). Here the
// same steps run on a memfork segment: one page written 'a', cloned, the
// clone written 'b'. The memory shown after each step is the number of
// physical pages holding the two segments' bytes, read from the kernel
// (/proc/self/smaps and the memory files' sizes), so the runtime's own
// allocations do not blur it: one page for 'a', none for the clone, one for
// 'b'. Other figures follow, labelled as such.
//
//   npm run demo                 # one page, as in the Mach example
//   npm run demo -- --pages 16   # every page written 'a', the clone's first byte 'b'
//   npm run demo -- --size 64M
//
// Exits 0 when the clone reads 'b' and the origin still reads 'a' (every
// byte of both checked), else 1.
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
const size = pagesArg !== undefined ? Number(pagesArg) * PAGE : sizeArg !== undefined ? parseSize(sizeArg) : PAGE;
if (!Number.isSafeInteger(size) || size < PAGE) {
  console.error(`cow-demo: the segment must be at least one page (${PAGE} bytes)`);
  process.exit(2);
}
if (size > backend.maxViewLength) {
  console.error(`cow-demo: at most ${backend.maxViewLength} bytes here (one buffer); examples/large-segment.ts shows larger ones`);
  process.exit(2);
}
const pages = Math.ceil(size / PAGE);

// ---- measuring the segments ------------------------------------------------

const linux = process.platform === 'linux' && fs.existsSync('/proc/self/smaps');
/**
 * The per-page figures read the segments' own mappings, which only the linux
 * backend has to itself (the copy backend's segments sit in memory the
 * runtime allocated, among its other objects).
 */
const measured = linux && backend.name === 'linux';

/** What the kernel holds for the two segments. */
interface Sample {
  /**
   * Physical pages holding the segments' bytes, each counted once: the
   * anonymous pages in their mappings (copies a write made) and the pages of
   * the memory files they map (memfork's layers). NaN without /proc.
   */
  held: number;
  /** Rss of their mappings: a page mapped by both is counted twice, as VmRSS and task_info count. */
  resident: number;
}

/** Whole-process figures from /proc/self/status, in bytes. */
interface ProcessSample {
  vmRss: number;
  rssAnon: number;
  rssShmem: number;
  vmPte: number;
}

interface Vma {
  lo: bigint;
  hi: bigint;
  inode: string;
  path: string;
  rss: number;
  anonymous: number;
  swap: number;
}

function kb(block: string, key: string): number {
  const m = new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(block);
  return m === null ? 0 : Number(m[1]) * 1024;
}

function vmas(): Vma[] {
  const text = fs.readFileSync('/proc/self/smaps', 'utf8');
  return text.split(/\n(?=[0-9a-f]+-[0-9a-f]+ )/).map((block) => {
    const header = block.slice(0, block.indexOf('\n')).split(/\s+/);
    const [lo, hi] = header[0].split('-').map((x) => BigInt(`0x${x}`));
    return {
      lo,
      hi,
      inode: header[4],
      path: header.slice(5).join(' '),
      rss: kb(block, 'Rss'),
      anonymous: kb(block, 'Anonymous'),
      swap: kb(block, 'Swap'),
    };
  });
}

/** Bytes allocated to the memory file with this inode (open descriptors first, then mapped files). */
function memfdBytes(inode: string, range: string): number {
  const candidates = fs.readdirSync('/proc/self/fd').map((fd) => `/proc/self/fd/${fd}`);
  candidates.push(`/proc/self/map_files/${range}`);
  for (const p of candidates) {
    try {
      if (!fs.readlinkSync(p).startsWith('/memfd:')) continue;
      const st = fs.statSync(p);
      if (String(st.ino) === inode) return st.blocks * 512;
    } catch {
      // Closed meanwhile, or map_files not readable here.
    }
  }
  return NaN;
}

function sample(segs: Segment[]): Sample {
  if (!measured) return { held: NaN, resident: NaN };
  let held = 0;
  let resident = 0;
  const files = new Map<string, string>();
  for (const v of vmas()) {
    if (!segs.some((s) => v.hi > s.address && v.lo < s.address + BigInt(s.byteLength))) continue;
    held += v.anonymous + v.swap;
    resident += v.rss;
    if (v.path.startsWith('/memfd:') && v.inode !== '0') files.set(v.inode, `${v.lo.toString(16)}-${v.hi.toString(16)}`);
  }
  for (const [inode, range] of files) held += memfdBytes(inode, range);
  return { held, resident };
}

function processSample(): ProcessSample {
  const status = linux ? fs.readFileSync('/proc/self/status', 'utf8') : '';
  return {
    vmRss: linux ? kb(status, 'VmRSS') : process.memoryUsage().rss,
    rssAnon: kb(status, 'RssAnon'),
    rssShmem: kb(status, 'RssShmem'),
    vmPte: kb(status, 'VmPTE'),
  };
}

// ---- printing ----------------------------------------------------------------

const tty = process.stdout.isTTY === true && process.env.NO_COLOR === undefined;
const paint = (code: number) => (s: string) => (tty ? `\x1b[${code}m${s}\x1b[0m` : s);
const bold = paint(1);
const dim = paint(2);
const green = paint(32);
const red = paint(31);

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

const signed = (n: number) => (n >= 0 ? `+${bytes(n)}` : bytes(n));
const plural = (n: number, word: string) => `${n} ${word}${n === 1 ? '' : 's'}`;
const pageCount = (n: number) => (Number.isFinite(n) ? plural(n / PAGE, 'page') : 'n/a');
const hex = (addr: bigint) => `0x${addr.toString(16).padStart(12, '0')}`;
const char = (code: number) => `'${String.fromCharCode(code)}'`;

function reads(name: string, seg: Segment): void {
  console.log(`   ${name.padEnd(7)}${hex(seg.address)}  reads ${char(new Uint8Array(seg.buffer)[0])}`);
}

function memory(now: Sample, before: Sample, why: string): void {
  if (!measured) return;
  const change = (now.held - before.held) / PAGE;
  console.log(`   memory: ${pageCount(now.held)} (${change >= 0 ? '+' : ''}${change})${why === '' ? '' : `: ${why}`}`);
}

// ---- the example -------------------------------------------------------------

const start = processSample();
const samples: Sample[] = [];

console.log(bold(`memfork copy-on-write demo: ${pages === 1 ? "one page, as in Mach's vm_remap example" : `${plural(pages, 'page')} (${bytes(size)})`}`));
console.log(dim(`backend ${backend.name}, page ${bytes(PAGE)}, ${runtimeName()}`));
console.log();

const origin = Segment.create(size);
samples.push(sample([origin]));
new Uint8Array(origin.buffer).fill(A);
samples.push(sample([origin]));
console.log(`1. origin = Segment.create(${size}); ${pages === 1 ? 'its page' : `each of its ${pages} pages`} written ${char(A)}`);
reads('origin', origin);
memory(samples[1], samples[0], pages === 1 ? 'the page written' : 'the pages written');
console.log();

const clone = origin.clone();
console.log('2. clone = origin.clone()');
reads('origin', origin);
reads('clone', clone);
samples.push(sample([origin, clone]));
memory(samples[2], samples[1], `origin and clone share ${pages === 1 ? 'it' : 'them'}`);
console.log();

new Uint8Array(clone.buffer)[0] = B;
console.log(`3. clone's first byte written ${char(B)}`);
reads('origin', origin);
reads('clone', clone);
samples.push(sample([origin, clone]));
memory(samples[3], samples[2], 'the kernel copied the page the clone wrote, for the clone alone');
console.log();

// Every byte of both, after the figures (reading maps pages in, it allocates none).
const o = new Uint8Array(origin.buffer);
const c = new Uint8Array(clone.buffer);
let ok = c[0] === B;
for (let i = 0; i < size && ok; i++) ok = o[i] === A && (i === 0 || c[i] === A);

if (ok) {
  console.log(
    green(bold(`✔ clone reads ${char(c[0])}, origin still reads ${char(o[0])}`)) +
      (measured ? dim(`  (the clone cost ${pageCount(samples[2].held - samples[1].held)}, the write ${pageCount(samples[3].held - samples[2].held)})`) : ''),
  );
} else {
  console.log(red(bold(`✘ clone reads ${char(c[0])}, origin reads ${char(o[0])}: copy-on-write is broken`)));
}
console.log();

// ---- other figures -------------------------------------------------------------

const end = processSample();
console.log(bold('Other figures (not part of the example above)'));
if (!measured) {
  console.log(
    `  per-page figures: not shown with the ${backend.name} backend${backend.name === 'copy' ? ', which copies every page eagerly' : ''}` +
      (linux ? '' : ' (they need Linux /proc)'),
  );
}
if (linux) {
  if (measured) {
    console.log(`  memory per step (pages): ${samples.slice(1).map((s) => s.held / PAGE).join(', ')}`);
    console.log(dim("    anonymous pages in the segments' mappings (/proc/self/smaps) + pages of the memory files they map (fstat)"));
    console.log(`  resident in the segments' mappings (Rss) per step (pages): ${samples.slice(1).map((s) => s.resident / PAGE).join(', ')}`);
    console.log(dim('    a page both segments map counts once per mapping, as VmRSS and task_info count it: after the clone'));
    console.log(dim("    the origin's page is in both mappings, and after the write the clone maps its copy instead"));
  }
  console.log(
    `  whole process, start to end: VmRSS ${signed(end.vmRss - start.vmRss)}, RssAnon ${signed(end.rssAnon - start.rssAnon)}, ` +
      `RssShmem ${signed(end.rssShmem - start.rssShmem)}, page tables (VmPTE) ${signed(end.vmPte - start.vmPte)}`,
  );
  console.log(dim("    these include the runtime's own memory (JavaScript heap, compiled code, reading /proc, printing), which"));
  console.log(dim('    moves by pages and megabytes between any two samples; page tables are the kernel\'s own memory'));
} else {
  console.log(`  whole process, start to end: RSS ${signed(end.vmRss - start.vmRss)} (process.memoryUsage(), including the runtime's own memory)`);
}
const stats = memoryStats();
console.log(
  `  memoryStats(): ${plural(stats.segments, 'segment')}, ${plural(stats.layers, 'layer')} holding ${bytes(stats.layerBytes)}, ` +
    `${bytes(stats.privateBytes)} private, ${plural(stats.mappings, 'mapping')}`,
);
for (const [name, seg] of [
  ['origin', origin],
  ['clone', clone],
] as const) {
  const s = seg.stats();
  console.log(`  ${name}.stats(): ${bytes(s.privateBytes)} private, ${bytes(s.sharedBytes)} shared, ${plural(s.mappings, 'mapping')}`);
}

origin.close();
clone.close();
process.exit(ok ? 0 : 1);

function runtimeName(): string {
  const g = globalThis as { Bun?: { version: string }; Deno?: { version: { deno: string } } };
  if (g.Bun !== undefined) return `Bun ${g.Bun.version}`;
  if (g.Deno !== undefined) return `Deno ${g.Deno.version.deno}`;
  return `Node.js ${process.version}`;
}
