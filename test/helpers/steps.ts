// One step of a random mix of segment operations, shared by tests that run
// many of them: a few writes into one segment, a clone, a restore or a close,
// each applied to plain Uint8Array models too.
import type { Segment } from '../../src/index.ts';

export type Step = 'write' | 'clone' | 'restore' | 'close' | 'none';

/**
 * Applies one random step to `segs` and their `models` (parallel arrays of
 * segments `length` bytes long), choosing with `pick(n)` (an integer below
 * n): writes half the time, a clone (at most 8 segments), a restore, or a
 * close (never the last segment). Returns what it did.
 */
export function randomStep(segs: Segment[], models: Uint8Array[], length: number, pick: (n: number) => number): Step {
  const op = pick(10);
  const i = pick(segs.length);
  if (op < 5) {
    const u = new Uint8Array(segs[i]!.buffer);
    for (let w = 1 + pick(4); w > 0; w--) {
      const at = pick(length);
      const v = pick(256);
      u[at] = v;
      models[i]![at] = v;
    }
    return 'write';
  }
  if (op < 7 && segs.length < 8) {
    segs.push(segs[i]!.clone());
    models.push(models[i]!.slice());
    return 'clone';
  }
  if (op < 9) {
    const j = pick(segs.length);
    segs[i]!.restore(segs[j]!);
    models[i]!.set(models[j]!);
    return 'restore';
  }
  if (segs.length > 1) {
    segs.splice(i, 1)[0]!.close();
    models.splice(i, 1);
    return 'close';
  }
  return 'none';
}
