// A SIMULATION of the Mach VM calls the macOS backend makes, for testing it
// where there is no macOS. It is not xnu: it models, after the xnu sources
// (tag xnu-11417.101.15, osfmk/vm/vm_map.c, vm_object.c, vm_fault.c, vm_user.c),
// what the backend relies on and what it reads back, and checks every argument
// the way the C prototypes type them.
//
// - The address space is a reservation of real memory of this process
//   (anonymous mmap through the Linux libc bindings), handed out first fit
//   from its lowest address as xnu's VM_FLAGS_ANYWHERE does, so views alias
//   it exactly as on macOS and neighbouring allocations touch.
// - Map entries point at VM objects; objects hold resident pages (in kernel
//   pages, `kernelPageSize`, which may be larger than the map's `pageSize`, as
//   under Rosetta), a shadow, a copy object, a reference count and a copy
//   strategy. mach_vm_allocate makes an entry with no object, or extends the
//   entry below when vm_map_enter would (same protection, inheritance and
//   tag, an object that may grow, at most NO_COALESCE_LIMIT bytes together).
//   mach_vm_remap(copy = TRUE) does what vm_map_remap_extract does: a source
//   object that is shadowed or bigger than the entry gets a shadow first,
//   the source object becomes COPY_DELAY and true_share, and the new entry
//   maps a copy object (vm_object_copy_delayed: reused while untouched,
//   otherwise a new one between) with needs_copy.
// - The program writes the real memory directly, so the simulation learns of
//   accesses at its next call: a page whose bytes differ from the model's is
//   a write fault (needs_copy entries get a shadow; a page of the top object
//   that a copy object lacks is pushed to it first; the page lands in the top
//   object), and a page the model has nowhere in the chain that the real
//   memory has resident (mincore) is a read fault: a zero page in the top
//   object. Resident means faulted, as in xnu, not non-zero. A write of the
//   bytes a page already holds goes unnoticed.
// - VM_REGION_TOP_INFO is vm_map_region_top_walk: whole-object resident
//   counts capped at the entry's size in kernel pages, shadows summed as
//   shared, obj_id of the bottom object. Object collapse is not modelled.
// - Flags outside VM_FLAGS_USER_ALLOCATE / VM_FLAGS_USER_REMAP return
//   KERN_INVALID_ARGUMENT as vm_user.c does; anything the backend does not
//   use (other flags, copy = FALSE, masks) throws an Error naming the gap.
// - `fail(call, kr, k)` makes the k-th next call of `call` return `kr`
//   without doing anything, like a refusing kernel.
import koffi from 'koffi';
import type { MachCalls } from '../platform/mach.ts';
import {
  KERN_INVALID_ADDRESS,
  KERN_INVALID_ARGUMENT,
  KERN_NO_SPACE,
  KERN_PROTECTION_FAILURE,
  KERN_SUCCESS,
  NO_COALESCE_LIMIT,
  SM_COW,
  SM_EMPTY,
  SM_PRIVATE,
  SM_SHARED,
  SM_TRUESHARED,
  TASK_VM_INFO,
  TASK_VM_INFO_LAYOUT,
  TOP_INFO,
  TRUE,
  VM_FLAGS_ALIAS_MASK,
  VM_FLAGS_ANYWHERE,
  VM_FLAGS_OVERWRITE,
  VM_FLAGS_USER_ALLOCATE,
  VM_FLAGS_USER_REMAP,
  VM_INHERIT_DEFAULT,
  VM_INHERIT_NONE,
  VM_PROT_ALL,
  VM_PROT_DEFAULT,
  VM_PROT_NONE,
  VM_PROT_READ,
  VM_PROT_WRITE,
  VM_REGION_EXTENDED_INFO,
  VM_REGION_TOP_INFO,
  EXTENDED_INFO,
} from '../platform/mach.ts';
import * as sys from '../platform/libc.ts';
import { DarwinBackend } from '../platform/darwin.ts';

/** MACH_SEND_INVALID_DEST (osfmk/mach/message.h): what a call on a bad port returns. */
export const MACH_SEND_INVALID_DEST = 0x10000003;

/** The Mach calls, as names for `fail()` and `calls`. */
export type SimCall =
  | 'mach_vm_allocate'
  | 'mach_vm_deallocate'
  | 'mach_vm_protect'
  | 'mach_vm_remap'
  | 'mach_vm_region'
  | 'task_info';

/** Beyond this the simulated task has no address space (47 bits, as on arm64 macOS). */
const ADDRESS_SPACE = 2 ** 47;
/** The real address space the simulation hands out (reserved, never touched unless mapped). */
const ARENA = 2 ** 36;

