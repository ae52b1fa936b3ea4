// Sharing a layer again: when every clone of a segment is closed, the
// segment is once more the only user of the layer its first clone made
// private, and it can go back to what it was before that clone: one
// MAP_SHARED mapping of the layer, written straight through, with no
// copy-on-write on its next writes and nothing to copy at its next clone
// (a first clone again: its page tables moved aside, one mapping made
// private). Snapshots taken and let go one after another then cost a
// first clone each, whatever was written between them.
import * as sys from '../libc.ts';
import { RangeList } from '../../src/runs.ts';
import { scanWrittenList, setRuns, type Engine, type LinuxSegment } from './engine.ts';
import type { Layer } from './layers.ts';
import { mapShared } from './mapper.ts';
import { spanPieces } from './move-aside.ts';

/**
 * The segment that could take `layer` back as its shared mapping: mapped,
 * private, showing nothing but `layer` (and never-written holes, which
 * read as the layer's own holes), no page pinned, and the only user of
 * every page of the layer anyone uses. Undefined where there is none.
 */
export function soleSharer(segments: Iterable<LinuxSegment>, layer: Layer): LinuxSegment | undefined {
  if (layer.window === 0n || layer.refs.empty) return undefined;
  for (const seg of segments) {
    if (seg.released || !seg.mapped || seg.shared !== null || seg.length !== layer.length) continue;
    const runs = seg.runs;
    if (seg.maps !== runs) continue;
    const on = new RangeList(runs.length);
    let other = false;
    for (const r of runs) {
      if (r.layer === layer) on.push(r.start, r.end);
      else if (r.layer !== null) other = true;
    }
    if (other || on.length === 0) continue;
    // Every page any run list uses is one of this segment's, used once.
    const pages = on.pages;
    return layer.refs.pages === pages && layer.refs.listWithCount(on, 1).pages === pages ? seg : undefined;
  }
  return undefined;
}

/**
 * Makes `seg` (soleSharer of `layer`) a shared mapping of `layer` again:
 * its pages written since its last freeze are written into the layer
 * (nobody else uses those layer pages), then the layer's moved-aside
 * mapping, which holds the page tables of every page the segment wrote
 * before its first clone, is moved back over the segment's address, a
 * page-table span at a time. True when done. False when it was not
 * tried or nothing moved: the segment then reads and behaves as before
 * (the layer pages written hold what the segment holds there, and it
 * still has its private copies of them). Where a later piece will not
 * move, the layer is mapped shared over the whole segment instead (it
 * holds all the segment's contents by then) and what is left of the
 * moved-aside mapping is unmapped; only a failure of that mapping throws,
 * and leaves the segment part shared, part private.
 */
export function reshare(e: Engine, seg: LinuxSegment, layer: Layer): boolean {
  const window = layer.window;
  const pieces = spanPieces(seg.addr, seg.length, e.pageSize);
  // Each move splits both mappings until the last one.
  if (!e.budget.fits(pieces.length + 2)) return false;
  try {
    const written = scanWrittenList(e, seg);
    if (written.length > 0) {
      if (e.windowCopy) e.writer.toWindow(layer, seg.addr, written);
      else e.writer.write(layer, seg.addr, written.toArray());
    }
  } catch {
    return false;
  }
  const flags = sys.MREMAP_MAYMOVE | sys.MREMAP_FIXED;
  let moved = 0;
  try {
    for (const [offset, piece] of pieces) {
      // Safety: MREMAP_FIXED over the segment's own mapping, whose pages
      // all read the same from the layer now; views keep their addresses.
      sys.mremap(window + BigInt(offset), piece, piece, flags, seg.addr + BigInt(offset));
      moved++;
    }
  } catch (err) {
    if (moved === 0) return false;
    // Part of the segment is a shared mapping of the layer already: the
    // rest must be one too, or its writes there would reach the next clone.
    // Mapped whole (the pieces moved lose their page tables), and what is
    // left of the moved-aside mapping unmapped.
    // Safety: MAP_FIXED over the segment's own mapping, every page of which
    // reads the same from the layer.
    try {
      mapShared(seg.addr, seg.length, layer.fd);
    } catch {
      throw err;
    }
    e.windows.drop(layer);
  }
  if (layer.window !== 0n) {
    layer.window = 0n;
    e.windows.count--;
  }
  setRuns(e, seg, [{ start: 0, end: seg.pages, layer }]);
  seg.shared = layer;
  seg.debt = 0;
  seg.scanned = 0;
  return true;
}
