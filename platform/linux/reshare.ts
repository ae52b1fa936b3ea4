// Sharing a layer again: when every clone of a segment is closed, the
// segment is once more the only user of the layer its first clone made
// private, and it can go back to what it was before that clone: one
// MAP_SHARED mapping of the layer, written straight through, with no
// copy-on-write on its next writes and nothing to copy at its next clone
// (a first clone again: its page tables moved aside, one mapping made
// private). Snapshots taken and let go one after another then cost a
// first clone each, whatever was written between them.
import * as sys from '../libc.ts';
import { RangeList, RunList } from '../../src/runs.ts';
import { mapShared } from './mapper.ts';
import { scanWrittenList, setRuns, type Engine, type LinuxSegment } from './engine.ts';
import type { Layer } from './layers.ts';

/**
 * The segment that could take `layer` back as its shared mapping: mapped,
 * private, showing nothing but `layer` (and never-written holes, which
 * read as the layer's own holes), no page pinned, and the only user of
 * every page of the layer anyone uses. Undefined where there is none.
 */
export function soleSharer(segments: Iterable<LinuxSegment>, layer: Layer): LinuxSegment | undefined {
  // One user at most of any page, found without reading any run list.
  if (layer.window === 0n || layer.refs.max !== 1) return undefined;
  for (const seg of segments) {
    if (seg.released || !seg.mapped || seg.shared !== null || seg.length !== layer.length || !seg.mayShow(layer)) continue;
    const runs = seg.runs;
    if (seg.maps !== runs) continue;
    const on = new RangeList(runs.length);
    let other = false;
    for (let i = 0; i < runs.length; i++) {
      const l = runs.layers[i];
      if (l === layer) on.push(runs.starts[i]!, runs.ends[i]!);
      else if (l !== null) other = true;
    }
    if (other || on.length === 0) continue;
    // Every page any run list uses is one of this segment's (each used once).
    return layer.refs.pages === on.pages ? seg : undefined;
  }
  return undefined;
}

/**
 * Makes `seg` (soleSharer of `layer`) a shared mapping of `layer` again:
 * its pages written since its last freeze are written into the layer
 * (nobody else uses those layer pages), then the layer's moved-aside
 * mapping, which holds the page tables of every page the segment wrote
 * before its first clone, is moved back over the segment's address
 * (where that fails, the layer is mapped there instead). Where the
 * budget has no room for the move, or the pages cannot be written, it
 * stays as it was and reads as before (the layer pages written hold what
 * it holds there, and it still has its private copies).
 */
export function reshare(e: Engine, seg: LinuxSegment, layer: Layer): void {
  // Splits both mappings until done.
  if (!e.budget.fits(2)) return;
  try {
    const written = scanWrittenList(e, seg);
    if (written.length > 0) {
      if (e.windowCopy) e.writer.toWindow(layer, seg.addr, written);
      else e.writer.write(layer, seg.addr, written.toArray());
    }
  } catch {
    return;
  }
  try {
    // In one call: measured on Linux 6.18, a 256 MiB segment with every
    // other page written moves back in 0.13 ms so, 0.66 ms in its 128
    // spans of 2 MiB, and its writes after are as fast either way.
    // Safety: MREMAP_FIXED over the segment's own mapping, whose pages all
    // read the same from the layer now; views keep their addresses.
    sys.mremap(layer.window, seg.length, seg.length, sys.MREMAP_MAYMOVE | sys.MREMAP_FIXED, seg.addr);
    layer.window = 0n;
    layer.windowFull = false;
    e.windows.count--;
  } catch {
    // The kernel unmaps the segment's range before it moves anything, so
    // a failure may leave it unmapped: mapped shared from the layer
    // instead, without the page tables, which go with the rest of the
    // moved-aside mapping. Only a failure of this mapping throws.
    // Safety: MAP_FIXED over the segment's own range, every page of which
    // reads the same from the layer.
    mapShared(seg.addr, seg.length, layer.fd);
    e.windows.drop(layer);
  }
  setRuns(e, seg, RunList.of(0, seg.pages, layer));
  seg.shared = layer;
  seg.debt = 0;
  seg.scanned = 0;
}

/** The layers with a moved-aside mapping that `seg`'s run list uses: the ones it may leave to a sole sharer (shareAgain). */
export function windowedLayers(seg: LinuxSegment): Set<Layer> {
  const out = new Set<Layer>();
  for (const layer of seg.runs.layers) if (layer !== null && layer.window !== 0n) out.add(layer);
  return out;
}

/** After a segment stopped using `layers` (windowedLayers): one whose last other user that was takes it back shared. */
export function shareAgain(e: Engine, layers: Set<Layer>): void {
  for (const layer of layers) {
    const sole = soleSharer(e.segments, layer);
    if (sole !== undefined) reshare(e, sole, layer);
  }
}
