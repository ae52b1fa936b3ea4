// A simulation that checkpoints its whole state and rolls back.
//
// The state is a Game of Life world kept in a memfork segment. Every few
// generations the world is checkpointed with clone(): no bytes are copied,
// and only the pages the simulation writes afterwards cost memory. Then:
//   1. rollback: jump back to an earlier checkpoint with restore() and check
//      that replaying from it gives exactly the same world again;
//   2. what-if: from one checkpoint, try several perturbations, run each ahead,
//      and roll back between them.
//
//   node -r ts-node/register examples/checkpoint-simulation.ts [--side 1024] [--generations 120] [--every 30]
//
// Exits 0 when every check passes, 1 otherwise.
import { createHash } from 'node:crypto';
import { Segment, backend, memoryStats } from '../src/index.ts';

function option(name: string, fallback: number): number {
  const i = process.argv.indexOf(`--${name}`);
  const v = i >= 0 ? Number(process.argv[i + 1]) : fallback;
  if (!Number.isSafeInteger(v) || v <= 0) throw new RangeError(`Invalid --${name}: ${process.argv[i + 1]}`);
  return v;
}

const SIDE = option('side', 1024); // the world is SIDE × SIDE cells, one byte each
const GENERATIONS = option('generations', 120);
const EVERY = option('every', 30); // checkpoint interval

let failures = 0;
function check(ok: boolean, what: string): void {
  console.log(`  ${ok ? '✔' : '✘'} ${what}`);
  if (!ok) failures++;
}

// A small deterministic random generator (mulberry32), so runs are repeatable.
function random(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const world = Segment.create(SIDE * SIDE);
const cells = new Uint8Array(world.buffer); // stays valid across restore()
const next = new Uint8Array(SIDE * SIDE); // scratch, plain memory

/** Seeds a random soup in the middle; the rest of the world starts empty. */
function seed(rand: () => number): void {
  const from = (SIDE * 3) >> 3;
  const to = SIDE - from;
  for (let y = from; y < to; y++) for (let x = from; x < to; x++) cells[y * SIDE + x] = rand() < 0.3 ? 1 : 0;
}

/**
 * One generation; the border cells stay dead. Only cells that change are
 * written back, so pages where nothing happens stay shared with the last
 * checkpoint.
 */
function step(): void {
  for (let y = 1; y < SIDE - 1; y++) {
    const row = y * SIDE;
    for (let x = 1; x < SIDE - 1; x++) {
      const i = row + x;
      const n =
        cells[i - SIDE - 1] + cells[i - SIDE] + cells[i - SIDE + 1] + cells[i - 1] + cells[i + 1] +
        cells[i + SIDE - 1] + cells[i + SIDE] + cells[i + SIDE + 1];
      next[i] = n === 3 || (n === 2 && cells[i] === 1) ? 1 : 0;
    }
  }
  for (let i = 0; i < next.length; i++) if (cells[i] !== next[i]) cells[i] = next[i];
}

const digest = (bytes: Uint8Array) => createHash('sha256').update(bytes).digest('hex').slice(0, 16);
const population = () => cells.reduce((a, b) => a + b, 0);
const kib = (n: number) => `${(n / 1024).toFixed(0)} KiB`;

console.log(`Game of Life, ${SIDE}×${SIDE} cells (${kib(SIDE * SIDE)}), ${GENERATIONS} generations, checkpoint every ${EVERY}`);
console.log(`backend ${backend.name}`);
console.log();

// ---- run, checkpointing -------------------------------------------------------
seed(random(42));
const checkpoints = new Map<number, Segment>();
const hashes: string[] = []; // world digest after each generation (index = generation)
hashes.push(digest(cells));
for (let gen = 1; gen <= GENERATIONS; gen++) {
  step();
  hashes.push(digest(cells));
  if (gen % EVERY === 0) {
    // Pages written since the last checkpoint (before the first one: all of them).
    const written = world.stats().privateBytes;
    const t = performance.now();
    checkpoints.set(gen, world.clone());
    const ms = performance.now() - t;
    console.log(
      `  generation ${String(gen).padStart(4)}: population ${String(population()).padStart(7)}, ` +
        `${kib(written).padStart(8)} new since the last checkpoint, clone() took ${ms.toFixed(2)} ms`,
    );
  }
}
console.log();

// ---- 1. rollback and replay ----------------------------------------------------
const marks = [...checkpoints.keys()];
const back = marks.length >= 2 ? marks[marks.length - 2] : marks[0];
console.log(`Rollback: restore the checkpoint of generation ${back}, replay to ${GENERATIONS}`);
world.restore(checkpoints.get(back)!);
check(digest(cells) === hashes[back], `after restore() the world is exactly generation ${back} again`);
for (let gen = back + 1; gen <= GENERATIONS; gen++) step();
check(digest(cells) === hashes[GENERATIONS], `replaying gives exactly the same generation ${GENERATIONS}`);
console.log();

// ---- 2. what-if: branches from one checkpoint ----------------------------------
const base = marks[0];
const ahead = Math.min(EVERY, 50);
console.log(`What-if: from generation ${base}, drop a random 16×16 block in, run ${ahead} generations; 5 tries`);
const rand = random(7);
let best = { trial: -1, population: -1 };
for (let trial = 0; trial < 5; trial++) {
  world.restore(checkpoints.get(base)!); // roll back before each try
  if (digest(cells) !== hashes[base]) check(false, `try ${trial}: restore gave generation ${base}`);
  const ox = Math.floor(rand() * (SIDE - 16));
  const oy = Math.floor(rand() * (SIDE - 16));
  for (let y = 0; y < 16; y++) for (let x = 0; x < 16; x++) cells[(oy + y) * SIDE + ox + x] = rand() < 0.5 ? 1 : 0;
  for (let g = 0; g < ahead; g++) step();
  const pop = population();
  console.log(`  try ${trial}: block at (${ox}, ${oy}) → population ${pop}, ${kib(world.stats().privateBytes)} diverged`);
  if (pop > best.population) best = { trial, population: pop };
}
console.log(`  best: try ${best.trial} (population ${best.population})`);
world.restore(checkpoints.get(base)!);
check(digest(cells) === hashes[base], `after all tries, one restore() brings back generation ${base}`);
for (const [gen, cp] of checkpoints) {
  if (digest(new Uint8Array(cp.buffer)) !== hashes[gen]) check(false, `checkpoint ${gen} is intact`);
}
check(true, 'every checkpoint still holds its own generation');
console.log();

const m = memoryStats();
console.log(
  `memoryStats(): ${m.segments} segments (world + ${checkpoints.size} checkpoints) in layers holding ${kib(m.layerBytes)} ` +
    `(${kib(m.privateBytes)} private to one segment); ${checkpoints.size + 1} full copies would be ${kib((checkpoints.size + 1) * SIDE * SIDE)}`,
);
for (const cp of checkpoints.values()) cp.close();
world.close();
console.log(failures === 0 ? 'OK: checkpoints and rollbacks are exact' : `FAILED: ${failures} check(s)`);
process.exit(failures === 0 ? 0 : 1);
