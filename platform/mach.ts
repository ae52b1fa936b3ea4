// Mach VM calls for the macOS backend: constants, types and prototypes as the
// xnu headers write them, the `MachCalls` seam the backend calls through, the
// real bindings to libSystem (through koffi), and kern_return_t errors.
//
// The backend never calls koffi itself: it receives a `MachCalls` object, the
// real one from `loadMach()` (which opens libSystem, so only on macOS) or a
// simulation in tests. Out parameters are typed arrays laid out exactly as the
// C types: `mach_vm_address_t *` is a BigUint64Array, `vm_prot_t *` an
// Int32Array, `mach_msg_type_number_t *` and `mach_port_t *` Uint32Arrays.
//
// Mach results are kern_return_t values, not errno: they become SegmentError
// with the kern_return_t name as `code` (`KERN_NO_SPACE`), the number as
// `errno` and the call as `syscall`, never mixed with errno names. (The one
// exception lives in darwin.ts: an allocation with no room is ENOMEM, as the
// API promises everywhere, naming the kern_return_t in its message.)
import koffi from 'koffi';
import { SegmentError } from '../src/errors.ts';

// ---- constants ---------------------------------------------------------------
// macOS values (xnu osfmk/mach), the same on arm64 and x86_64, each block
// checked against the header it names at tag xnu-11417.101.15.

/** osfmk/mach/kern_return.h. */
export const KERN_SUCCESS = 0;
export const KERN_INVALID_ADDRESS = 1;
export const KERN_PROTECTION_FAILURE = 2;
export const KERN_NO_SPACE = 3;
export const KERN_INVALID_ARGUMENT = 4;
export const KERN_FAILURE = 5;
export const KERN_RESOURCE_SHORTAGE = 6;

/** Names of every kern_return_t in osfmk/mach/kern_return.h, by value. */
export const KERN_RETURN_NAMES: readonly string[] = [
  'KERN_SUCCESS', // 0
  'KERN_INVALID_ADDRESS',
  'KERN_PROTECTION_FAILURE',
  'KERN_NO_SPACE',
  'KERN_INVALID_ARGUMENT',
  'KERN_FAILURE', // 5
  'KERN_RESOURCE_SHORTAGE',
  'KERN_NOT_RECEIVER',
  'KERN_NO_ACCESS',
  'KERN_MEMORY_FAILURE',
  'KERN_MEMORY_ERROR', // 10
  'KERN_ALREADY_IN_SET',
  'KERN_NOT_IN_SET',
  'KERN_NAME_EXISTS',
  'KERN_ABORTED',
  'KERN_INVALID_NAME', // 15
  'KERN_INVALID_TASK',
  'KERN_INVALID_RIGHT',
  'KERN_INVALID_VALUE',
  'KERN_UREFS_OVERFLOW',
  'KERN_INVALID_CAPABILITY', // 20
  'KERN_RIGHT_EXISTS',
  'KERN_INVALID_HOST',
  'KERN_MEMORY_PRESENT',
  'KERN_MEMORY_DATA_MOVED',
  'KERN_MEMORY_RESTART_COPY', // 25
  'KERN_INVALID_PROCESSOR_SET',
  'KERN_POLICY_LIMIT',
  'KERN_INVALID_POLICY',
  'KERN_INVALID_OBJECT',
  'KERN_ALREADY_WAITING', // 30
  'KERN_DEFAULT_SET',
  'KERN_EXCEPTION_PROTECTED',
  'KERN_INVALID_LEDGER',
  'KERN_INVALID_MEMORY_CONTROL',
  'KERN_INVALID_SECURITY', // 35
  'KERN_NOT_DEPRESSED',
  'KERN_TERMINATED',
  'KERN_LOCK_SET_DESTROYED',
  'KERN_LOCK_UNSTABLE',
  'KERN_LOCK_OWNED', // 40
  'KERN_LOCK_OWNED_SELF',
  'KERN_SEMAPHORE_DESTROYED',
  'KERN_RPC_SERVER_TERMINATED',
  'KERN_RPC_TERMINATE_ORPHAN',
  'KERN_RPC_CONTINUE_ORPHAN', // 45
  'KERN_NOT_SUPPORTED',
  'KERN_NODE_DOWN',
  'KERN_NOT_WAITING',
  'KERN_OPERATION_TIMED_OUT',
  'KERN_CODESIGN_ERROR', // 50
  'KERN_POLICY_STATIC',
  'KERN_INSUFFICIENT_BUFFER_SIZE',
  'KERN_DENIED',
  'KERN_MISSING_KC',
  'KERN_INVALID_KC', // 55
  'KERN_NOT_FOUND',
];

