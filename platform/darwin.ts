// macOS backend: copy-on-write from the Mach VM system, through libSystem.
//
// NOTE: this backend has never run on macOS. It was written against the xnu
// headers and tested on Linux through a simulation of the Mach calls (a fake
// address space with copy-on-write bookkeeping over real memory), which checks
// the calls, their argument types and the error paths, not the kernel.
//
// - create(): mach_vm_allocate(VM_FLAGS_ANYWHERE): zero-filled memory.
// - clone(): mach_vm_remap(self, &addr, size, 0, VM_FLAGS_ANYWHERE, self, src,
//   copy = TRUE, &cur, &max, VM_INHERIT_DEFAULT). The kernel makes the new
//   range a symmetric copy-on-write copy of the source: both share every
//   physical page, and the first write to a page on either side copies it.
//   Cost: proportional to the map entries, not to the bytes.
// - restore(target, source): the same remap with VM_FLAGS_FIXED |
//   VM_FLAGS_OVERWRITE at the target's own address, so the target keeps its
//   address and its views while its pages become copy-on-write shares of the
//   source's. The kernel extracts the source before it replaces the target,
//   so a failure leaves the target as it was.
// - release(): mach_vm_deallocate.
// - stats(): mach_vm_region(VM_REGION_TOP_INFO) over each map entry of the
//   segment: the kernel's own count of resident pages private to the entry
//   and shared with others (what `top` reports). Pages that are swapped out
//   or compressed are not counted.
// - memory(): the same walk over every live segment; `layers` counts the
//   distinct VM objects on top of their entries. `taskVmInfo()` adds the
//   process-wide figures of task_info(TASK_VM_INFO).
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
  TRUE,
  VM_FLAGS_ANYWHERE,
  VM_FLAGS_FIXED,
  VM_FLAGS_OVERWRITE,
  VM_INHERIT_DEFAULT,
  VM_MAKE_TAG,
  VM_MEMORY_APPLICATION_SPECIFIC_1,
  VM_PROT_READ,
  VM_PROT_WRITE,
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

