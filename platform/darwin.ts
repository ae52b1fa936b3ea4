// macOS backend: copy-on-write from the Mach VM system, through libSystem.
//
// NOTE: this backend has never run on macOS. It was written against the xnu
// sources (tag xnu-11417.101.15) and tested on Linux through a simulation of
// the Mach calls (test/mach-sim.ts: map entries, VM objects with shadow chains
// and delayed copies, entry coalescing, over real memory), which checks the
// calls, their arguments and the error paths as far as it models xnu, not the
// kernel itself.
//
// - create(): mach_vm_allocate(VM_FLAGS_ANYWHERE | tag) of the segment and one
//   guard page after it, then mach_vm_protect(guard, VM_PROT_NONE), before
//   anything touches the range (a clip then splits no object). vm_map_enter
//   extends the entry just below a new allocation when both have the same
//   protection and tag and stay under NO_COALESCE_LIMIT (128 KiB): without the
//   guard, small segments would share one entry and one object, stats would
//   charge a neighbour's pages to a segment, and cloning one would
//   write-protect its neighbour's pages. Nothing is ever allocated right
//   after a segment, so nothing coalesces into it.
// - clone(): the same reservation, then mach_vm_remap(copy = TRUE,
//   VM_FLAGS_FIXED | VM_FLAGS_OVERWRITE) of the source over its first part.
//   The remap flags carry no tag: mach_vm_remap refuses any flag outside
//   VM_FLAGS_USER_REMAP (KERN_INVALID_ARGUMENT), and the new entry copies the
//   source entry's tag anyway.
//   The copy is DELAYED, not symmetric (vm_map_remap_extract switches the
//   source object from COPY_SYMMETRIC to COPY_DELAY and marks it true_share;
//   vm_object_copy_delayed): the clone maps a new "copy object" that shadows
//   the source's object, with needs_copy set. A write by the clone copies the
//   page into a shadow of its own; a write by the source first pushes the old
//   page into the copy object, then writes in place. The cost of a clone is
//   the walk over the source object's resident pages (each is
//   write-protected), not the map entries.
// - restore(target, source): the same remap over the target's own address,
//   so the target keeps its address and its views. The kernel extracts the
//   source before it replaces the target, so a failure leaves the target as
//   it was.
// - release(): mach_vm_deallocate of the segment and its guard.
//
// stats() and memory() read mach_vm_region for each map entry of a segment:
// VM_REGION_TOP_INFO counts the resident pages of whole VM objects, in kernel
// pages (vm_kernel_page_size: 16 KiB under Rosetta, where vm_page_size is
// 4 KiB; vm_map_region_top_walk), and VM_REGION_EXTENDED_INFO walks the entry
// page by page in the task's pages, counting each resident page once wherever
// in the chain it is (vm_map_region_walk). What they can and cannot attribute:
// - privateBytes: the top object's pages when nothing else refers to it: the
//   pages this segment wrote since its last clone()/restore() (and, for a
//   clone that has not written yet, the pages its origin pushed to it), or all
//   of a segment that was never cloned.
// - sharedBytes: the other pages the entry sees, found in the objects below.
//   APPROXIMATE for an origin: once cloned, its object is referenced by the
//   copy object too, so the kernel calls the whole of it shared, including the
//   pages the origin wrote after the clone (their old contents went to the
//   clone's copy object, which no region call of the origin's entry looks
//   at). And a clone that wrote counts as shared the pages its origin pushed
//   to it since, which are in truth its own.
// - memory().layers: obj_id names the bottom object of the chain, the same
//   for an origin and its clones: `layers` counts these families of segments
//   sharing memory, and `layerBytes` adds each family's private pages to the
//   largest shared figure of top info among them (all objects under the
//   fullest chain), an approximation of the pages its objects hold.
// Swapped-out or compressed pages are not counted.
// `taskVmInfo()` adds the process-wide figures of task_info(TASK_VM_INFO).
//
// Errors: a create() the task cannot fit (mach_vm_allocate returns
// KERN_NO_SPACE or KERN_RESOURCE_SHORTAGE) is `ENOMEM`, as the API promises on
// every platform, with the kern_return_t as `errno` and its name in the message.
// Every other Mach failure keeps its kern_return_t name as `code` (`KERN_…`).
//
// Limits: a wired (mlocked) source is copied eagerly by the kernel. Page size
// is `vm_page_size` (16 KiB on Apple silicon), never assumed.
import type { Backend, BackendMemory, BackendStats } from '../src/backend.ts';
import { maxViewLength } from '../src/runtime.ts';
import { isPowerOfTwo } from '../src/pages.ts';
import { SegmentError } from '../src/errors.ts';
import {
  KERN_INVALID_ADDRESS,
  KERN_NO_SPACE,
  KERN_PROTECTION_FAILURE,
  KERN_RESOURCE_SHORTAGE,
  KERN_SUCCESS,
  TASK_VM_INFO,
  TASK_VM_INFO_LAYOUT,
  TOP_INFO,
  EXTENDED_INFO,
  FALSE,
  TRUE,
  VM_FLAGS_ANYWHERE,
  VM_FLAGS_FIXED,
  VM_FLAGS_OVERWRITE,
  VM_INHERIT_DEFAULT,
  VM_MAKE_TAG,
  VM_MEMORY_APPLICATION_SPECIFIC_1,
  VM_PROT_NONE,
  VM_PROT_READ,
  VM_PROT_WRITE,
  VM_REGION_EXTENDED_INFO,
  VM_REGION_TOP_INFO,
  kernReturnName,
  loadMach,
  machError,
  type MachCalls,
} from './mach.ts';