/** MIG errors a Mach call can also return (osfmk/mach/mig_errors.h). */
export const MIG_ERROR_NAMES: ReadonlyMap<number, string> = new Map([
  [-300, 'MIG_TYPE_ERROR'],
  [-301, 'MIG_REPLY_MISMATCH'],
  [-302, 'MIG_REMOTE_ERROR'],
  [-303, 'MIG_BAD_ID'],
  [-304, 'MIG_BAD_ARGUMENTS'],
  [-305, 'MIG_NO_REPLY'],
  [-306, 'MIG_EXCEPTION'],
  [-307, 'MIG_ARRAY_TOO_LARGE'],
  [-308, 'MIG_SERVER_DIED'],
  [-309, 'MIG_TRAILER_ERROR'],
]);

/**
 * osfmk/mach/vm_statistics.h (VM_FLAGS_USER_REMAP is the same from xnu-6153 to
 * xnu-11417).
 * The kernel refuses a flag outside the mask of the call: mach_vm_allocate
 * checks VM_FLAGS_USER_ALLOCATE, which includes VM_FLAGS_ALIAS_MASK (a tag may
 * be passed), and mach_vm_remap checks VM_FLAGS_USER_REMAP, which does not
 * (osfmk/vm/vm_user.c, mach_vm_remap_external: KERN_INVALID_ARGUMENT). A
 * remapped entry copies the source entry, tag included.
 */
export const VM_FLAGS_FIXED = 0x0000;
export const VM_FLAGS_ANYWHERE = 0x0001;
export const VM_FLAGS_PURGABLE = 0x0002;
export const VM_FLAGS_4GB_CHUNK = 0x0004;
export const VM_FLAGS_RANDOM_ADDR = 0x0008;
export const VM_FLAGS_NO_CACHE = 0x0010;
export const VM_FLAGS_RESILIENT_CODESIGN = 0x0020;
export const VM_FLAGS_RESILIENT_MEDIA = 0x0040;
export const VM_FLAGS_PERMANENT = 0x0080;
export const VM_FLAGS_TPRO = 0x1000;
export const VM_FLAGS_OVERWRITE = 0x4000;
export const VM_FLAGS_SUPERPAGE_MASK = 0x70000;
export const VM_FLAGS_RETURN_DATA_ADDR = 0x100000;
export const VM_FLAGS_RETURN_4K_DATA_ADDR = 0x800000;
/** 0xFF000000, as a C int. */
export const VM_FLAGS_ALIAS_MASK = 0xff000000 | 0;
/** VM_FLAGS_HW is VM_FLAGS_TPRO. */
export const VM_FLAGS_USER_ALLOCATE =
  VM_FLAGS_FIXED |
  VM_FLAGS_ANYWHERE |
  VM_FLAGS_PURGABLE |
  VM_FLAGS_4GB_CHUNK |
  VM_FLAGS_RANDOM_ADDR |
  VM_FLAGS_NO_CACHE |
  VM_FLAGS_PERMANENT |
  VM_FLAGS_OVERWRITE |
  VM_FLAGS_SUPERPAGE_MASK |
  VM_FLAGS_TPRO |
  VM_FLAGS_ALIAS_MASK;
export const VM_FLAGS_USER_REMAP =
  VM_FLAGS_FIXED |
  VM_FLAGS_ANYWHERE |
  VM_FLAGS_RANDOM_ADDR |
  VM_FLAGS_OVERWRITE |
  VM_FLAGS_RETURN_DATA_ADDR |
  VM_FLAGS_RESILIENT_CODESIGN |
  VM_FLAGS_RESILIENT_MEDIA;
/** A user tag for `vmmap`: VM_MAKE_TAG(tag) is `tag << 24` (as a C int). */
export const VM_MEMORY_APPLICATION_SPECIFIC_1 = 240;
export function VM_MAKE_TAG(tag: number): number {
  return (tag << 24) | 0;
}

