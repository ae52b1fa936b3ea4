// Compaction: rewriting a segment's fragmented runs into one new layer so it
// needs fewer mappings, as the cost model (cost.ts) plans it. A mapped
// segment is frozen over the planned windows (each remap maps the same
// bytes); an unmapped one, a run list only, is rewritten file to file.
import { pageCount, RunList } from '../../src/runs.ts';
import { duplicateLimit, plan } from './cost.ts';
import { scanWritten, setRuns, type Engine, type LinuxSegment } from './engine.ts';
import { freeze } from './freeze.ts';
import { rangesByLayer, type Layer, type MakeLayer, type Runs } from './layers.ts';
import { mapRuns, unreserve } from './mapper.ts';
import { copyPages } from './writer.ts';

/**
 * Rewrites the fragmented parts of `seg` into a new layer, as `plan` (cost.ts)
 * chooses them for `windows` windows duplicating at most `limit` shared
 * pages, so it has fewer runs. Atomic in content, like a freeze: each remap
 * maps the same bytes. Returns the shared pages it duplicated. A new layer
 * comes from `newLayer` (default: the store's, which may reclaim).
 */
export function compact(
  e: Engine,
  seg: LinuxSegment,
  windows: number,
  limit = duplicateLimit(seg.pages),
  newLayer: MakeLayer = (length) => e.layers.newLayer(length),
): number {
  const p = plan(seg.runs, seg.pages, windows, limit);
  if (p === undefined) return 0;
  if (!seg.mapped) {
    compactUnmapped(e, seg, newLayer);
    return p.duplicated;
  }
  freeze(e, seg, p.windows, scanWritten(e, seg), newLayer);
  seg.debt = 0;
  return p.duplicated;
}

/**
 * Rewrites an unmapped segment into one new layer, file to file: its layer
 * runs copied with copy_file_range(2), its anonymous runs left as holes
 * (both read as zero). Where the kernel will not copy between memory
 * files, it is flattened through a temporary mapping instead.
 */
export function compactUnmapped(e: Engine, seg: LinuxSegment, newLayer: MakeLayer = (length) => e.layers.newLayer(length)): void {
  if (seg.runs.length <= 1) return;
  const layer = newLayer(seg.length);
  try {
    if (!(e.features.fileCopy && copyRunsFileToFile(e, seg.runs, layer))) {
      // Through memory: the run list mapped for the copy, then unmapped.
      const scratch = mapRuns(e.pageSize, null, seg.runs, seg.length);
      try {
        const data = seg.runs.toArray().filter((r) => r.layer !== null);
        e.writer.write(layer, scratch, data);
      } finally {
        unreserve(scratch, seg.length);
      }
    }
  } catch (err) {
    e.layers.close(layer);
    throw err;
  }
  setRuns(e, seg, RunList.of(0, seg.pages, layer));
  seg.debt = 0;
}

/** Fewest pages of a run for which a file-to-file copy looks for holes to skip (SEEK_DATA / SEEK_HOLE). */
export const DATA_SCAN_MIN = 256;

/**
 * Copies each layer run of `runs` into `layer` at the same offsets, file to
 * file; of runs of DATA_SCAN_MIN pages or more, only the data, not the holes
 * (looking for a hole walks the file from there to the next hole, however
 * far past the run that is: per short run, that walk would cost more than
 * the copy). False, partway, where the kernel will not copy between memory files.
 */
function copyRunsFileToFile(e: Engine, runs: Runs, layer: Layer): boolean {
  for (let i = 0; i < runs.length; i++) {
    const from = runs.layers[i]!;
    if (from === null) continue;
    const r = { start: runs.starts[i]!, end: runs.ends[i]! };
    // A packed layer holds only pages in use: no holes to look for.
    const data = r.end - r.start < DATA_SCAN_MIN || from.packing !== null ? [r] : e.layers.dataRanges(from.fd, r.start, r.end);
    for (const d of data) {
      if (!copyPages(e.features, e.pageSize, from, d, layer.fd, d.start)) return false;
    }
  }
  return true;
}

/**
 * The layer store's way to reclaim descriptors: flattens segments that are
 * the only users of two layers or more (flattening makes one layer, so
 * anything less closes none: kept snapshots of one segment share most of
 * their layers), those freeing the most first, until some layers close,
 * making layers with `make` (which never reclaims). Where no segment
 * qualifies, nothing is done: the budget is then passed, and only the
 * process's real limit (EMFILE) refuses.
 */
export function reclaimDescriptors(e: Engine, make: MakeLayer): void {
  const before = e.layers.size;
  const freed = new Map<LinuxSegment, number>();
  for (const s of e.segments) {
    const n = soleLayers(s);
    if (n >= 2) freed.set(s, n);
  }
  const candidates = [...freed.keys()].sort((a, b) => freed.get(b)! - freed.get(a)!);
  for (const seg of candidates) {
    // An earlier flattening may have left this one sharing its layers.
    if (soleLayers(seg) < 2) continue;
    try {
      compact(e, seg, 0, duplicateLimit(seg.pages), make);
    } catch {
      break;
    }
    if (e.layers.size < before - 1) break;
  }
}

/** Layers only `seg`'s run list uses: they close if it stops using them. */
function soleLayers(seg: LinuxSegment): number {
  let n = 0;
  for (const [layer, ranges] of rangesByLayer(seg.runs)) {
    // A virtual layer holds no descriptor.
    if (!layer.hasFile) continue;
    const used = pageCount(ranges);
    if (layer.refs.pages !== used) continue;
    let alone = 0;
    for (const k of layer.refs.countEqualEach(ranges, 1)) alone += k;
    if (alone === used) n++;
  }
  return n;
}
