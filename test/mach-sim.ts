// A SIMULATION of the Mach VM calls the macOS backend makes, for testing it
// where there is no macOS. It is not xnu: it models what the backend relies
// on, and checks every argument the way the C prototypes type them.
//
// - The address space is real memory of this process (anonymous mmap through
//   the Linux libc bindings), aligned to the simulated page size (16 KiB by
//   default, as on Apple silicon), so views alias it exactly as on macOS.
// - mach_vm_remap(copy = TRUE) copies the bytes eagerly, and keeps a snapshot
//   of them as the "shared object" both ranges now refer to. A page counts as
//   private once it differs from that snapshot (written since), and as shared
//   while another range still refers to the snapshot: that is what
//   VM_REGION_TOP_INFO reports. A page counts as resident when it holds a
//   non-zero byte or was written (a write of equal bytes goes unnoticed).
// - Only what the backend does is simulated: whole-range deallocation,
//   VM_FLAGS_FIXED | VM_FLAGS_OVERWRITE exactly over one existing range, and
//   VM_REGION_TOP_INFO; anything else throws an Error naming the gap.
// - `fail(call, kr, k)` makes the k-th next call of `call` return `kr`
//   without doing anything, like a refusing kernel.
import type { MachCalls } from '../platform/mach.ts';
import {
  KERN_INVALID_ADDRESS,
  KERN_INVALID_ARGUMENT,
  KERN_NO_SPACE,
  KERN_SUCCESS,
  SM_COW,
  SM_EMPTY,
  SM_PRIVATE,
  TASK_VM_INFO,
  TASK_VM_INFO_LAYOUT,
  TOP_INFO,
  TRUE,
  VM_FLAGS_ANYWHERE,
  VM_FLAGS_OVERWRITE,
  VM_INHERIT_NONE,
  VM_PROT_ALL,
  VM_PROT_READ,
  VM_PROT_WRITE,
  VM_REGION_TOP_INFO,
} from '../platform/mach.ts';
import * as sys from '../platform/libc.ts';
import { DarwinBackend } from '../platform/darwin.ts';

/** MACH_SEND_INVALID_DEST (mach/message.h): what a call on a bad port returns. */
export const MACH_SEND_INVALID_DEST = 0x10000003;

/** The Mach calls, as names for `fail()` and `calls`. */
export type SimCall =
  | 'mach_vm_allocate'
  | 'mach_vm_deallocate'
  | 'mach_vm_remap'
  | 'mach_vm_region'
  | 'task_info';

/** Bits of the flags argument the simulation understands (the user tag lives in the top byte). */
const TAG_MASK = 0xff000000 | 0;
/** Beyond this the simulated task has no address space (47 bits, as on arm64 macOS). */
const ADDRESS_SPACE = 2 ** 47;

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

interface Snapshot {
  readonly id: number;
  readonly bytes: Uint8Array;
  refs: number;
}

interface Region {
  readonly start: bigint;
  readonly size: number;
  /** The anonymous mmap behind it (larger, for alignment). */
  readonly mapStart: bigint;
  readonly mapSize: number;
  readonly objId: number;
  readonly tag: number;
  shared: Snapshot | null;
}

/** One call as the simulation saw it, for tests that check arguments. */
export interface SimLogEntry {
  call: SimCall;
  args: Record<string, number | bigint>;
}

export class MachSim implements MachCalls {
  readonly taskSelf = 0x203;
  readonly pageSize: number;
  /** Total bytes the simulated task may map; beyond it calls return KERN_NO_SPACE. */
  limit = Number.POSITIVE_INFINITY;
  /** What mach_vm_remap reports as the new range's current protection. */
  remapProtection = VM_PROT_READ | VM_PROT_WRITE;
  /** Every call made, in order. */
  readonly log: SimLogEntry[] = [];
  /** Calls per name. */
  readonly calls = new Map<SimCall, number>();

  readonly #regions = new Map<bigint, Region>();
  readonly #faults = new Map<SimCall, { countdown: number; kr: number }>();
  #nextId = 0x1000;

  constructor(options: { pageSize?: number } = {}) {
    this.pageSize = options.pageSize ?? 16384;
  }