/**
 * vm_map_enter (osfmk/vm/vm_map.c) extends the map entry just below a new
 * anonymous allocation instead of making a new one when the two have the
 * same protection, inheritance and tag, the object below can grow, and
 * together they stay within NO_COALESCE_LIMIT: `(1024 * 128) - 1` bytes on
 * macOS (0 on the other Apple systems). Never where the map's page is smaller
 * than the kernel's (a 4 KiB task on a 16 KiB kernel, as under Rosetta).
 */
export const NO_COALESCE_LIMIT = 1024 * 128 - 1;

/** osfmk/mach/vm_inherit.h (VM_INHERIT_DEFAULT is VM_INHERIT_COPY). */
export const VM_INHERIT_SHARE = 0;
export const VM_INHERIT_COPY = 1;
export const VM_INHERIT_NONE = 2;
export const VM_INHERIT_DEFAULT = VM_INHERIT_COPY;

/** osfmk/mach/vm_prot.h. */
export const VM_PROT_NONE = 0x0;
export const VM_PROT_READ = 0x1;
export const VM_PROT_WRITE = 0x2;
export const VM_PROT_EXECUTE = 0x4;
export const VM_PROT_DEFAULT = VM_PROT_READ | VM_PROT_WRITE;
export const VM_PROT_ALL = VM_PROT_READ | VM_PROT_WRITE | VM_PROT_EXECUTE;

/** osfmk/mach/boolean.h (TRUE and FALSE). */
export const TRUE = 1;
export const FALSE = 0;

/** osfmk/mach/vm_region.h (the header is `#pragma pack(push, 4)`). */
export const VM_REGION_BASIC_INFO_64 = 9;
export const VM_REGION_TOP_INFO = 12;
export const VM_REGION_EXTENDED_INFO = 13;
/** Share modes (vm_region.h). */
export const SM_COW = 1;
export const SM_PRIVATE = 2;
export const SM_EMPTY = 3;
export const SM_SHARED = 4;
export const SM_TRUESHARED = 5;

/**
 * struct vm_region_top_info { unsigned int obj_id, ref_count,
 * private_pages_resident, shared_pages_resident; unsigned char share_mode; }
 * — 17 bytes, padded to 20: VM_REGION_TOP_INFO_COUNT is 5 natural_t.
 * Offsets are in 32-bit words.
 */
export const TOP_INFO = {
  count: 5,
  obj_id: 0,
  ref_count: 1,
  private_pages_resident: 2,
  shared_pages_resident: 3,
  /** The share_mode byte is the low byte of word 4 (little-endian). */
  share_mode: 4,
} as const;

/**
 * struct vm_region_extended_info { vm_prot_t protection; unsigned int
 * user_tag, pages_resident, pages_shared_now_private, pages_swapped_out,
 * pages_dirtied, ref_count; unsigned short shadow_depth; unsigned char
 * external_pager, share_mode; unsigned int pages_reusable; } — 36 bytes:
 * VM_REGION_EXTENDED_INFO_COUNT is 9 natural_t. Offsets in 32-bit words; the
 * kernel walks the entry page by page (vm_map_region_walk), counting in the
 * task's own page size (vm_self_region_page_shift), each page once, at the
 * first object of the chain that holds it.
 */
export const EXTENDED_INFO = {
  count: 9,
  protection: 0,
  user_tag: 1,
  pages_resident: 2,
  pages_shared_now_private: 3,
  pages_swapped_out: 4,
  pages_dirtied: 5,
  ref_count: 6,
  /** shadow_depth is the low half of word 7, external_pager and share_mode its two high bytes (little-endian). */
  shadow_depth: 7,
  pages_reusable: 8,
} as const;

/** osfmk/mach/task_info.h. */
export const TASK_VM_INFO = 22;

/**
 * struct task_vm_info (pack 4): byte offsets of the fields up to rev1, and
 * the counts in natural_t. TASK_VM_INFO_REV1_COUNT (38) covers phys_footprint;
 * the kernel fills as many revisions as the count allows.
 */
export const TASK_VM_INFO_LAYOUT = {
  rev0Count: 36,
  rev1Count: 38,
  rev2Count: 42,
  count: 93,
  virtual_size: 0,
  region_count: 8,
  page_size: 12,
  resident_size: 16,
  resident_size_peak: 24,
  internal: 48,
  external: 64,
  compressed: 120,
  phys_footprint: 144,
} as const;