/** The kernel's text for the codes the simulation returns (libsyscall/mach/err_kern.sub). */
const STRINGS = new Map<number, string>([
  [0, '(os/kern) successful'],
  [1, '(os/kern) invalid address'],
  [2, '(os/kern) protection failure'],
  [3, '(os/kern) no space available'],
  [4, '(os/kern) invalid argument'],
  [5, '(os/kern) failure'],
  [6, '(os/kern) resource shortage'],
  [MACH_SEND_INVALID_DEST, '(ipc/send) invalid destination port'],
]);

// mincore(2) and mprotect(2), for the simulation only: which pages of the real
// memory the program has touched, and guard pages that really trap.
let linux: { mincore: (addr: bigint, length: number, vec: Uint8Array) => number; mprotect: (addr: bigint, length: number, prot: number) => number } | undefined;
function linuxCalls(): NonNullable<typeof linux> {
  if (linux === undefined) {
    const lib = koffi.load('libc.so.6');
    linux = {
      mincore: lib.func('int mincore(void *addr, size_t length, _Out_ uint8_t *vec)') as never,
      mprotect: lib.func('int mprotect(void *addr, size_t len, int prot)') as never,
    };
  }
  return linux;
}

/** A VM object (osfmk/vm/vm_object.h), as far as the backend can see it. */
interface VmObject {
  readonly id: number;
  /** Resident pages by kernel page index (shadows use the same indices). */
  readonly pages: Map<number, Uint8Array>;
  shadow: VmObject | null;
  /** vo_copy: the copy object that receives pushes. */
  copy: VmObject | null;
  refs: number;
  /** copy_strategy: MEMORY_OBJECT_COPY_SYMMETRIC until a remap copies it, then COPY_DELAY. */
  symmetric: boolean;
  trueShare: boolean;
  shadowed: boolean;
  /** vo_size in bytes. */
  size: number;
}

/** A map entry (osfmk/vm/vm_map.h). */
interface Entry {
  start: bigint;
  end: bigint;
  object: VmObject | null;
  /** Offset into the object, in bytes. */
  offset: number;
  needsCopy: boolean;
  prot: number;
  max: number;
  inheritance: number;
  tag: number;
}

/** One call as the simulation saw it, for tests that check arguments. */
export interface SimLogEntry {
  call: SimCall;
  args: Record<string, number | bigint>;
}

export class MachSim implements MachCalls {
  readonly taskSelf = 0x203;
  readonly pageSize: number;
  readonly kernelPageSize: number;
  /** Total bytes the simulated task may map; beyond it calls return KERN_NO_SPACE. */
  limit = Number.POSITIVE_INFINITY;
  /** When set, what mach_vm_remap reports as the new range's current protection (a kernel the backend must not trust). */
  remapProtection: number | undefined;
  /** Every call made, in order. */
  readonly log: SimLogEntry[] = [];
  /** Calls per name. */
  readonly calls = new Map<SimCall, number>();

  /** Entries by start address, never overlapping. */
  #entries: Entry[] = [];
  readonly #faults = new Map<SimCall, { countdown: number; kr: number }>();
  #nextId = 0x1000;
  #arena: bigint | undefined;

  constructor(options: { pageSize?: number; kernelPageSize?: number } = {}) {
    this.pageSize = options.pageSize ?? 16384;
    this.kernelPageSize = options.kernelPageSize ?? this.pageSize;
  }

  /** The k-th next call (1 = the very next) of `call` returns `kr` and does nothing. */
  fail(call: SimCall, kr: number, k = 1): void {
    this.#faults.set(call, { countdown: k, kr });
  }

  /** Map entries now. */
  get regionCount(): number {
    return this.#entries.length;
  }