/** Tag on every range this backend maps, so `vmmap` shows them as "Memory Tag 240". */
const TAG = VM_MAKE_TAG(VM_MEMORY_APPLICATION_SPECIFIC_1);

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
    this.pageSize = page;
  }

  // ---- Backend ---------------------------------------------------------------

  create(length: number): DarwinSegment {
    const m = this.#mach;
    this.#addr[0] = 0n;
    const kr = m.mach_vm_allocate(this.#task, this.#addr, BigInt(length), VM_FLAGS_ANYWHERE | TAG);
    if (kr === KERN_NO_SPACE || kr === KERN_RESOURCE_SHORTAGE) throw outOfMemory('mach_vm_allocate', kr, length, m);
    if (kr !== KERN_SUCCESS) throw machError('mach_vm_allocate', kr, `cannot allocate ${length} bytes`, m);
    const seg: DarwinSegment = { addr: this.#addr[0]!, length, released: false };
    this.#segments.add(seg);
    return seg;
  }

  clone(source: DarwinSegment): DarwinSegment {
    this.#addr[0] = 0n;
    this.#remap(VM_FLAGS_ANYWHERE | TAG, source, `cannot clone ${source.length} bytes`);
    const seg: DarwinSegment = { addr: this.#addr[0]!, length: source.length, released: false };
    if (!this.#writable()) {
      this.#discard(seg);
      throw machError('mach_vm_remap', KERN_PROTECTION_FAILURE, `the clone of ${source.length} bytes is not writable`, this.#mach);
    }
    this.#segments.add(seg);
    return seg;
  }

  restore(target: DarwinSegment, source: DarwinSegment): void {
    // Safety: the remap replaces the pages at the target's own address, so
    // every view of the target stays mapped and now reads the source's bytes.
    this.#addr[0] = target.addr;
    this.#remap(VM_FLAGS_FIXED | VM_FLAGS_OVERWRITE | TAG, source, `cannot restore ${target.length} bytes`);
    if (this.#addr[0] !== target.addr) {
      throw machError('mach_vm_remap', KERN_INVALID_ADDRESS, `restore moved the segment to 0x${this.#addr[0]!.toString(16)}`, this.#mach);
    }
  }

  release(seg: DarwinSegment): void {
    if (seg.released) return;
    // Safety: src/segment.ts has detached every view of the segment.
    const kr = this.#mach.mach_vm_deallocate(this.#task, seg.addr, BigInt(seg.length));
    if (kr !== KERN_SUCCESS) {
      throw machError('mach_vm_deallocate', kr, `cannot deallocate ${seg.length} bytes`, this.#mach);
    }
    seg.released = true;
    this.#segments.delete(seg);
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
    let privatePages = 0;
    let sharedPages = 0;
    let mappings = 0;
    this.#walk(seg, (e) => {
      privatePages += e.privatePages;
      sharedPages += e.sharedPages;
      mappings++;
    });
    return { privateBytes: privatePages * this.pageSize, sharedBytes: sharedPages * this.pageSize, mappings };
  }

  memory(): BackendMemory {
    const objects = new Map<number, number>();
    let privatePages = 0;
    let mappings = 0;
    let anonymous = 0;
    for (const seg of this.#segments) {
      this.#walk(seg, (e) => {
        privatePages += e.privatePages;
        mappings++;
        const pages = e.privatePages + e.sharedPages;
        // obj_id 0: no object yet (never touched); count each such entry once.
        const id = e.objectId === 0 ? --anonymous : e.objectId;
        objects.set(id, Math.max(objects.get(id) ?? 0, pages));
      });
    }
    let layerPages = 0;
    let layers = 0;
    for (const [id, pages] of objects) {
      layerPages += pages;
      if (id > 0) layers++;
    }
    return { layers, layerBytes: layerPages * this.pageSize, privateBytes: privatePages * this.pageSize, mappings };
  }

  // ---- macOS extras -------------------------------------------------------------

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

  /** mach_vm_remap(copy = TRUE) of `source` to `this.#addr[0]` with `flags`; throws on failure. */
  #remap(flags: number, source: DarwinSegment, detail: string): void {
    const m = this.#mach;
    const kr = m.mach_vm_remap(
      this.#task,
      this.#addr,
      BigInt(source.length),
      0n,
      flags,
      this.#task,
      source.addr,
      TRUE,
      this.#cur,
      this.#max,
      VM_INHERIT_DEFAULT,
    );
    if (kr !== KERN_SUCCESS) throw machError('mach_vm_remap', kr, detail, m);
  }

  /** Whether the last remap's current protection allows reading and writing. */
  #writable(): boolean {
    const rw = VM_PROT_READ | VM_PROT_WRITE;
    return (this.#cur[0]! & rw) === rw;
  }

  /** Deallocates a range this backend mapped but will not hand out; errors are moot then. */
  #discard(seg: DarwinSegment): void {
    this.#mach.mach_vm_deallocate(this.#task, seg.addr, BigInt(seg.length));
  }

  /**
   * Calls `visit` for each map entry that overlaps `seg`, with its resident
   * pages (VM_REGION_TOP_INFO) clipped to the overlap: neighbouring ranges
   * with the same attributes may share one entry.
   */
  #walk(seg: DarwinSegment, visit: (e: { privatePages: number; sharedPages: number; objectId: number }) => void): void {
    const m = this.#mach;
    const page = BigInt(this.pageSize);
    const end = seg.addr + BigInt(seg.length);
    const info = this.#info;
    let at = seg.addr;
    while (at < end) {
      this.#addr[0] = at;
      this.#size[0] = 0n;
      this.#count[0] = TOP_INFO.count;
      info.fill(0, 0, TOP_INFO.count);
      const kr = m.mach_vm_region(this.#task, this.#addr, this.#size, VM_REGION_TOP_INFO, info, this.#count, this.#object);
      if (kr === KERN_INVALID_ADDRESS) break; // nothing mapped at or above `at`
      if (kr !== KERN_SUCCESS) throw machError('mach_vm_region', kr, `cannot read the map entry at 0x${at.toString(16)}`, m);
      const start = this.#addr[0]!;
      const next = start + this.#size[0]!;
      if (start >= end || next <= at) break;
      const lo = start > seg.addr ? start : seg.addr;
      const hi = next < end ? next : end;
      const overlap = Number((hi - lo) / page);
      const privatePages = Math.min(info[TOP_INFO.private_pages_resident]! >>> 0, overlap);
      const sharedPages = Math.min(info[TOP_INFO.shared_pages_resident]! >>> 0, overlap - privatePages);
      visit({ privatePages, sharedPages, objectId: info[TOP_INFO.obj_id]! >>> 0 });
      at = next;
    }
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