// ---- types and prototypes ----------------------------------------------------

/**
 * The C types the prototypes use, as the xnu headers define them for user
 * space on `arch`: boolean_t is `int` on arm64 (mach/arm/boolean.h) and
 * `unsigned int` on x86_64 user space (mach/i386/boolean.h).
 */
export function machTypes(arch: string): ReadonlyArray<readonly [name: string, type: string]> {
  return [
    ['natural_t', 'unsigned int'],
    ['integer_t', 'int'],
    ['kern_return_t', 'int'],
    ['mach_error_t', 'kern_return_t'],
    ['mach_port_t', 'natural_t'],
    ['vm_map_t', 'mach_port_t'],
    ['vm_map_read_t', 'mach_port_t'],
    ['task_name_t', 'mach_port_t'],
    ['mach_vm_address_t', 'uint64_t'],
    ['mach_vm_offset_t', 'uint64_t'],
    ['mach_vm_size_t', 'uint64_t'],
    ['vm_size_t', 'uintptr_t'],
    ['vm_prot_t', 'int'],
    ['vm_inherit_t', 'unsigned int'],
    ['boolean_t', arch === 'x64' ? 'unsigned int' : 'int'],
    ['vm_region_flavor_t', 'int'],
    ['vm_region_info_t', 'int *'],
    ['task_flavor_t', 'natural_t'],
    ['task_info_t', 'integer_t *'],
    ['mach_msg_type_number_t', 'natural_t'],
  ];
}

/** The prototypes, as mach/mach_vm.h, mach/task.h and mach/mach_error.h declare them. */
export const MACH_PROTOTYPES = {
  mach_vm_allocate:
    'kern_return_t mach_vm_allocate(vm_map_t target, mach_vm_address_t *address, mach_vm_size_t size, int flags)',
  mach_vm_deallocate:
    'kern_return_t mach_vm_deallocate(vm_map_t target, mach_vm_address_t address, mach_vm_size_t size)',
  mach_vm_protect:
    'kern_return_t mach_vm_protect(vm_map_t target_task, mach_vm_address_t address, mach_vm_size_t size, ' +
    'boolean_t set_maximum, vm_prot_t new_protection)',
  mach_vm_remap:
    'kern_return_t mach_vm_remap(vm_map_t target_task, mach_vm_address_t *target_address, mach_vm_size_t size, ' +
    'mach_vm_offset_t mask, int flags, vm_map_t src_task, mach_vm_address_t src_address, boolean_t copy, ' +
    'vm_prot_t *cur_protection, vm_prot_t *max_protection, vm_inherit_t inheritance)',
  mach_vm_region:
    'kern_return_t mach_vm_region(vm_map_read_t target_task, mach_vm_address_t *address, mach_vm_size_t *size, ' +
    'vm_region_flavor_t flavor, vm_region_info_t info, mach_msg_type_number_t *infoCnt, mach_port_t *object_name)',
  task_info:
    'kern_return_t task_info(task_name_t target_task, task_flavor_t flavor, task_info_t task_info_out, ' +
    'mach_msg_type_number_t *task_info_outCnt)',
  mach_error_string: 'char *mach_error_string(mach_error_t error_value)',
} as const;

let typesDeclared = false;

/** Declares the Mach C types to koffi for this process's architecture (once). */
export function declareMachTypes(): void {
  if (typesDeclared) return;
  for (const [name, type] of machTypes(process.arch)) koffi.alias(name, type);
  typesDeclared = true;
}

// ---- the seam ----------------------------------------------------------------

/**
 * The Mach calls the macOS backend makes, with their C argument types; out
 * parameters are typed arrays of the C type (see the file header). Every call
 * returns a kern_return_t.
 */
