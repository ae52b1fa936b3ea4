// A segment larger than one ArrayBuffer can be, worked through view() windows.
//
// Node.js before 22 (and Bun) cannot make an ArrayBuffer over 4 GiB, so
// `buffer` throws a RangeError there and the segment is read and written
// through view(byteOffset, byteLength) windows instead. Memory is only used
// for the pages actually touched: this 6 GiB segment and its clone cost a few
// hundred KiB.
//
//   node -r ts-node/register examples/large-segment.ts [--size 6G] [--window 1G]
//
// Exits 0 when every check passes, 1 otherwise.
import { Segment, backend, memoryStats } from '../src/index.ts';

function option(name: string, fallback: string): number {
  const i = process.argv.indexOf(`--${name}`);
  const text = i >= 0 ? process.argv[i + 1] : fallback;
  const m = /^(\d+)([kKmMgG]?)$/.exec(text ?? '');
  if (m === null) throw new RangeError(`Invalid --${name}: ${text}`);
  return Number(m[1]) * { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 }[m[2].toLowerCase() as '' | 'k' | 'm' | 'g'];
}

const SIZE = option('size', '6G');
const WINDOW = Math.min(option('window', '1G'), backend.maxViewLength);
const GiB = 2 ** 30;
const fmt = (n: number) =>
  n >= GiB ? `${(n / GiB).toFixed(2)} GiB` : n >= 2 ** 20 ? `${(n / 2 ** 20).toFixed(2)} MiB` : `${(n / 1024).toFixed(0)} KiB`;

let failures = 0;
function check(ok: boolean, what: string): void {
  console.log(`  ${ok ? '✔' : '✘'} ${what}`);
  if (!ok) failures++;
}

const windows = Math.ceil(SIZE / WINDOW);
const MARK = 100; // where each window's marker byte is
/** The window `w` as bytes: [w × WINDOW, min((w + 1) × WINDOW, SIZE)). */
function window(seg: Segment, w: number): Uint8Array {
  const start = w * WINDOW;
  return new Uint8Array(seg.view(start, Math.min(WINDOW, SIZE - start)));
}

console.log(`segment of ${fmt(SIZE)}, ${windows} windows of ${fmt(WINDOW)}; backend ${backend.name}, node ${process.version}`);
console.log(`one ArrayBuffer may hold at most ${backend.maxViewLength === Number.MAX_SAFE_INTEGER ? '2^53 - 1' : fmt(backend.maxViewLength)} here`);
const origin = Segment.create(SIZE);

// 1. The whole-segment buffer, where the runtime cannot make one that large.
if (SIZE > backend.maxViewLength) {
  let error: unknown;
  try {
    void origin.buffer;
  } catch (err) {
    error = err;
  }
  check(
    error instanceof RangeError && error.message.includes('view('),
    `buffer throws RangeError pointing to view(): "${error instanceof Error ? error.message : String(error)}"`,
  );
} else {
  check(origin.buffer.byteLength === SIZE, `buffer covers all ${fmt(SIZE)} on this runtime`);
}

// 2. Write a marker into every window of the origin, plus the last byte.
for (let w = 0; w < windows; w++) window(origin, w)[MARK] = 0x10 + w;
new Uint8Array(origin.view(SIZE - 1, 1))[0] = 0xaa;
// A window may start anywhere, e.g. across the 4 GiB line.
if (SIZE > 2 ** 32 + 4096) {
  const across = new Uint8Array(origin.view(2 ** 32 - 2, 4));
  across.set([1, 2, 3, 4]);
  const back = new Uint8Array(origin.view(2 ** 32, 2));
  check(back[0] === 3 && back[1] === 4, 'a window across the 4 GiB line writes where a window after it reads');
}

// 3. Clone, then write a byte into every window of the clone.
let t = performance.now();
const clone = origin.clone();
console.log(`clone() of ${fmt(SIZE)} took ${(performance.now() - t).toFixed(2)} ms`);
for (let w = 0; w < windows; w++) window(clone, w)[MARK + 1] = 0xc0 + w;
new Uint8Array(clone.view(SIZE - 1, 1))[0] = 0xbb;

// 4. The clone sees the origin's markers and its own writes; the origin sees none of them.
let cloneOk = true;
let originOk = true;
for (let w = 0; w < windows; w++) {
  const c = window(clone, w);
  const o = window(origin, w);
  if (c[MARK] !== 0x10 + w || c[MARK + 1] !== 0xc0 + w) cloneOk = false;
  if (o[MARK] !== 0x10 + w || o[MARK + 1] !== 0) originOk = false;
}
check(cloneOk, `the clone reads the origin's marker and its own byte in all ${windows} windows`);
check(originOk, `the origin still reads its own marker and 0 in all ${windows} windows`);
check(
  new Uint8Array(origin.view(SIZE - 1, 1))[0] === 0xaa && new Uint8Array(clone.view(SIZE - 1, 1))[0] === 0xbb,
  `the last byte (at ${fmt(SIZE)} - 1) is 0xaa in the origin and 0xbb in the clone`,
);

// 5. Restore the origin's state into the clone, through the same windows.
t = performance.now();
clone.restore(origin);
console.log(`restore() took ${(performance.now() - t).toFixed(2)} ms`);
let restored = new Uint8Array(clone.view(SIZE - 1, 1))[0] === 0xaa;
for (let w = 0; w < windows; w++) if (window(clone, w)[MARK + 1] !== 0) restored = false;
check(restored, 'after clone.restore(origin) the clone reads as the origin again');

const m = memoryStats();
const cs = clone.stats();
console.log(
  `memory: ${m.segments} segments of ${fmt(SIZE)}: layers hold ${fmt(m.layerBytes)}, private to segments ${fmt(m.privateBytes)}; ` +
    `${m.mappings} mappings (clone: ${cs.mappings})`,
);
// The two figures may overlap; their sum is an upper bound.
check(m.layerBytes + m.privateBytes < 256 * 2 ** 20, 'only the pages touched use memory');
origin.close();
clone.close();
console.log(failures === 0 ? 'OK' : `FAILED: ${failures} check(s)`);
process.exit(failures === 0 ? 0 : 1);