  /** Bytes mapped now. */
  get mappedBytes(): number {
    let n = 0;
    for (const e of this.#entries) n += Number(e.end - e.start);
    return n;
  }

  /** Whether `[address, address + size)` is exactly one map entry. */
  isMapped(address: bigint, size: number): boolean {
    return this.#entries.some((e) => e.start === address && e.end === address + BigInt(size));
  }

  /** The entries overlapping `[address, address + size)`: start, end, protection, tag, object id. */
  entries(address = 0n, size = 2 ** 62): { start: bigint; end: bigint; prot: number; tag: number; object: number }[] {
    const end = address + BigInt(size);
    return this.#entries
      .filter((e) => e.start < end && address < e.end)
      .map((e) => ({ start: e.start, end: e.end, prot: e.prot, tag: e.tag, object: e.object?.id ?? 0 }));
  }

  /** Unmaps everything (end of a test). */
  dispose(): void {
    this.#entries = [];
    if (this.#arena !== undefined) sys.munmap(this.#arena, ARENA);
    this.#arena = undefined;
  }

  // ---- MachCalls -----------------------------------------------------------------

  mach_vm_allocate(target: number, address: BigUint64Array, size: bigint, flags: number): number {
    port(target, 'target');
    outArray(address, BigUint64Array, 1, 'mach_vm_address_t *address');
    bigintArg(size, 'mach_vm_size_t size');
    intArg(flags, 'int flags');
    const injected = this.#enter('mach_vm_allocate', { target, address: address[0]!, size, flags });
    if (injected !== undefined) return injected;
    if (target !== this.taskSelf) return MACH_SEND_INVALID_DEST;
    // osfmk/vm/vm_user.c, mach_vm_allocate_external.
    if (flags & ~VM_FLAGS_USER_ALLOCATE) return KERN_INVALID_ARGUMENT;
    if ((flags & ~VM_FLAGS_ALIAS_MASK) !== VM_FLAGS_ANYWHERE) {
      throw new Error(`MachSim: mach_vm_allocate flags 0x${(flags >>> 0).toString(16)} are not simulated`);
    }
    if (size === 0n) {
      address[0] = 0n;
      return KERN_SUCCESS;
    }
    const length = this.#roundUp(size);
    const at = this.#place(length);
    if (typeof at === 'number') return at;
    this.#sync();
    const end = at + length;
    const tag = (flags & VM_FLAGS_ALIAS_MASK) >>> 24;
    this.#realMap(at, Number(length));
    const below = this.#entries.find((e) => e.end === at);
    if (below !== undefined && this.#coalesces(below, tag, Number(length))) {
      // vm_map_enter extends the entry below; vm_object_coalesce drops stale pages and grows the object.
      if (below.object !== null) {
        const from = below.offset + Number(below.end - below.start);
        for (const k of [...below.object.pages.keys()]) {
          if (k * this.kernelPageSize >= from) below.object.pages.delete(k);
        }
        below.object.size = Math.max(below.object.size, from + Number(length));
      }
      below.end = end;
    } else {
      this.#insert({ start: at, end, object: null, offset: 0, needsCopy: false, prot: VM_PROT_DEFAULT, max: VM_PROT_ALL, inheritance: VM_INHERIT_DEFAULT, tag });
    }
    address[0] = at;
    return KERN_SUCCESS;
  }

  mach_vm_deallocate(target: number, address: bigint, size: bigint): number {
    port(target, 'target');
    bigintArg(address, 'mach_vm_address_t address');
    bigintArg(size, 'mach_vm_size_t size');
    const injected = this.#enter('mach_vm_deallocate', { target, address, size });
    if (injected !== undefined) return injected;
    if (target !== this.taskSelf) return MACH_SEND_INVALID_DEST;
    if (address % BigInt(this.pageSize) !== 0n) return KERN_INVALID_ARGUMENT;
    this.#sync();
    const end = address + this.#roundUp(size);
    for (const e of this.#clipped(address, end)) this.#remove(e);
    return KERN_SUCCESS; // nothing there: xnu succeeds too
  }

  mach_vm_protect(target: number, address: bigint, size: bigint, setMaximum: number, newProtection: number): number {
    port(target, 'target_task');
    bigintArg(address, 'mach_vm_address_t address');
    bigintArg(size, 'mach_vm_size_t size');
    uintArg(setMaximum, 'boolean_t set_maximum');
    intArg(newProtection, 'vm_prot_t new_protection');
    const injected = this.#enter('mach_vm_protect', { target_task: target, address, size, set_maximum: setMaximum, new_protection: newProtection });
    if (injected !== undefined) return injected;
    if (target !== this.taskSelf) return MACH_SEND_INVALID_DEST;
    if (setMaximum !== 0) throw new Error('MachSim: setting the maximum protection is not simulated');
    this.#sync();
    const end = address + this.#roundUp(size);
    if (!this.#covered(address, end)) return KERN_INVALID_ADDRESS;
    const inside = this.#clipped(address, end);
    if (inside.some((e) => (newProtection & ~e.max) !== 0)) return KERN_PROTECTION_FAILURE;
    for (const e of inside) {
      e.prot = newProtection;
      this.#realProtect(e);
    }
    return KERN_SUCCESS;
  }

  mach_vm_remap(
    targetTask: number,
    targetAddress: BigUint64Array,
    size: bigint,
    mask: bigint,
    flags: number,
    srcTask: number,
    srcAddress: bigint,
    copy: number,
    curProtection: Int32Array,
    maxProtection: Int32Array,
    inheritance: number,
  ): number {
    port(targetTask, 'target_task');
    outArray(targetAddress, BigUint64Array, 1, 'mach_vm_address_t *target_address');
    bigintArg(size, 'mach_vm_size_t size');
    bigintArg(mask, 'mach_vm_offset_t mask');
    intArg(flags, 'int flags');
    port(srcTask, 'src_task');
    bigintArg(srcAddress, 'mach_vm_address_t src_address');
    uintArg(copy, 'boolean_t copy');
    outArray(curProtection, Int32Array, 1, 'vm_prot_t *cur_protection');
    outArray(maxProtection, Int32Array, 1, 'vm_prot_t *max_protection');
    uintArg(inheritance, 'vm_inherit_t inheritance');
    const injected = this.#enter('mach_vm_remap', {
      target_task: targetTask,
      target_address: targetAddress[0]!,
      size,
      mask,
      flags,
      src_task: srcTask,
      src_address: srcAddress,
      copy,
      inheritance,
    });
    if (injected !== undefined) return injected;
    // osfmk/vm/vm_user.c, mach_vm_remap_external: "filter out any kernel-only flags".
    if (flags & ~VM_FLAGS_USER_REMAP) return KERN_INVALID_ARGUMENT;
    if (targetTask !== this.taskSelf || srcTask !== this.taskSelf) return MACH_SEND_INVALID_DEST;
    if (inheritance > VM_INHERIT_NONE) return KERN_INVALID_ARGUMENT;
    if (copy !== TRUE) throw new Error('MachSim: remapping without copy is not simulated');
    if (mask !== 0n) throw new Error('MachSim: remapping with an alignment mask is not simulated');
    const page = BigInt(this.pageSize);
    if (srcAddress % page !== 0n) throw new Error('MachSim: unaligned source addresses are not simulated');
    const length = this.#roundUp(size);
    const srcEnd = srcAddress + length;
    let at: bigint;
    if (flags === VM_FLAGS_ANYWHERE) {
      const placed = this.#place(length);
      if (typeof placed === 'number') return placed;
      at = placed;
    } else if (flags === VM_FLAGS_OVERWRITE) {
      at = targetAddress[0]!;
      if (at % page !== 0n) throw new Error('MachSim: unaligned target addresses are not simulated');
      if (at < srcEnd && srcAddress < at + length) throw new Error('MachSim: remapping a range over itself is not simulated');
    } else if (flags === 0) {
      return KERN_NO_SPACE; // VM_FLAGS_FIXED without OVERWRITE: the backend never asks for it over free space
    } else {
      throw new Error(`MachSim: mach_vm_remap flags 0x${(flags >>> 0).toString(16)} are not simulated`);
    }
    this.#sync();
    if (!this.#covered(srcAddress, srcEnd)) return KERN_INVALID_ADDRESS;
    // vm_map_remap_extract, copy = TRUE, entry by entry (legacy mode:
    // cur/max protection come back as the most restrictive of the sources).
    let cur = VM_PROT_ALL;
    let max = VM_PROT_ALL;
    const made: Entry[] = [];
    for (const src of this.#clipped(srcAddress, srcEnd)) {
      cur &= src.prot;
      max &= src.max;
      made.push({
        start: at + (src.start - srcAddress),
        end: at + (src.end - srcAddress),
        object: this.#extract(src),
        offset: src.offset,
        needsCopy: true,
        prot: src.prot,
        max: src.max,
        inheritance,
        tag: src.tag,
      });
    }
    if (flags === VM_FLAGS_OVERWRITE) for (const e of this.#clipped(at, at + length)) this.#remove(e);
    this.#realMap(at, Number(length));
    for (const e of made) {
      this.#insert(e);
      this.#realFill(e);
      this.#realProtect(e);
    }
    targetAddress[0] = at;
    curProtection[0] = this.remapProtection ?? cur;
    maxProtection[0] = max;
    return KERN_SUCCESS;
  }

  mach_vm_region(
    targetTask: number,
    address: BigUint64Array,
    size: BigUint64Array,
    flavor: number,
    info: Int32Array,
    infoCnt: Uint32Array,
    objectName: Uint32Array,
  ): number {
    port(targetTask, 'target_task');
    outArray(address, BigUint64Array, 1, 'mach_vm_address_t *address');
    outArray(size, BigUint64Array, 1, 'mach_vm_size_t *size');
    intArg(flavor, 'vm_region_flavor_t flavor');
    outArray(infoCnt, Uint32Array, 1, 'mach_msg_type_number_t *infoCnt');
    outArray(info, Int32Array, infoCnt[0]!, 'vm_region_info_t info');
    outArray(objectName, Uint32Array, 1, 'mach_port_t *object_name');
    const injected = this.#enter('mach_vm_region', { target_task: targetTask, address: address[0]!, flavor, infoCnt: infoCnt[0]! });
    if (injected !== undefined) return injected;
    if (targetTask !== this.taskSelf) return MACH_SEND_INVALID_DEST;
    if (flavor !== VM_REGION_TOP_INFO && flavor !== VM_REGION_EXTENDED_INFO) {
      throw new Error(`MachSim: region flavor ${flavor} is not simulated`);
    }
    const count = flavor === VM_REGION_TOP_INFO ? TOP_INFO.count : EXTENDED_INFO.count;
    if (infoCnt[0]! < count) return KERN_INVALID_ARGUMENT;
    this.#sync();
    const found = this.#entries.find((e) => e.end > address[0]!);
    if (found === undefined) return KERN_INVALID_ADDRESS;
    if (flavor === VM_REGION_TOP_INFO) {
      const top = this.#topInfo(found);
      info[TOP_INFO.obj_id] = top.objId;
      info[TOP_INFO.ref_count] = top.refCount;
      info[TOP_INFO.private_pages_resident] = top.privatePages;
      info[TOP_INFO.shared_pages_resident] = top.sharedPages;
      info[TOP_INFO.share_mode] = top.shareMode;
    } else {
      const x = this.#extendedInfo(found);
      info[EXTENDED_INFO.protection] = found.prot;
      info[EXTENDED_INFO.user_tag] = found.tag;
      info[EXTENDED_INFO.pages_resident] = x.resident;
      info[EXTENDED_INFO.pages_shared_now_private] = x.sharedNowPrivate;
      info[EXTENDED_INFO.pages_swapped_out] = 0;
      info[EXTENDED_INFO.pages_dirtied] = x.resident;
      info[EXTENDED_INFO.ref_count] = x.refCount;
      info[EXTENDED_INFO.shadow_depth] = x.depth | (x.shareMode << 24);
      info[EXTENDED_INFO.pages_reusable] = 0;
    }
    infoCnt[0] = count;
    objectName[0] = 0; // MACH_PORT_NULL, as xnu returns
    address[0] = found.start;
    size[0] = found.end - found.start;
    return KERN_SUCCESS;
  }

  task_info(targetTask: number, flavor: number, info: Int32Array, infoCnt: Uint32Array): number {
    port(targetTask, 'target_task');
    uintArg(flavor, 'task_flavor_t flavor');
    outArray(infoCnt, Uint32Array, 1, 'mach_msg_type_number_t *task_info_outCnt');
    outArray(info, Int32Array, infoCnt[0]!, 'task_info_t task_info_out');
    const injected = this.#enter('task_info', { target_task: targetTask, flavor, count: infoCnt[0]! });
    if (injected !== undefined) return injected;
    if (targetTask !== this.taskSelf) return MACH_SEND_INVALID_DEST;
    const L = TASK_VM_INFO_LAYOUT;
    if (flavor !== TASK_VM_INFO) throw new Error(`MachSim: task_info flavor ${flavor} is not simulated`);
    if (infoCnt[0]! < L.rev0Count) return KERN_INVALID_ARGUMENT;
    this.#sync();
    const objects = new Set<VmObject>();
    for (const e of this.#entries) for (let o = e.object; o !== null; o = o.shadow) objects.add(o);
    let resident = 0;
    for (const o of objects) resident += o.pages.size * this.kernelPageSize;
    const dv = new DataView(info.buffer, info.byteOffset, info.byteLength);
    dv.setBigUint64(L.virtual_size, BigInt(this.mappedBytes), true);
    dv.setInt32(L.region_count, this.#entries.length, true);
    dv.setInt32(L.page_size, this.pageSize, true);
    dv.setBigUint64(L.resident_size, BigInt(resident), true);
    dv.setBigUint64(L.internal, BigInt(resident), true);
    dv.setBigUint64(L.compressed, 0n, true);
    if (infoCnt[0]! >= L.rev1Count) {
      dv.setBigUint64(L.phys_footprint, BigInt(resident), true);
      infoCnt[0] = L.rev1Count;
    } else {
      infoCnt[0] = L.rev0Count;
    }
    return KERN_SUCCESS;
  }

  mach_error_string(kr: number): string {
    return STRINGS.get(kr) ?? '(os/kern) unknown error code';
  }

  view(address: bigint, length: number): ArrayBuffer {
    if (!this.#covered(address, address + BigInt(length))) {
      throw new Error(`MachSim: view of unmapped memory at 0x${address.toString(16)}`);
    }
    return sys.view(address, length);
  }

  // ---- the simulated address space ---------------------------------------------

  #enter(call: SimCall, args: Record<string, number | bigint>): number | undefined {
    this.calls.set(call, (this.calls.get(call) ?? 0) + 1);
    this.log.push({ call, args });
    const f = this.#faults.get(call);
    if (f === undefined) return undefined;
    if (--f.countdown > 0) return undefined;
    this.#faults.delete(call);
    return f.kr;
  }

  #roundUp(size: bigint): bigint {
    const page = BigInt(this.pageSize);
    return ((size + page - 1n) / page) * page;
  }

  #arenaStart(): bigint {
    if (this.#arena === undefined) {
      const align = Math.max(this.pageSize, this.kernelPageSize);
      const raw = sys.mmap(null, ARENA + align, sys.PROT_NONE, sys.MAP_PRIVATE | sys.MAP_ANONYMOUS | sys.MAP_NORESERVE, -1, 0);
      const a = BigInt(align);
      const start = ((raw + a - 1n) / a) * a;
      if (start > raw) sys.munmap(raw, Number(start - raw));
      const tail = Number(raw + BigInt(ARENA + align) - (start + BigInt(ARENA)));
      if (tail > 0) sys.munmap(start + BigInt(ARENA), tail);
      this.#arena = start;
    }
    return this.#arena;
  }

  /** The lowest free range of `length` bytes (first fit), or KERN_NO_SPACE. */
  #place(length: bigint): bigint | number {
    if (length > BigInt(ADDRESS_SPACE) || this.mappedBytes + Number(length) > this.limit) return KERN_NO_SPACE;
    const base = this.#arenaStart();
    let at = base;
    for (const e of this.#entries) {
      if (e.start - at >= length) break;
      if (e.end > at) at = e.end;
    }
    if (at + length > base + BigInt(ARENA)) return KERN_NO_SPACE;
    return at;
  }

  #insert(e: Entry): void {
    this.#entries.push(e);
    this.#entries.sort((a, b) => (a.start < b.start ? -1 : a.start > b.start ? 1 : 0));
  }

  /** Whether vm_map_enter would extend `below` by `length` bytes of a new allocation tagged `tag`. */
  #coalesces(below: Entry, tag: number, length: number): boolean {
    if (this.pageSize < this.kernelPageSize) return false; // "no coalescing if address space uses sub-pages"
    if (below.prot !== VM_PROT_DEFAULT || below.max !== VM_PROT_ALL || below.inheritance !== VM_INHERIT_DEFAULT) return false;
    if (below.tag !== tag) return false;
    if (Number(below.end - below.start) + length > NO_COALESCE_LIMIT) return false;
    const o = below.object;
    // vm_object_coalesce.
    return o === null || (o.refs === 1 && o.shadow === null && o.copy === null && !o.trueShare);
  }