export interface MachCalls {
  /** `mach_task_self_`: this task's port, read once. */
  readonly taskSelf: number;
  /**
   * `vm_page_size`: bytes per page of this task's map, the unit of addresses
   * and sizes (16384 on Apple silicon, 4096 on Intel and under Rosetta).
   */
  readonly pageSize: number;
  /**
   * `vm_kernel_page_size`: bytes per page of the kernel, the unit of every
   * page count the kernel reports (vm_region_top_info counts in PAGE_SIZE):
   * 16384 under Rosetta, where `pageSize` is 4096 (libsyscall/mach/mach_init.c
   * reads the two from different words of the comm page).
   */
  readonly kernelPageSize: number;
  mach_vm_allocate(target: number, address: BigUint64Array, size: bigint, flags: number): number;
  mach_vm_deallocate(target: number, address: bigint, size: bigint): number;
  mach_vm_protect(target: number, address: bigint, size: bigint, setMaximum: number, newProtection: number): number;
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
  ): number;
  mach_vm_region(
    targetTask: number,
    address: BigUint64Array,
    size: BigUint64Array,
    flavor: number,
    info: Int32Array,
    infoCnt: Uint32Array,
    objectName: Uint32Array,
  ): number;
  task_info(targetTask: number, flavor: number, info: Int32Array, infoCnt: Uint32Array): number;
  mach_error_string(kr: number): string;
  /** Not a Mach call: an ArrayBuffer aliasing `length` bytes of this task's memory at `address`. */
  view(address: bigint, length: number): ArrayBuffer;
}

/** Where libSystem lives (in the dyld shared cache on macOS 11+, which dlopen still finds). */
export const LIBSYSTEM = '/usr/lib/libSystem.B.dylib';

/**
 * The real Mach calls, from libSystem through koffi.
 *
 * @throws Error when this is not macOS or libSystem does not load.
 */
export function loadMach(): MachCalls {
  if (process.platform !== 'darwin') {
    throw new Error(`Mach VM calls exist only on macOS, not on ${process.platform}`);
  }
  const lib = koffi.load(LIBSYSTEM);
  declareMachTypes();
  const p = MACH_PROTOTYPES;
  const calls = {
    mach_vm_allocate: lib.func(p.mach_vm_allocate),
    mach_vm_deallocate: lib.func(p.mach_vm_deallocate),
    mach_vm_protect: lib.func(p.mach_vm_protect),
    mach_vm_remap: lib.func(p.mach_vm_remap),
    mach_vm_region: lib.func(p.mach_vm_region),
    task_info: lib.func(p.task_info),
    mach_error_string: lib.func(p.mach_error_string),
  } as unknown as Omit<MachCalls, 'taskSelf' | 'pageSize' | 'kernelPageSize' | 'view'>;
  // mach_task_self() is a macro over this global, set when libSystem starts.
  const taskSelf = Number(koffi.decode(lib.symbol('mach_task_self_'), 'mach_port_t'));
  const pageSize = Number(koffi.decode(lib.symbol('vm_page_size'), 'vm_size_t'));
  const kernelPageSize = Number(koffi.decode(lib.symbol('vm_kernel_page_size'), 'vm_size_t'));
  return {
    ...calls,
    taskSelf,
    pageSize,
    kernelPageSize,
    view: (address, length) => koffi.view(address as unknown as never, length) as ArrayBuffer,
  };
}

// ---- errors --------------------------------------------------------------------

/** The name of a kern_return_t (or MIG error), e.g. 3 → `'KERN_NO_SPACE'`. */
export function kernReturnName(kr: number): string {
  if (Number.isInteger(kr) && kr >= 0 && kr < KERN_RETURN_NAMES.length) return KERN_RETURN_NAMES[kr]!;
  const mig = MIG_ERROR_NAMES.get(kr);
  if (mig !== undefined) return mig;
  return `KERN_RETURN_0x${(kr >>> 0).toString(16).padStart(8, '0')}`;
}

/**
 * The error for a failed Mach call, worded like Node.js system errors with
 * the kernel's own text at the end:
 * `mach_vm_allocate KERN_NO_SPACE: cannot allocate 4096 bytes ((os/kern) no space available)`.
 */
export function machError(
  call: string,
  kr: number,
  detail: string,
  strings: Pick<MachCalls, 'mach_error_string'>,
): SegmentError {
  const code = kernReturnName(kr);
  let text = '';
  try {
    text = strings.mach_error_string(kr);
  } catch {
    // The text is a courtesy; the code says it all.
  }
  return new SegmentError(`${call} ${code}: ${detail}${text ? ` (${text})` : ''}`, code, kr, call);
}
