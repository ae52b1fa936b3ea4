// Mapping a segment that is a run list only: a clone is data (its run list
// and a PROT_NONE reservation of its address range) until its memory is
// first asked for (`view`, `buffer`, `address`). Then its runs are mapped,
// one mapping each, or, where they would not fit the mapping budget, its
// largest layer is mapped whole and the pages other layers hold are read in.
import { systemError } from '../../src/errors.ts';
import { pageCount, RunList } from '../../src/runs.ts';
import * as sys from '../libc.ts';
import { chargeMapping } from './cost.ts';
import { setRuns, type Engine, type LinuxSegment } from './engine.ts';
import { rangesByLayer, type Runs } from './layers.ts';
import { baseLayer, mapRuns, reserve } from './mapper.ts';
import { readRuns } from './writer.ts';

/**
 * Maps an unmapped segment's run list over its reservation. Where its runs
 * would not fit the mapping budget (or pass `e.maxRuns`), maps its largest
 * layer alone and reads the rest in (byCopy). Nothing changes on failure.
 */
export function materialize(e: Engine, seg: LinuxSegment): void {
  if (seg.mapped) return;
  const extra = seg.runs.length - 1;
  if (seg.runs.length > e.maxRuns || !e.budget.fits(extra)) {
    byCopy(e, seg);
    return;
  }
  e.ensureRoom(extra, seg.pages);
  let touched = false;
  try {
    // Safety: MAP_FIXED over the segment's own reservation, which no view aliases yet.
    mapRuns(e.pageSize, seg.addr, seg.runs, seg.length, () => (touched = true));
  } catch (err) {
    if (touched) reserve(seg.addr, seg.length);
    throw err;
  }
  seg.mapped = true;
  seg.maps = seg.runs;
  e.budget.segments += extra;
  for (const [layer, ranges] of rangesByLayer(seg.runs)) layer.mapped.addAll(ranges, 1);
  seg.debt = chargeMapping(seg);
}

/**
 * Maps a run list too fragmented for the mapping budget as one mapping of
 * its largest layer, with the pages other runs hold read into it: those
 * become the segment's private pages, as if written since, and its run list
 * becomes that layer alone, which is what it then describes. A snapshot of
 * scattered writes read at last costs one mapping and a private copy of the
 * pages that differ from that layer (moved, not doubled, where nothing else
 * uses them: their layer pages are then freed), where rewriting it into a
 * new layer would copy the whole segment. On failure the reservation is
 * put back and nothing else has changed.
 */
function byCopy(e: Engine, seg: LinuxSegment): void {
  const base = baseLayer(seg.runs);
  const whole: Runs = RunList.of(0, seg.pages, base);
  const others = seg.runs.toArray().filter((r) => r.layer !== base);
  // Private copies are memory: refused (ENOMEM) rather than run the
  // machine out of it, where the kernel's OOM killer would end the process.
  const bytes = pageCount(others) * e.pageSize;
  if (bytes > e.availableMemory() / 2) {
    throw systemError('mmap', sys.ENOMEM, `mapping this segment needs ${seg.runs.length} mappings or ${bytes} bytes of copies; the machine has neither free`);
  }
  // Safety: MAP_FIXED over the segment's own reservation, which no view aliases yet.
  mapRuns(e.pageSize, seg.addr, whole, seg.length);
  try {
    readRuns(e.pageSize, seg.addr, others);
  } catch (err) {
    reserve(seg.addr, seg.length);
    throw err;
  }
  setRuns(e, seg, whole);
  seg.mapped = true;
  if (base !== null) base.mapped.add(0, seg.pages, 1);
  seg.debt = 0;
}