/** The macOS backend's handle for one segment. */
export interface DarwinSegment {
  /** Start of the range; fixed for the segment's life, always page-aligned. */
  readonly addr: bigint;
  /** Bytes in the range; always a multiple of the page size. */
  readonly length: number;
  released: boolean;
}

/** Process-wide figures from task_info(TASK_VM_INFO). */
export interface TaskVmInfo {
  virtualSize: number;
  regionCount: number;
  pageSize: number;
  residentSize: number;
  /** Anonymous (non file-backed) resident bytes. */
  internal: number;
  compressed: number;
  /** What Activity Monitor calls "Memory" for the process. */
  physFootprint: number;
}

/** Tag on every range this backend allocates, so `vmmap` shows them as "Memory Tag 240". */
const TAG = VM_MAKE_TAG(VM_MEMORY_APPLICATION_SPECIFIC_1);

/** The kernel's figures for one map entry, in bytes, clipped to the segment. */
export interface DarwinRegion {
  start: bigint;
  size: number;
  /** vm_region_top_info: the bottom object of the chain (0: no object yet). */
  objectId: number;
  refCount: number;
  shareMode: number;
  /** Resident pages of the top object when nothing else refers to it (top info). */
  privateBytes: number;
  /** Resident pages the entry sees through objects below its own: residentBytes - privateBytes. */
  sharedBytes: number;
  /** Pages resident anywhere in the entry's chain, each once (extended info). */
  residentBytes: number;
  /** The kernel's own shared figure: every object below summed, whole (top info). */
  chainSharedBytes: number;
  /** Depth of the shadow chain under the entry's object (extended info). */
  shadowDepth: number;
}

/**
 * @example
 * ```ts
 * const b = new DarwinBackend();          // libSystem (macOS only)
 * const s = new DarwinBackend(simulated); // any MachCalls, e.g. in tests
 * ```
 */
export class DarwinBackend implements Backend<DarwinSegment> {
  readonly name = 'darwin' as const;
  readonly pageSize: number;
  /** Bytes per kernel page: the unit of the kernel's page counts. */
  readonly kernelPageSize: number;
  readonly maxViewLength = maxViewLength;

  readonly #mach: MachCalls;
  readonly #task: number;
  readonly #segments = new Set<DarwinSegment>();
  // Out-parameter buffers, reused: calls are synchronous and never nest.
  readonly #addr = new BigUint64Array(1);
  readonly #size = new BigUint64Array(1);
  readonly #cur = new Int32Array(1);
  readonly #max = new Int32Array(1);
  readonly #info = new Int32Array(TASK_VM_INFO_LAYOUT.count);
  readonly #count = new Uint32Array(1);
  readonly #object = new Uint32Array(1);