  /** Whether `[start, end)` is mapped without holes. */
  #covered(start: bigint, end: bigint): boolean {
    let at = start;
    for (const e of this.#entries) {
      if (e.end <= at) continue;
      if (e.start > at) return false;
      at = e.end;
      if (at >= end) return true;
    }
    return at >= end;
  }

  /** The entries inside `[start, end)`, clipped at both ends first (vm_map_clip_start/end: one more reference to the object). */
  #clipped(start: bigint, end: bigint): Entry[] {
    for (const at of [start, end]) {
      const e = this.#entries.find((x) => x.start < at && at < x.end);
      if (e === undefined) continue;
      const tail: Entry = { ...e, start: at, offset: e.offset + Number(at - e.start) };
      e.end = at;
      if (e.object !== null) e.object.refs++;
      this.#insert(tail);
    }
    return this.#entries.filter((e) => e.start >= start && e.end <= end);
  }

  #remove(e: Entry): void {
    this.#entries.splice(this.#entries.indexOf(e), 1);
    this.#release(e.object);
    this.#realUnmap(e.start, Number(e.end - e.start));
  }

  #newObject(size: number): VmObject {
    return { id: this.#nextId++, pages: new Map(), shadow: null, copy: null, refs: 1, symmetric: true, trueShare: false, shadowed: false, size };
  }

  #release(o: VmObject | null): void {
    while (o !== null && --o.refs === 0) {
      const below = o.shadow;
      if (below !== null && below.copy === o) below.copy = null;
      o = below;
    }
  }

  /** VME_OBJECT_SHADOW: the entry gets a new object over its old one (the entry's reference moves to the shadow link). */
  #shadowEntry(e: Entry): void {
    const under = e.object!;
    const top = this.#newObject(Number(e.end - e.start) + e.offset);
    top.shadow = under;
    under.shadowed = true;
    e.object = top;
    e.needsCopy = false;
  }

  /** vm_map_remap_extract for one source entry with copy = TRUE: the object the new entry maps (one reference for it). */
  #extract(src: Entry): VmObject | null {
    const size = Number(src.end - src.start);
    if (src.object === null) {
      if (src.max === VM_PROT_NONE) return null; // a reserved range: copied as is
      src.object = this.#newObject(size);
      src.offset = 0;
    } else if (src.object.symmetric && (src.needsCopy || src.object.shadowed || (!src.object.trueShare && src.object.size > size))) {
      this.#shadowEntry(src);
    }
    const object = src.object;
    if (object.symmetric) {
      object.symmetric = false; // MEMORY_OBJECT_COPY_DELAY
      object.trueShare = true;
    }
    // vm_object_copy_delayed.
    const old = object.copy;
    if (old !== null && old.pages.size === 0) {
      old.refs++;
      old.size = Math.max(old.size, src.offset + size);
      return old;
    }
    const made = this.#newObject(Math.max(src.offset + size, old?.size ?? 0));
    if (old !== null) {
      object.refs--; // the old copy shadows the new one instead
      old.shadow = made;
      made.refs++;
    }
    made.shadow = object;
    made.shadowed = true;
    object.refs++;
    object.copy = made;
    return made;
  }

  /** The page at kernel page `k` seen through the chain from `o`, with the depth it was found at. */
  #lookup(o: VmObject | null, k: number): Uint8Array | undefined {
    for (; o !== null; o = o.shadow) {
      const p = o.pages.get(k);
      if (p !== undefined) return p;
    }
    return undefined;
  }

  /**
   * Learns what the program did to the real memory since the last call:
   * faults, as vm_fault would have taken them. Only kernel pages with a page
   * the real memory holds resident (mincore) can have changed: the others read
   * as zeros, and the model holds no non-zero page there.
   */
  #sync(): void {
    const { mincore } = linuxCalls();
    const kp = this.kernelPageSize;
    for (const e of this.#entries) {
      if ((e.prot & VM_PROT_READ) === 0) continue;
      const len = Number(e.end - e.start);
      const vec = new Uint8Array(Math.ceil(len / 4096));
      if (mincore(e.start, len, vec) !== 0) throw new Error('MachSim: mincore failed');
      let lastK = -1;
      for (let i = vec.indexOf(1); i !== -1; i = vec.indexOf(1, i + 1)) {
        const k = Math.floor((e.offset + i * 4096) / kp);
        if (k === lastK) continue;
        lastK = k;
        // The part of kernel page k inside the entry.
        const from = Math.max(k * kp, e.offset) - k * kp;
        const to = Math.min((k + 1) * kp, e.offset + len) - k * kp;
        const addr = e.start + BigInt(k * kp + from - e.offset);
        const now = new Uint8Array(sys.view(addr, to - from));
        const seen = this.#lookup(e.object, k);
        if (seen !== undefined) {
          if (Buffer.compare(now, seen.subarray(from, to)) === 0) continue;
          const page = seen.slice();
          page.set(now, from);
          this.#writeFault(e, k, page);
        } else if (isZero(now)) {
          this.#readFault(e, k);
        } else {
          const page = new Uint8Array(kp);
          page.set(now, from);
          this.#writeFault(e, k, page);
        }
      }
    }
  }

  #writeFault(e: Entry, k: number, content: Uint8Array): void {
    if (e.object === null) {
      e.object = this.#newObject(Number(e.end - e.start));
      e.offset = 0;
    }
    if (e.needsCopy) this.#shadowEntry(e);
    const top = e.object!;
    const copy = top.copy;
    if (copy !== null && !copy.pages.has(k)) {
      // The push: the copy object keeps the page as it was before this write.
      copy.pages.set(k, (this.#lookup(top, k) ?? new Uint8Array(this.kernelPageSize)).slice());
    }
    top.pages.set(k, content);
  }

  #readFault(e: Entry, k: number): void {
    if (e.object === null) {
      e.object = this.#newObject(Number(e.end - e.start));
      e.offset = 0;
    }
    e.object.pages.set(k, new Uint8Array(this.kernelPageSize));
  }

  /** vm_map_region_top_walk. */
  #topInfo(e: Entry): { objId: number; refCount: number; privatePages: number; sharedPages: number; shareMode: number } {
    let o = e.object;
    if (o === null) return { objId: 0, refCount: 0, privatePages: 0, sharedPages: 0, shareMode: SM_EMPTY };
    const entryPages = Math.floor(Number(e.end - e.start) / this.kernelPageSize);
    const resident = (x: VmObject): number => Math.min(entryPages, x.pages.size);
    let privatePages = 0;
    let sharedPages = 0;
    let refCount = o.refs;
    let shareMode: number;
    if (o.shadow !== null) {
      if (o.refs === 1) privatePages = resident(o);
      else sharedPages = resident(o);
      shareMode = SM_COW;
      while (o.shadow !== null) {
        o = o.shadow;
        sharedPages += resident(o);
        refCount += o.refs - 1;
      }
    } else if (e.needsCopy) {
      shareMode = SM_COW;
      sharedPages = resident(o);
    } else if (o.refs === 1) {
      shareMode = SM_PRIVATE;
      privatePages = resident(o);
    } else {
      shareMode = SM_SHARED;
      sharedPages = resident(o);
    }
    return { objId: o.id, refCount, privatePages, sharedPages, shareMode };
  }

  /** vm_map_region_walk with look_for_pages: the entry's pages one by one, in the task's pages. */
  #extendedInfo(e: Entry): { resident: number; sharedNowPrivate: number; refCount: number; depth: number; shareMode: number } {
    const top = e.object;
    if (top === null) return { resident: 0, sharedNowPrivate: 0, refCount: 0, depth: 0, shareMode: SM_EMPTY };
    let resident = 0;
    let sharedNowPrivate = 0;
    const len = Number(e.end - e.start);
    for (let off = 0; off < len; off += this.pageSize) {
      const k = Math.floor((e.offset + off) / this.kernelPageSize);
      let maxRefs = top.refs;
      for (let o: VmObject | null = top; o !== null; o = o.shadow) {
        maxRefs = Math.max(maxRefs, o.refs);
        if (o.pages.has(k)) {
          if (top.shadow !== null && maxRefs === 1) sharedNowPrivate++;
          resident++;
          break;
        }
      }
    }
    let depth = 0;
    let refCount = top.refs;
    for (let o = top.shadow; o !== null; o = o.shadow) {
      depth++;
      refCount += o.refs;
    }
    refCount -= depth;
    const shareMode = depth > 0 || e.needsCopy ? SM_COW : top.refs === 1 ? SM_PRIVATE : top.trueShare ? SM_TRUESHARED : SM_SHARED;
    return { resident, sharedNowPrivate, refCount, depth, shareMode };
  }

  // The real memory behind the model.

  #realMap(at: bigint, length: number): void {
    // Safety: only ranges of the simulation's own reservation.
    sys.mmap(at, length, sys.PROT_READ | sys.PROT_WRITE, sys.MAP_PRIVATE | sys.MAP_ANONYMOUS | sys.MAP_FIXED | sys.MAP_NORESERVE, -1, 0);
  }

  #realUnmap(at: bigint, length: number): void {
    sys.mmap(at, length, sys.PROT_NONE, sys.MAP_PRIVATE | sys.MAP_ANONYMOUS | sys.MAP_FIXED | sys.MAP_NORESERVE, -1, 0);
  }

  /** Writes the pages the new entry sees (resident somewhere in its chain) into its fresh real memory. */
  #realFill(e: Entry): void {
    const kp = this.kernelPageSize;
    const len = Number(e.end - e.start);
    const keys = new Set<number>();
    for (let o = e.object; o !== null; o = o.shadow) for (const k of o.pages.keys()) keys.add(k);
    for (const k of keys) {
      const from = Math.max(k * kp, e.offset) - k * kp;
      const to = Math.min((k + 1) * kp, e.offset + len) - k * kp;
      if (to <= from) continue; // outside the entry
      const p = this.#lookup(e.object, k)!;
      if (isZero(p)) continue;
      new Uint8Array(sys.view(e.start + BigInt(k * kp + from - e.offset), to - from)).set(p.subarray(from, to));
    }
  }

  #realProtect(e: Entry): void {
    const prot = (e.prot & VM_PROT_READ ? sys.PROT_READ : 0) | (e.prot & VM_PROT_WRITE ? sys.PROT_WRITE : 0);
    if (linuxCalls().mprotect(e.start, Number(e.end - e.start), prot) !== 0) throw new Error('MachSim: mprotect failed');
  }
}

