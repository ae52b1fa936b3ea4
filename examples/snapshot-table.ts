// An in-memory table that keeps taking writes while a snapshot of it is saved.
//
// This is what Redis does with fork() for BGSAVE, in one process: clone() the
// table (no bytes copied), hand the clone's memory to the file system in
// chunks through view(), and keep updating the live table meanwhile. Only the
// pages the writer touches during the save get copied, by the kernel.
//
//   node -r ts-node/register examples/snapshot-table.ts [--rows 1048576] [--chunk 1M]
//
// Rows are 64 bytes: u32 id, u32 version, 56 bytes of payload. The table also
// keeps the sum of all versions; the file must hold exactly the sum at the
// moment of the snapshot, while the live table has moved on.
// Exits 0 when the saved file equals the snapshot, 1 otherwise.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Segment, backend } from '../src/index.ts';

function option(name: string, fallback: number): number {
  const i = process.argv.indexOf(`--${name}`);
  if (i < 0) return fallback;
  const m = /^(\d+)([kKmMgG]?)$/.exec(process.argv[i + 1] ?? '');
  if (m === null) throw new RangeError(`Invalid --${name}: ${process.argv[i + 1]}`);
  return Number(m[1]) * { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 }[m[2].toLowerCase() as '' | 'k' | 'm' | 'g'];
}

const ROW = 64;
const ROWS = option('rows', 1 << 20);
const CHUNK = option('chunk', 1 << 20);
const PER_TICK = 200; // updates the writer makes each turn of the event loop
const SIZE = ROWS * ROW;
const mib = (n: number) => `${(n / 2 ** 20).toFixed(1)} MiB`;

// ---- the table ------------------------------------------------------------------
const table = Segment.create(SIZE);
const rows = new DataView(table.buffer); // the live table; stays valid for its whole life
let versionSum = 0;

function put(row: number, version: number): void {
  const at = row * ROW;
  rows.setUint32(at, row, true);
  rows.setUint32(at + 4, version, true);
  for (let i = 8; i < ROW; i += 4) rows.setUint32(at + i, Math.imul(version, 2654435761) ^ i, true);
}
function update(row: number): void {
  const version = rows.getUint32(row * ROW + 4, true) + 1;
  put(row, version);
  versionSum += 1;
}
/** Sum of the versions of all rows in `bytes`, checking every row's id. */
function sumVersions(bytes: DataView, firstRow: number): number {
  let sum = 0;
  for (let at = 0; at < bytes.byteLength; at += ROW) {
    if (bytes.getUint32(at, true) !== firstRow + at / ROW) throw new Error(`row ${firstRow + at / ROW} has a wrong id`);
    sum += bytes.getUint32(at + 4, true);
  }
  return sum;
}

for (let r = 0; r < ROWS; r++) put(r, 1);
versionSum = ROWS;

// ---- the writer: keeps updating rows on every turn of the event loop ----------
// Like most real workloads it is skewed: 95% of updates go to the hottest 1% of
// rows, the rest anywhere in the table.
let updates = 0;
let longestPause = 0;
let running = true;
let seed = 12345;
const hot = Math.max(1, Math.floor(ROWS / 100));
const randomRow = () => {
  seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
  const r = seed >>> 8;
  return r % 100 < 95 ? r % hot : r % ROWS;
};
function writer(last: number): void {
  if (!running) return;
  const now = performance.now();
  longestPause = Math.max(longestPause, now - last);
  for (let i = 0; i < PER_TICK; i++) update(randomRow());
  updates += PER_TICK;
  setImmediate(writer, performance.now());
}

async function main(): Promise<number> {
  console.log(`table: ${ROWS} rows × ${ROW} bytes = ${mib(SIZE)}, backend ${backend.name}`);
  setImmediate(writer, performance.now());
  await new Promise((r) => setTimeout(r, 50)); // let the writer get going

  // ---- snapshot: one clone(), then save it while the writer runs ----------------
  let t = performance.now();
  const snapshot = table.clone();
  const sumAtSnapshot = versionSum;
  const cloneMs = performance.now() - t;
  const updatesBefore = updates;
  longestPause = 0;

  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'memfork-table-'));
  const file = path.join(dir, 'table.snapshot');
  t = performance.now();
  const out = await fs.promises.open(file, 'w');
  for (let off = 0; off < SIZE; off += CHUNK) {
    const n = Math.min(CHUNK, SIZE - off);
    // The file system reads the snapshot's memory from its own thread while
    // this thread keeps writing into the table: they are different segments.
    await out.write(new Uint8Array(snapshot.view(off, n)), 0, n, off);
  }
  await out.close();
  const saveMs = performance.now() - t;
  running = false;
  const during = updates - updatesBefore;
  const copied = table.stats().privateBytes; // pages the writer made private during the save

  console.log(`snapshot: clone() took ${cloneMs.toFixed(2)} ms for ${mib(SIZE)}`);
  console.log(
    `saved:    ${mib(SIZE)} in ${saveMs.toFixed(0)} ms (${chunks(SIZE)} writes of ${mib(CHUNK)}), ` +
      `while the table took ${during} updates; longest pause between writer turns ${longestPause.toFixed(1)} ms`,
  );
  console.log(`memory:   those updates made the kernel copy ${mib(copied)} of pages, not the ${mib(SIZE)} table`);

  // ---- checks ------------------------------------------------------------------
  let failures = 0;
  const check = (ok: boolean, what: string) => {
    console.log(`  ${ok ? '✔' : '✘'} ${what}`);
    if (!ok) failures++;
  };
  const saved = fs.readFileSync(file);
  check(saved.length === SIZE, `the file holds ${SIZE} bytes`);
  let same = saved.length === SIZE;
  for (let off = 0; same && off < SIZE; off += CHUNK) {
    const n = Math.min(CHUNK, SIZE - off);
    same = Buffer.compare(saved.subarray(off, off + n), new Uint8Array(snapshot.view(off, n))) === 0;
  }
  check(same, 'the file equals the snapshot byte for byte');
  check(
    sumVersions(new DataView(saved.buffer, saved.byteOffset, saved.byteLength), 0) === sumAtSnapshot,
    `the file is the table as it was at the snapshot (sum of versions ${sumAtSnapshot})`,
  );
  const liveSum = sumVersions(rows, 0);
  check(during > 0 && liveSum === versionSum && liveSum !== sumAtSnapshot, `the live table moved on meanwhile (sum ${liveSum})`);

  // For comparison: a synchronous copy (what one does without copy-on-write)
  // stops the writer for as long as it takes.
  t = performance.now();
  const copy = new Uint8Array(table.buffer).slice();
  const sliceMs = performance.now() - t;
  console.log(`(a plain copy with slice() would have stopped the writer for ${sliceMs.toFixed(0)} ms, and used ${mib(copy.byteLength)})`);

  snapshot.close();
  table.close();
  fs.rmSync(dir, { recursive: true, force: true });
  console.log(failures === 0 ? 'OK: the snapshot was saved consistently while the table kept changing' : `FAILED: ${failures} check(s)`);
  return failures === 0 ? 0 : 1;
}

function chunks(n: number): number {
  return Math.ceil(n / CHUNK);
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    console.error(err);
    process.exit(1);
  },
);