  /**
   * @param mach - the Mach calls to make; by default the real ones from libSystem.
   * @throws Error when `mach` is not given and this is not macOS.
   */
  constructor(mach?: MachCalls) {
    this.#mach = mach ?? loadMach();
    this.#task = this.#mach.taskSelf;
    const page = this.#mach.pageSize;
    if (!isPowerOfTwo(page)) throw new Error(`vm_page_size is ${page}, not a power of two`);
    const kernelPage = this.#mach.kernelPageSize;
    if (!isPowerOfTwo(kernelPage)) throw new Error(`vm_kernel_page_size is ${kernelPage}, not a power of two`);
    this.pageSize = page;
    this.kernelPageSize = kernelPage;
  }

  // ---- Backend ---------------------------------------------------------------

  create(length: number): DarwinSegment {
    const seg: DarwinSegment = { addr: this.#reserve(length), length, released: false };
    this.#segments.add(seg);
    return seg;
  }

  clone(source: DarwinSegment): DarwinSegment {
    const seg: DarwinSegment = { addr: this.#reserve(source.length), length: source.length, released: false };
    try {
      this.#addr[0] = seg.addr;
      this.#remap(source, `cannot clone ${source.length} bytes`);
      this.#checkWritable(seg, `the clone of ${source.length} bytes`);
    } catch (err) {
      this.#discard(seg);
      throw err;
    }
    this.#segments.add(seg);
    return seg;
  }

  restore(target: DarwinSegment, source: DarwinSegment): void {
    // Safety: the remap replaces the pages at the target's own address, so
    // every view of the target stays mapped and now reads the source's bytes.
    this.#addr[0] = target.addr;
    this.#remap(source, `cannot restore ${target.length} bytes`);
    // The kernel reports the protection only once the target holds the
    // source's pages: a source that is not writable (only code outside
    // memfork can make it so) leaves the target with its bytes, as read-only.
    this.#checkWritable(target, `the restored ${target.length} bytes`);
  }

  release(seg: DarwinSegment): void {
    if (seg.released) return;
    // Safety: src/segment.ts has detached every view of the segment.
    const kr = this.#mach.mach_vm_deallocate(this.#task, seg.addr, BigInt(seg.length + this.pageSize));
    if (kr !== KERN_SUCCESS) {
      throw machError('mach_vm_deallocate', kr, `cannot deallocate ${seg.length} bytes`, this.#mach);
    }
    seg.released = true;
    this.#segments.delete(seg);
  }

  shutdown(): void {
    // A worker that exits runs no more JavaScript: nothing can read a view now.
    for (const seg of [...this.#segments]) {
      try {
        this.release(seg);
      } catch {
        // The process goes on; what the kernel would not take back stays mapped.
      }
    }
  }

  address(seg: DarwinSegment): bigint {
    return seg.addr;
  }

  view(seg: DarwinSegment, offset: number, length: number): ArrayBuffer {
    // Safety: the range lies inside the segment, which stays mapped at this
    // address until release() (restore() remaps in place); src/segment.ts
    // detaches every view before release().
    return this.#mach.view(seg.addr + BigInt(offset), length);
  }

  stats(seg: DarwinSegment): BackendStats {
    let privateBytes = 0;
    let sharedBytes = 0;
    let mappings = 1; // the guard page's entry
    for (const r of this.regions(seg)) {
      privateBytes += r.privateBytes;
      sharedBytes += r.sharedBytes;
      mappings++;
    }
    return { privateBytes, sharedBytes, mappings };
  }

  memory(): BackendMemory {
    // Per family of segments (one bottom object): their private bytes, and
    // the largest shared figure among them (see the file header).
    const families = new Map<number, { own: number; shared: number }>();
    let privateBytes = 0;
    let mappings = 0;
    let untouched = 0;
    for (const seg of this.#segments) {
      mappings++; // the guard
      for (const r of this.regions(seg)) {
        mappings++;
        privateBytes += r.privateBytes;
        // obj_id 0: no object yet (never touched), no memory.
        const id = r.objectId === 0 ? --untouched : r.objectId;
        const f = families.get(id) ?? { own: 0, shared: 0 };
        f.own += r.privateBytes;
        f.shared = Math.max(f.shared, r.chainSharedBytes);
        families.set(id, f);
      }
    }
    let layerBytes = 0;
    let layers = 0;
    for (const [id, f] of families) {
      layerBytes += f.own + f.shared;
      if (id > 0) layers++;
    }
    return { layers, layerBytes, privateBytes, mappings };
  }

  // ---- macOS extras -------------------------------------------------------------

  /**
   * The kernel's figures for each map entry of `seg`: VM_REGION_TOP_INFO
   * (objects, whole, in kernel pages) and VM_REGION_EXTENDED_INFO (the
   * entry's pages one by one, in this task's pages), clipped to the part of
   * the entry inside the segment.
   *
   * @throws {SegmentError} with the kern_return_t code when mach_vm_region fails.
   */
  regions(seg: DarwinSegment): DarwinRegion[] {
    const kpage = this.kernelPageSize;
    const end = seg.addr + BigInt(seg.length);
    const info = this.#info;
    const out: DarwinRegion[] = [];
    let at = seg.addr;
    while (at < end) {
      const entry = this.#region(at, VM_REGION_TOP_INFO, TOP_INFO.count);
      if (entry === undefined) break; // nothing mapped at or above `at`
      const { start, next } = entry;
      if (start >= end || next <= at) break;
      const objectId = info[TOP_INFO.obj_id]! >>> 0;
      const refCount = info[TOP_INFO.ref_count]! >>> 0;
      const shareMode = info[TOP_INFO.share_mode]! & 0xff;
      const topPrivate = (info[TOP_INFO.private_pages_resident]! >>> 0) * kpage;
      const topShared = (info[TOP_INFO.shared_pages_resident]! >>> 0) * kpage;
      this.#region(start, VM_REGION_EXTENDED_INFO, EXTENDED_INFO.count);
      const resident = (info[EXTENDED_INFO.pages_resident]! >>> 0) * this.pageSize;
      const shadowDepth = info[EXTENDED_INFO.shadow_depth]! & 0xffff;
      const lo = start > seg.addr ? start : seg.addr;
      const hi = next < end ? next : end;
      const bytes = Number(hi - lo);
      const residentBytes = Math.min(resident, bytes);
      // Top info counts whole kernel pages of the top object; a page the
      // entry sees is private when that object holds it, shared otherwise.
      const privateBytes = Math.min(topPrivate, residentBytes);
      out.push({
        start: lo,
        size: bytes,
        objectId,
        refCount,
        shareMode,
        privateBytes,
        sharedBytes: residentBytes - privateBytes,
        residentBytes,
        chainSharedBytes: topShared,
        shadowDepth,
      });
      at = next;
    }
    return out;
  }

  /** mach_vm_region of `flavor` at `at` into `this.#info`; the entry's range, or undefined when nothing is mapped at or above. */
  #region(at: bigint, flavor: number, count: number): { start: bigint; next: bigint } | undefined {
    const m = this.#mach;
    this.#addr[0] = at;
    this.#size[0] = 0n;
    this.#count[0] = count;
    this.#info.fill(0, 0, count);
    const kr = m.mach_vm_region(this.#task, this.#addr, this.#size, flavor, this.#info, this.#count, this.#object);
    if (kr === KERN_INVALID_ADDRESS) return undefined;
    if (kr !== KERN_SUCCESS) throw machError('mach_vm_region', kr, `cannot read the map entry at 0x${at.toString(16)}`, m);
    return { start: this.#addr[0]!, next: this.#addr[0]! + this.#size[0]! };
  }

  /**
   * Process-wide memory figures from task_info(TASK_VM_INFO) (revision 1 of
   * the struct, which every macOS since 10.11 fills).
   *
   * @throws {SegmentError} with the kern_return_t code when task_info fails.
   */
  taskVmInfo(): TaskVmInfo {
    const L = TASK_VM_INFO_LAYOUT;
    const info = this.#info;
    info.fill(0);
    this.#count[0] = L.rev1Count;
    const kr = this.#mach.task_info(this.#task, TASK_VM_INFO, info, this.#count);
    if (kr !== KERN_SUCCESS) throw machError('task_info', kr, 'cannot read TASK_VM_INFO', this.#mach);
    const dv = new DataView(info.buffer, info.byteOffset, info.byteLength);
    const u64 = (off: number): number => Number(dv.getBigUint64(off, true));
    const filled = this.#count[0]! >= L.rev1Count;
    return {
      virtualSize: u64(L.virtual_size),
      regionCount: dv.getInt32(L.region_count, true),
      pageSize: dv.getInt32(L.page_size, true),
      residentSize: u64(L.resident_size),
      internal: u64(L.internal),
      compressed: u64(L.compressed),
      physFootprint: filled ? u64(L.phys_footprint) : u64(L.internal) + u64(L.compressed),
    };
  }

  // ---- helpers -----------------------------------------------------------------

  /**
   * A new zero-filled range of `length` bytes followed by a guard page
   * (VM_PROT_NONE), so that no later allocation lands right after it and
   * coalesces into its entry; returns its address.
   */
  #reserve(length: number): bigint {
    const m = this.#mach;
    const total = length + this.pageSize;
    this.#addr[0] = 0n;
    let kr = m.mach_vm_allocate(this.#task, this.#addr, BigInt(total), VM_FLAGS_ANYWHERE | TAG);
    if (kr === KERN_NO_SPACE || kr === KERN_RESOURCE_SHORTAGE) throw outOfMemory('mach_vm_allocate', kr, length, m);
    if (kr !== KERN_SUCCESS) throw machError('mach_vm_allocate', kr, `cannot allocate ${length} bytes`, m);
    const addr = this.#addr[0]!;
    // Before anything touches the range: the clip then splits no VM object.
    kr = m.mach_vm_protect(this.#task, addr + BigInt(length), BigInt(this.pageSize), FALSE, VM_PROT_NONE);
    if (kr !== KERN_SUCCESS) {
      m.mach_vm_deallocate(this.#task, addr, BigInt(total));
      throw machError('mach_vm_protect', kr, `cannot make a guard page after ${length} bytes`, m);
    }
    return addr;
  }

  /**
   * mach_vm_remap(copy = TRUE, VM_FLAGS_FIXED | VM_FLAGS_OVERWRITE) of
   * `source` to `this.#addr[0]`; throws on failure. No tag in the flags:
   * mach_vm_remap takes only VM_FLAGS_USER_REMAP.
   */
  #remap(source: DarwinSegment, detail: string): void {
    const m = this.#mach;
    const at = this.#addr[0]!;
    const kr = m.mach_vm_remap(
      this.#task,
      this.#addr,
      BigInt(source.length),
      0n,
      VM_FLAGS_FIXED | VM_FLAGS_OVERWRITE,
      this.#task,
      source.addr,
      TRUE,
      this.#cur,
      this.#max,
      VM_INHERIT_DEFAULT,
    );
    if (kr !== KERN_SUCCESS) throw machError('mach_vm_remap', kr, detail, m);
    if (this.#addr[0] !== at) {
      throw machError('mach_vm_remap', KERN_INVALID_ADDRESS, `the remap moved to 0x${this.#addr[0]!.toString(16)}`, m);
    }
  }

  /** Throws KERN_PROTECTION_FAILURE unless the last remap's current protection allows reading and writing. */
  #checkWritable(seg: DarwinSegment, what: string): void {
    const rw = VM_PROT_READ | VM_PROT_WRITE;
    if ((this.#cur[0]! & rw) === rw) return;
    throw machError('mach_vm_remap', KERN_PROTECTION_FAILURE, `${what} at 0x${seg.addr.toString(16)} are not writable`, this.#mach);
  }

  /** Deallocates a range this backend mapped but will not hand out; errors are moot then. */
  #discard(seg: DarwinSegment): void {
    this.#mach.mach_vm_deallocate(this.#task, seg.addr, BigInt(seg.length + this.pageSize));
  }
}

/**
 * The error for an allocation the task has no room for: `ENOMEM`, as on every
 * other platform, with the kern_return_t as `errno` and named in the message:
 * `mach_vm_allocate ENOMEM: cannot allocate 16384 bytes (KERN_NO_SPACE: (os/kern) no space available)`.
 */
function outOfMemory(call: string, kr: number, bytes: number, strings: Pick<MachCalls, 'mach_error_string'>): SegmentError {
  let text = '';
  try {
    text = strings.mach_error_string(kr);
  } catch {
    // The kern_return_t name says it all.
  }
  const why = text ? `${kernReturnName(kr)}: ${text}` : kernReturnName(kr);
  return new SegmentError(`${call} ENOMEM: cannot allocate ${bytes} bytes (${why})`, 'ENOMEM', kr, call);
}
