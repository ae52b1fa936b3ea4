// Run lists as arrays of objects, the plain forms the typed lists of
// src/runs.ts are property-tested against (RunList, overlayList, selectIn,
// differingList): each is written the obvious way, and tested itself
// against a model of a layer per page.
import { coalesce, differingList, RunList, subtract, type Range, type Run } from '../../src/runs.ts';

/** Joins touching runs of the same layer. */
export function merge<L>(runs: readonly Run<L>[]): Run<L>[] {
  const out: Run<L>[] = [];
  for (const r of runs) {
    const last = out[out.length - 1];
    if (last !== undefined && last.layer === r.layer && last.end === r.start) {
      out[out.length - 1] = { start: last.start, end: r.end, layer: r.layer };
    } else {
      out.push(r);
    }
  }
  return out;
}

/** The parts of `runs` under the sorted, disjoint `ranges`. */
export function select<L>(runs: readonly Run<L>[], ranges: readonly Range[]): Run<L>[] {
  const out: Run<L>[] = [];
  let i = 0;
  for (const g of ranges) {
    while (i < runs.length && runs[i]!.end <= g.start) i++;
    for (let j = i; j < runs.length && runs[j]!.start < g.end; j++) {
      const r = runs[j]!;
      out.push({ start: Math.max(r.start, g.start), end: Math.min(r.end, g.end), layer: r.layer });
    }
  }
  return out;
}

/**
 * `base` with every range of `top` (sorted, disjoint) replaced by `layer`.
 * The result covers exactly what `base` covers plus `top`, merged.
 */
export function overlay<L>(base: readonly Run<L>[], top: readonly Range[], layer: L): Run<L>[] {
  const kept = select(base, subtract(coalesce(base), top));
  const added = top.map((r) => ({ start: r.start, end: r.end, layer }));
  return merge([...kept, ...added].sort((a, b) => a.start - b.start));
}

/** differingList() for arrays of runs, as objects. */
export function differing<L>(a: readonly Run<L>[], b: readonly Run<L>[]): Range[] {
  return differingList(RunList.from(a), RunList.from(b)).toArray();
}