function isZero(bytes: Uint8Array): boolean {
  for (let i = 0; i < bytes.length; i++) if (bytes[i] !== 0) return false;
  return true;
}

// Argument checks, standing in for the C types of the prototypes.

function port(value: unknown, what: string): void {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 0 || value > 0xffffffff) {
    throw new TypeError(`MachSim: ${what} must be a mach_port_t (uint32), got ${String(value)}`);
  }
}

function bigintArg(value: unknown, what: string): void {
  if (typeof value !== 'bigint' || value < 0n || value >= 1n << 64n) {
    throw new TypeError(`MachSim: ${what} must be a uint64 bigint, got ${typeof value} ${String(value)}`);
  }
}

function intArg(value: unknown, what: string): void {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < -(2 ** 31) || value >= 2 ** 31) {
    throw new TypeError(`MachSim: ${what} must be an int, got ${String(value)}`);
  }
}

function uintArg(value: unknown, what: string): void {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 0 || value > 0xffffffff) {
    throw new TypeError(`MachSim: ${what} must be an unsigned int, got ${String(value)}`);
  }
}

function outArray(value: unknown, type: new (n: number) => ArrayBufferView, length: number, what: string): void {
  if (!(value instanceof type) || (value as unknown as { length: number }).length < length) {
    throw new TypeError(`MachSim: ${what} must be a ${type.name} of at least ${length} elements`);
  }
}

/**
 * The macOS backend over a fresh simulation, shaped like a case of
 * test/backends.ts so a suite that runs per backend can include it.
 */
export const simulatedDarwin = {
  name: 'darwin (simulated Mach calls)',
  make: (): DarwinBackend => new DarwinBackend(new MachSim()),
} as const;