  /** The k-th next call (1 = the very next) of `call` returns `kr` and does nothing. */
  fail(call: SimCall, kr: number, k = 1): void {
    this.#faults.set(call, { countdown: k, kr });
  }

  /** Ranges mapped now. */
  get regionCount(): number {
    return this.#regions.size;
  }

  /** Bytes mapped now. */
  get mappedBytes(): number {
    let n = 0;
    for (const r of this.#regions.values()) n += r.size;
    return n;
  }

  /** Whether `[address, address + size)` is exactly one mapped range. */
  isMapped(address: bigint, size: number): boolean {
    const r = this.#regions.get(address);
    return r !== undefined && r.size === size;
  }

  /** Unmaps everything (end of a test). */
  dispose(): void {
    for (const r of this.#regions.values()) sys.munmap(r.mapStart, r.mapSize);
    this.#regions.clear();
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
    if ((flags & ~TAG_MASK) !== VM_FLAGS_ANYWHERE) {
      throw new Error(`MachSim: mach_vm_allocate flags 0x${(flags >>> 0).toString(16)} are not simulated`);
    }
    if (size === 0n) {
      address[0] = 0n;
      return KERN_SUCCESS;
    }
    const region = this.#map(this.#roundUp(size), flags & TAG_MASK);
    if (typeof region === 'number') return region;
    address[0] = region.start;
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
    const r = this.#regions.get(address);
    if (r === undefined) {
      if (this.#overlapping(address, this.#roundUp(size)).length === 0) return KERN_SUCCESS; // nothing there: xnu succeeds
      throw new Error('MachSim: deallocating part of a range is not simulated');
    }
    if (BigInt(r.size) !== this.#roundUp(size)) throw new Error('MachSim: deallocating part of a range is not simulated');
    this.#unmap(r);
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
    if (targetTask !== this.taskSelf || srcTask !== this.taskSelf) return MACH_SEND_INVALID_DEST;
    if (inheritance > VM_INHERIT_NONE) return KERN_INVALID_ARGUMENT;
    if (copy !== TRUE) throw new Error('MachSim: remapping without copy is not simulated');
    if (mask !== 0n) throw new Error('MachSim: remapping with an alignment mask is not simulated');
    const page = BigInt(this.pageSize);
    if (srcAddress % page !== 0n) throw new Error('MachSim: unaligned source addresses are not simulated');
    const length = this.#roundUp(size);
    const src = this.#containing(srcAddress, length);
    if (src === undefined) return KERN_INVALID_ADDRESS;
    // The source as it is now: the object both ranges will share.
    const bytes = new Uint8Array(this.view(srcAddress, Number(length))).slice();
    const snapshot: Snapshot = { id: this.#nextId++, bytes, refs: 0 };
    const kind = flags & ~TAG_MASK;
    let dst: Region;
    if (kind === VM_FLAGS_ANYWHERE) {
      const made = this.#map(length, flags & TAG_MASK);
      if (typeof made === 'number') return made;
      dst = made;
    } else if (kind === VM_FLAGS_OVERWRITE) {
      const at = targetAddress[0]!;
      const found = this.#regions.get(at);
      if (found === undefined || BigInt(found.size) !== length) {
        throw new Error('MachSim: VM_FLAGS_OVERWRITE is simulated only exactly over one existing range');
      }
      if (found === src) throw new Error('MachSim: remapping a range over itself is not simulated');
      dst = found;
    } else if (kind === 0) {
      return KERN_NO_SPACE; // VM_FLAGS_FIXED without OVERWRITE: the backend only uses it over its own ranges
    } else {
      throw new Error(`MachSim: mach_vm_remap flags 0x${(flags >>> 0).toString(16)} are not simulated`);
    }
    new Uint8Array(this.view(dst.start, Number(length))).set(bytes);
    this.#share(dst, snapshot);
    if (src.start === srcAddress && BigInt(src.size) === length) this.#share(src, snapshot);
    targetAddress[0] = dst.start;
    curProtection[0] = this.remapProtection;
    maxProtection[0] = VM_PROT_ALL;
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
    if (flavor !== VM_REGION_TOP_INFO) throw new Error(`MachSim: region flavor ${flavor} is not simulated`);
    if (infoCnt[0]! < TOP_INFO.count) return KERN_INVALID_ARGUMENT;
    let found: Region | undefined;
    for (const r of this.#regions.values()) {
      if (r.start + BigInt(r.size) > address[0]! && (found === undefined || r.start < found.start)) found = r;
    }
    if (found === undefined) return KERN_INVALID_ADDRESS;
    const { privatePages, sharedPages } = this.#pages(found);
    info[TOP_INFO.obj_id] = found.objId;
    info[TOP_INFO.ref_count] = found.shared === null ? 1 : found.shared.refs;
    info[TOP_INFO.private_pages_resident] = privatePages;
    info[TOP_INFO.shared_pages_resident] = sharedPages;
    info[TOP_INFO.share_mode] = found.shared !== null ? SM_COW : privatePages > 0 ? SM_PRIVATE : SM_EMPTY;
    infoCnt[0] = TOP_INFO.count;
    objectName[0] = 0; // MACH_PORT_NULL, as xnu returns
    address[0] = found.start;
    size[0] = BigInt(found.size);
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
    let resident = 0;
    for (const r of this.#regions.values()) {
      const p = this.#pages(r);
      resident += (p.privatePages + p.sharedPages) * this.pageSize;
    }
    const dv = new DataView(info.buffer, info.byteOffset, info.byteLength);
    dv.setBigUint64(L.virtual_size, BigInt(this.mappedBytes), true);
    dv.setInt32(L.region_count, this.#regions.size, true);
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
    if (this.#containing(address, BigInt(length)) === undefined) {
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

  /** A new range of `size` bytes (a multiple of the page), or the kern_return_t why not. */
  #map(size: bigint, tag: number): Region | number {
    if (size > BigInt(ADDRESS_SPACE) || this.mappedBytes + Number(size) > this.limit) return KERN_NO_SPACE;
    const n = Number(size);
    const mapSize = n + this.pageSize;
    let mapStart: bigint;
    try {
      mapStart = sys.mmap(null, mapSize, sys.PROT_READ | sys.PROT_WRITE, sys.MAP_PRIVATE | sys.MAP_ANONYMOUS | sys.MAP_NORESERVE, -1, 0);
    } catch {
      return KERN_NO_SPACE;
    }
    const page = BigInt(this.pageSize);
    const start = ((mapStart + page - 1n) / page) * page;
    const region: Region = { start, size: n, mapStart, mapSize, objId: this.#nextId++, tag, shared: null };
    this.#regions.set(start, region);
    return region;
  }

  #unmap(r: Region): void {
    this.#share(r, null);
    this.#regions.delete(r.start);
    sys.munmap(r.mapStart, r.mapSize);
  }

  #share(r: Region, snapshot: Snapshot | null): void {
    if (r.shared !== null) r.shared.refs--;
    r.shared = snapshot;
    if (snapshot !== null) snapshot.refs++;
  }

  /** The range holding all of `[address, address + length)`, if one does. */
  #containing(address: bigint, length: bigint): Region | undefined {
    for (const r of this.#regions.values()) {
      if (r.start <= address && address + length <= r.start + BigInt(r.size)) return r;
    }
    return undefined;
  }

  #overlapping(address: bigint, length: bigint): Region[] {
    return [...this.#regions.values()].filter((r) => r.start < address + length && address < r.start + BigInt(r.size));
  }

  /** Resident pages of `r`, split into private and shared (see the file header). */
  #pages(r: Region): { privatePages: number; sharedPages: number } {
    const now = new Uint8Array(this.view(r.start, r.size));
    const snap = r.shared;
    let privatePages = 0;
    let sharedPages = 0;
    for (let off = 0; off < r.size; off += this.pageSize) {
      const page = now.subarray(off, off + this.pageSize);
      if (snap === null) {
        if (!isZero(page)) privatePages++;
        continue;
      }
      const was = snap.bytes.subarray(off, off + this.pageSize);
      if (!Buffer.from(page).equals(Buffer.from(was))) privatePages++;
      else if (!isZero(was)) {
        if (snap.refs > 1) sharedPages++;
        else privatePages++;
      }
    }
    return { privatePages, sharedPages };
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
