// The macOS backend. Off macOS it runs over a SIMULATION of the Mach calls
// (test/mach-sim.ts): that checks the calls the backend makes, their argument
// types and its error paths, not the xnu kernel. The constant and type tables
// are checked against the values in the xnu headers.
import { describe, it, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import koffi from 'koffi';
import { Segment, SegmentError } from '../src/index.ts';
import { setBackend } from '../src/segment.ts';
import { chooseBackend } from '../src/backend.ts';
import { loadBackend } from '../src/load.ts';
import { DarwinBackend, type DarwinSegment } from '../platform/darwin.ts';
import * as mach from '../platform/mach.ts';
import { MachSim, MACH_SEND_INVALID_DEST } from './mach-sim.ts';
import { assertBytes } from './backends.ts';

const simulated = process.platform === 'linux' ? false : 'the Mach simulation runs on Linux memory';

function bytesOf(seg: Segment): Uint8Array {
  return new Uint8Array(seg.buffer);
}

function pattern(length: number, seed: number): Uint8Array {
  const out = new Uint8Array(length);
  for (let i = 0; i < length; i++) out[i] = (i * 131 + seed * 17 + (i >>> 12) * 7 + 1) & 0xff;
  return out;
}

/** The backend's view of a segment, for its macOS extras (regions()). */
function handleOf(seg: Segment, pageSize: number): DarwinSegment {
  const page = BigInt(pageSize);
  return { addr: seg.address, length: Number(((BigInt(seg.byteLength) + page - 1n) / page) * page), released: false };
}

function machFailure(code: string, errno: number, syscall: string, text?: string) {
  return (err: unknown): boolean => {
    assert.ok(err instanceof SegmentError, `expected a SegmentError, got ${String(err)}`);
    assert.equal(err.code, code);
    assert.equal(err.errno, errno);
    assert.equal(err.syscall, syscall);
    assert.ok(err.message.startsWith(`${syscall} ${code}: `), err.message);
    if (text !== undefined) assert.ok(err.message.endsWith(`(${text})`), err.message);
    return true;
  };
}

describe('Mach constants and types, checked against the xnu headers', () => {
  it('numbers kern_return_t values as osfmk/mach/kern_return.h does', () => {
    const header: [string, number][] = [
      ['KERN_SUCCESS', 0],
      ['KERN_INVALID_ADDRESS', 1],
      ['KERN_PROTECTION_FAILURE', 2],
      ['KERN_NO_SPACE', 3],
      ['KERN_INVALID_ARGUMENT', 4],
      ['KERN_FAILURE', 5],
      ['KERN_RESOURCE_SHORTAGE', 6],
      ['KERN_NOT_RECEIVER', 7],
      ['KERN_NO_ACCESS', 8],
      ['KERN_MEMORY_FAILURE', 9],
      ['KERN_MEMORY_ERROR', 10],
      ['KERN_ABORTED', 14],
      ['KERN_INVALID_TASK', 16],
      ['KERN_INVALID_VALUE', 18],
      ['KERN_TERMINATED', 37],
      ['KERN_NOT_SUPPORTED', 46],
      ['KERN_OPERATION_TIMED_OUT', 49],
      ['KERN_CODESIGN_ERROR', 50],
      ['KERN_DENIED', 53],
      ['KERN_NOT_FOUND', 56],
    ];
    for (const [name, value] of header) assert.equal(mach.kernReturnName(value), name, `${name} = ${value}`);
    assert.equal(mach.KERN_RETURN_NAMES.length, 57);
    assert.equal(new Set(mach.KERN_RETURN_NAMES).size, 57);
    assert.equal(mach.KERN_SUCCESS, 0);
    assert.equal(mach.KERN_INVALID_ADDRESS, 1);
    assert.equal(mach.KERN_PROTECTION_FAILURE, 2);
    assert.equal(mach.KERN_NO_SPACE, 3);
    assert.equal(mach.KERN_INVALID_ARGUMENT, 4);
    assert.equal(mach.KERN_FAILURE, 5);
    assert.equal(mach.KERN_RESOURCE_SHORTAGE, 6);
  });

  it('names MIG errors and spells out values it has no name for', () => {
    assert.equal(mach.kernReturnName(-304), 'MIG_BAD_ARGUMENTS');
    assert.equal(mach.kernReturnName(-308), 'MIG_SERVER_DIED');
    assert.equal(mach.kernReturnName(MACH_SEND_INVALID_DEST), 'KERN_RETURN_0x10000003');
    assert.equal(mach.kernReturnName(57), 'KERN_RETURN_0x00000039');
    assert.equal(mach.kernReturnName(-1), 'KERN_RETURN_0xffffffff');
  });

  it('uses the VM_FLAGS, VM_INHERIT and VM_PROT values of vm_statistics.h, vm_inherit.h and vm_prot.h', () => {
    assert.equal(mach.VM_FLAGS_FIXED, 0x0);
    assert.equal(mach.VM_FLAGS_ANYWHERE, 0x1);
    assert.equal(mach.VM_FLAGS_OVERWRITE, 0x4000);
    assert.equal(mach.VM_MEMORY_APPLICATION_SPECIFIC_1, 240);
    // VM_MAKE_TAG(240) = 240 << 24, as a C int.
    assert.equal(mach.VM_MAKE_TAG(240), -268435456);
    assert.equal(mach.VM_MAKE_TAG(240) >>> 0, 0xf0000000);
    assert.equal(mach.VM_INHERIT_SHARE, 0);
    assert.equal(mach.VM_INHERIT_COPY, 1);
    assert.equal(mach.VM_INHERIT_NONE, 2);
    assert.equal(mach.VM_INHERIT_DEFAULT, mach.VM_INHERIT_COPY);
    assert.equal(mach.VM_PROT_NONE, 0);
    assert.equal(mach.VM_PROT_READ, 1);
    assert.equal(mach.VM_PROT_WRITE, 2);
    assert.equal(mach.VM_PROT_EXECUTE, 4);
    assert.equal(mach.VM_PROT_DEFAULT, 3);
    assert.equal(mach.VM_PROT_ALL, 7);
    assert.equal(mach.TRUE, 1);
    assert.equal(mach.FALSE, 0);
    assert.equal(mach.VM_REGION_BASIC_INFO_64, 9);
    assert.equal(mach.VM_REGION_TOP_INFO, 12);
    assert.equal(mach.VM_REGION_EXTENDED_INFO, 13);
    assert.deepEqual([mach.SM_COW, mach.SM_PRIVATE, mach.SM_EMPTY, mach.SM_SHARED], [1, 2, 3, 4]);
    assert.equal(mach.TASK_VM_INFO, 22);
  });

  it('builds the user flag masks of vm_statistics.h from its flag values, the remap mask without the tag bits', () => {
    // osfmk/mach/vm_statistics.h at xnu-11417.101.15.
    const flags: [string, number][] = [
      ['VM_FLAGS_PURGABLE', 0x2], ['VM_FLAGS_4GB_CHUNK', 0x4], ['VM_FLAGS_RANDOM_ADDR', 0x8], ['VM_FLAGS_NO_CACHE', 0x10],
      ['VM_FLAGS_RESILIENT_CODESIGN', 0x20], ['VM_FLAGS_RESILIENT_MEDIA', 0x40], ['VM_FLAGS_PERMANENT', 0x80],
      ['VM_FLAGS_TPRO', 0x1000], ['VM_FLAGS_SUPERPAGE_MASK', 0x70000], ['VM_FLAGS_RETURN_DATA_ADDR', 0x100000],
      ['VM_FLAGS_RETURN_4K_DATA_ADDR', 0x800000],
    ];
    for (const [name, value] of flags) assert.equal((mach as unknown as Record<string, number>)[name], value, name);
    assert.equal(mach.VM_FLAGS_ALIAS_MASK >>> 0, 0xff000000);
    assert.equal(mach.VM_FLAGS_USER_REMAP, 0x104069);
    assert.equal(mach.VM_FLAGS_USER_ALLOCATE >>> 0, 0xff07509f);
    assert.equal(mach.VM_FLAGS_USER_REMAP & mach.VM_FLAGS_ALIAS_MASK, 0);
    assert.equal(mach.VM_MAKE_TAG(240) & ~mach.VM_FLAGS_USER_ALLOCATE, 0);
    // osfmk/vm/vm_map.c, XNU_TARGET_OS_OSX.
    assert.equal(mach.NO_COALESCE_LIMIT, 128 * 1024 - 1);
    assert.equal(mach.SM_TRUESHARED, 5);
  });

  it('lays out vm_region_extended_info as osfmk/mach/vm_region.h does', () => {
    // protection, user_tag, pages_resident, pages_shared_now_private, pages_swapped_out,
    // pages_dirtied, ref_count (4 bytes each), shadow_depth (2), external_pager, share_mode (1 each), pages_reusable (4).
    const X = mach.EXTENDED_INFO;
    assert.deepEqual(
      [X.protection, X.user_tag, X.pages_resident, X.pages_shared_now_private, X.pages_swapped_out, X.pages_dirtied, X.ref_count, X.shadow_depth, X.pages_reusable],
      [0, 1, 2, 3, 4, 5, 6, 7, 8],
    );
    assert.equal(X.count, (7 * 4 + 2 + 1 + 1 + 4) / 4);
  });

  it('lays out vm_region_top_info and task_vm_info as the headers do under #pragma pack(4)', () => {
    // Field sizes in header order; offsets follow from pack(4) (no member aligned past 4).
    const layout = (fields: [string, number][]) => {
      const at = new Map<string, number>();
      let off = 0;
      for (const [name, size] of fields) {
        off = Math.ceil(off / Math.min(size, 4)) * Math.min(size, 4);
        at.set(name, off);
        off += size;
      }
      return { at, size: Math.ceil(off / 4) * 4 };
    };
    const top = layout([
      ['obj_id', 4],
      ['ref_count', 4],
      ['private_pages_resident', 4],
      ['shared_pages_resident', 4],
      ['share_mode', 1],
    ]);
    assert.equal(top.size / 4, mach.TOP_INFO.count);
    for (const f of ['obj_id', 'ref_count', 'private_pages_resident', 'shared_pages_resident', 'share_mode'] as const) {
      assert.equal(top.at.get(f), mach.TOP_INFO[f] * 4, f);
    }
    const u64 = (name: string): [string, number] => [name, 8];
    const rev0: [string, number][] = [
      u64('virtual_size'),
      ['region_count', 4],
      ['page_size', 4],
      ...['resident_size', 'resident_size_peak', 'device', 'device_peak', 'internal', 'internal_peak', 'external',
        'external_peak', 'reusable', 'reusable_peak', 'purgeable_volatile_pmap', 'purgeable_volatile_resident',
        'purgeable_volatile_virtual', 'compressed', 'compressed_peak', 'compressed_lifetime'].map(u64),
    ];
    const rev1 = [...rev0, u64('phys_footprint')];
    const rev2 = [...rev1, u64('min_address'), u64('max_address')];
    const rev7 = [...rev2, ...Array.from({ length: 21 }, (_, i) => u64(`ledger${i}`)), u64('limit_bytes_remaining'),
      ['decompressions', 4] as [string, number], u64('ledger_swapins'), u64('neural_total'), u64('neural_peak')];
    const L = mach.TASK_VM_INFO_LAYOUT;
    assert.equal(layout(rev0).size / 4, L.rev0Count);
    assert.equal(layout(rev1).size / 4, L.rev1Count);
    assert.equal(layout(rev2).size / 4, L.rev2Count);
    assert.equal(layout(rev7).size / 4, L.count);
    const at = layout(rev1).at;
    for (const f of ['virtual_size', 'region_count', 'page_size', 'resident_size', 'resident_size_peak', 'internal', 'external', 'compressed', 'phys_footprint'] as const) {
      assert.equal(at.get(f), L[f], f);
    }
  });

  it('types boolean_t as int on arm64 and as unsigned int on x86_64 user space', () => {
    const types = (arch: string) => new Map(mach.machTypes(arch));
    assert.equal(types('arm64').get('boolean_t'), 'int');
    assert.equal(types('x64').get('boolean_t'), 'unsigned int');
    for (const arch of ['arm64', 'x64']) {
      const t = types(arch);
      assert.equal(t.get('kern_return_t'), 'int');
      assert.equal(t.get('vm_prot_t'), 'int');
      assert.equal(t.get('vm_inherit_t'), 'unsigned int');
      assert.equal(t.get('mach_port_t'), 'natural_t');
      assert.equal(t.get('natural_t'), 'unsigned int');
      assert.equal(t.get('mach_vm_address_t'), 'uint64_t');
      assert.equal(t.get('mach_vm_size_t'), 'uint64_t');
    }
  });

  it('declares the types to koffi with the sizes and signedness of the headers', () => {
    mach.declareMachTypes();
    mach.declareMachTypes(); // twice is harmless
    const expect: [string, string][] = [
      ['natural_t', 'UInt32'],
      ['mach_port_t', 'UInt32'],
      ['vm_map_t', 'UInt32'],
      ['task_name_t', 'UInt32'],
      ['mach_vm_address_t', 'UInt64'],
      ['mach_vm_size_t', 'UInt64'],
      ['mach_vm_offset_t', 'UInt64'],
      ['vm_size_t', 'UInt64'],
      ['vm_prot_t', 'Int32'],
      ['vm_inherit_t', 'UInt32'],
      ['kern_return_t', 'Int32'],
      ['mach_error_t', 'Int32'],
      ['vm_region_flavor_t', 'Int32'],
      ['task_flavor_t', 'UInt32'],
      ['mach_msg_type_number_t', 'UInt32'],
      ['boolean_t', process.arch === 'x64' ? 'UInt32' : 'Int32'],
    ];
    for (const [name, primitive] of expect) {
      const t = koffi.type(name) as unknown as { primitive: string; size: number };
      assert.equal(t.primitive, primitive, name);
      assert.equal(t.size, primitive.endsWith('64') ? 8 : 4, name);
    }
  });

  it('writes prototypes koffi can parse, one per Mach call the backend makes', () => {
    mach.declareMachTypes();
    assert.match(mach.MACH_PROTOTYPES.mach_vm_protect, /boolean_t set_maximum, vm_prot_t new_protection\)$/);
    for (const [name, proto] of Object.entries(mach.MACH_PROTOTYPES)) {
      assert.match(proto, new RegExp(`^\\w+ \\*?${name}\\(`), name);
      // Parsed under another name: a prototype registers its name as a type.
      assert.doesNotThrow(() => koffi.proto(proto.replace(`${name}(`, `parsed_${name}(`)), name);
    }
    assert.match(mach.MACH_PROTOTYPES.mach_vm_remap, /boolean_t copy, vm_prot_t \*cur_protection, vm_prot_t \*max_protection, vm_inherit_t inheritance\)$/);
  });

  it('refuses to load the real Mach calls anywhere but macOS', { skip: process.platform === 'darwin' && 'this is macOS' }, () => {
    assert.throws(() => new DarwinBackend(), /only on macOS/);
    assert.throws(() => mach.loadMach(), /only on macOS/);
  });
});

describe('DarwinBackend over the simulated Mach calls', { skip: simulated }, () => {
  let sim = new MachSim();
  let backend = new DarwinBackend(sim);
  let page = backend.pageSize;

  function fresh(pageSize = 16384): DarwinBackend {
    sim.dispose();
    sim = new MachSim({ pageSize });
    backend = new DarwinBackend(sim);
    page = backend.pageSize;
    setBackend(backend);
    return backend;
  }

  before(() => fresh());
  afterEach(() => fresh());
  after(() => {
    sim.dispose();
    // Back to the backend this process would pick, for whatever runs next.
    setBackend(loadBackend(chooseBackend(process.platform, process.env.MEMFORK_BACKEND).name));
  });

  describe('create()', () => {
    it('takes its page size from vm_page_size, 16 KiB or 4 KiB', () => {
      assert.equal(backend.pageSize, 16384);
      assert.equal(fresh(4096).pageSize, 4096);
      assert.throws(() => new DarwinBackend({ ...sim, pageSize: 12288 } as unknown as MachSim), /not a power of two/);
    });

    it('allocates zero-filled, page-aligned memory with mach_vm_allocate(VM_FLAGS_ANYWHERE)', () => {
      using seg = Segment.create(3 * page + 5);
      assertBytes(bytesOf(seg), new Uint8Array(3 * page + 5));
      assert.equal(seg.address % BigInt(page), 0n);
      const call = sim.log.find((c) => c.call === 'mach_vm_allocate')!;
      assert.equal(call.args.target, sim.taskSelf);
      // The segment, and a guard page after it.
      assert.equal(call.args.size, BigInt(5 * page));
      assert.equal((call.args.flags as number) & 0xffffff, mach.VM_FLAGS_ANYWHERE);
      assert.equal(call.args.flags, mach.VM_FLAGS_ANYWHERE | mach.VM_MAKE_TAG(240));
      assert.ok(sim.isMapped(seg.address, 4 * page));
      assert.deepEqual(
        sim.entries(seg.address, 5 * page).map((e) => [e.end - e.start, e.prot, e.tag]),
        [[BigInt(4 * page), mach.VM_PROT_DEFAULT, 240], [BigInt(page), mach.VM_PROT_NONE, 240]],
      );
    });

    it('throws SegmentError ENOMEM naming KERN_NO_SPACE and the kernel text when mach_vm_allocate has no space', () => {
      sim.fail('mach_vm_allocate', mach.KERN_NO_SPACE);
      assert.throws(() => Segment.create(page), (err: unknown) => {
        assert.ok(err instanceof SegmentError, `expected a SegmentError, got ${String(err)}`);
        assert.equal(err.code, 'ENOMEM');
        assert.equal(err.errno, mach.KERN_NO_SPACE);
        assert.equal(err.syscall, 'mach_vm_allocate');
        assert.equal(err.message, `mach_vm_allocate ENOMEM: cannot allocate ${page} bytes (KERN_NO_SPACE: (os/kern) no space available)`);
        return true;
      });
      assert.equal(sim.regionCount, 0);
    });

    it('throws SegmentError ENOMEM naming KERN_RESOURCE_SHORTAGE when mach_vm_allocate runs short', () => {
      sim.fail('mach_vm_allocate', mach.KERN_RESOURCE_SHORTAGE);
      assert.throws(() => Segment.create(3 * page), (err: unknown) => {
        assert.ok(err instanceof SegmentError, `expected a SegmentError, got ${String(err)}`);
        assert.equal(err.code, 'ENOMEM');
        assert.equal(err.errno, mach.KERN_RESOURCE_SHORTAGE);
        assert.equal(err.syscall, 'mach_vm_allocate');
        assert.equal(err.message, `mach_vm_allocate ENOMEM: cannot allocate ${3 * page} bytes (KERN_RESOURCE_SHORTAGE: (os/kern) resource shortage)`);
        return true;
      });
      assert.equal(sim.regionCount, 0);
    });

    it('names the kern_return_t alone when mach_error_string has no text for it', () => {
      class Textless extends MachSim {
        override mach_error_string(): string {
          throw new Error('no text');
        }
      }
      sim.dispose();
      sim = new Textless();
      setBackend(new DarwinBackend(sim));
      sim.fail('mach_vm_allocate', mach.KERN_NO_SPACE);
      assert.throws(() => Segment.create(page), {
        code: 'ENOMEM',
        message: `mach_vm_allocate ENOMEM: cannot allocate ${page} bytes (KERN_NO_SPACE)`,
      });
    });

    it('reports a size beyond the address space as ENOMEM with the Mach result in the message, and the process goes on', () => {
      for (const n of [2 ** 52, Number.MAX_SAFE_INTEGER - 4095]) {
        const rounded = Math.ceil(n / page) * page;
        assert.throws(() => Segment.create(n), (err: unknown) => {
          assert.ok(err instanceof SegmentError, `expected a SegmentError, got ${String(err)}`);
          assert.equal(err.code, 'ENOMEM');
          assert.equal(err.errno, mach.KERN_NO_SPACE);
          assert.equal(err.syscall, 'mach_vm_allocate');
          assert.equal(err.message, `mach_vm_allocate ENOMEM: cannot allocate ${rounded} bytes (KERN_NO_SPACE: (os/kern) no space available)`);
          return true;
        });
      }
      using seg = Segment.create(page);
      bytesOf(seg)[0] = 1;
      assert.equal(bytesOf(seg)[0], 1);
    });

    it('keeps the kern_return_t name as the code for every other allocation failure, even ones xnu does not list', () => {
      for (const [kr, code] of [
        [mach.KERN_INVALID_ARGUMENT, 'KERN_INVALID_ARGUMENT'],
        [mach.KERN_FAILURE, 'KERN_FAILURE'],
        [-304, 'MIG_BAD_ARGUMENTS'],
        [MACH_SEND_INVALID_DEST, 'KERN_RETURN_0x10000003'],
      ] as const) {
        sim.fail('mach_vm_allocate', kr);
        assert.throws(() => Segment.create(page), machFailure(code, kr, 'mach_vm_allocate'));
      }
    });

    it('reports a clone the task has no room for as ENOMEM, and keeps KERN_NO_SPACE as the code when the remap itself has none', () => {
      using a = Segment.create(page);
      sim.limit = sim.mappedBytes;
      assert.throws(() => a.clone(), { code: 'ENOMEM', errno: mach.KERN_NO_SPACE, syscall: 'mach_vm_allocate' });
      sim.limit = Number.POSITIVE_INFINITY;
      const entries = sim.regionCount;
      sim.fail('mach_vm_remap', mach.KERN_NO_SPACE);
      assert.throws(() => a.clone(), machFailure('KERN_NO_SPACE', 3, 'mach_vm_remap', '(os/kern) no space available'));
      assert.equal(sim.regionCount, entries);
    });
  });

  describe('clone()', () => {
    it('remaps the source copy-on-write over a guarded reservation: FIXED | OVERWRITE without a tag, copy TRUE, VM_INHERIT_DEFAULT, same task', () => {
      using a = Segment.create(2 * page);
      using b = a.clone();
      const call = sim.log.find((c) => c.call === 'mach_vm_remap')!;
      assert.deepEqual(call.args, {
        target_task: sim.taskSelf,
        target_address: b.address,
        size: BigInt(2 * page),
        mask: 0n,
        flags: mach.VM_FLAGS_FIXED | mach.VM_FLAGS_OVERWRITE,
        src_task: sim.taskSelf,
        src_address: a.address,
        copy: mach.TRUE,
        inheritance: mach.VM_INHERIT_DEFAULT,
      });
      assert.notEqual(b.address, a.address);
      assert.equal(b.address % BigInt(page), 0n);
      // The remapped entry copies the source's tag; the guard follows it.
      assert.deepEqual(
        sim.entries(b.address, 3 * page).map((e) => [e.end - e.start, e.prot, e.tag]),
        [[BigInt(2 * page), mach.VM_PROT_DEFAULT, 240], [BigInt(page), mach.VM_PROT_NONE, 240]],
      );
    });

    it('passes mach_vm_remap no flag outside VM_FLAGS_USER_REMAP, which the kernel refuses', () => {
      using a = Segment.from(pattern(page, 9));
      using b = a.clone();
      a.restore(b);
      const remaps = sim.log.filter((c) => c.call === 'mach_vm_remap');
      assert.equal(remaps.length, 2);
      for (const c of remaps) assert.equal((c.args.flags as number) & ~mach.VM_FLAGS_USER_REMAP, 0);
      // What the kernel does with a tag in the remap flags (vm_user.c).
      const reply = new BigUint64Array(1);
      const kr = sim.mach_vm_remap(sim.taskSelf, reply, BigInt(page), 0n, mach.VM_FLAGS_ANYWHERE | mach.VM_MAKE_TAG(240),
        sim.taskSelf, a.address, mach.TRUE, new Int32Array(1), new Int32Array(1), mach.VM_INHERIT_DEFAULT);
      assert.equal(kr, mach.KERN_INVALID_ARGUMENT);
    });

    it('leaves the origin unchanged after a write to the clone, and the clone after a write to the origin', () => {
      const n = 3 * page + 5;
      using a = Segment.from(pattern(n, 1));
      using b = a.clone();
      assertBytes(bytesOf(b), pattern(n, 1));
      bytesOf(b).fill(9, page, 2 * page);
      assertBytes(bytesOf(a), pattern(n, 1), 'origin');
      bytesOf(a)[n - 1] ^= 0xff;
      assert.equal(bytesOf(b)[n - 1], pattern(n, 1)[n - 1]);
      using c = b.clone();
      using d = a.clone();
      bytesOf(c)[0] = 77;
      assert.notEqual(bytesOf(b)[0], 77);
      assert.notEqual(bytesOf(d)[0], 77);
      assert.equal(bytesOf(d)[n - 1], bytesOf(a)[n - 1]);
    });

    it('keeps the source unchanged and usable when the remap fails', () => {
      using a = Segment.from(pattern(2 * page, 2));
      const regions = sim.regionCount;
      sim.fail('mach_vm_remap', mach.KERN_RESOURCE_SHORTAGE);
      assert.throws(() => a.clone(), machFailure('KERN_RESOURCE_SHORTAGE', 6, 'mach_vm_remap', '(os/kern) resource shortage'));
      assert.equal(sim.regionCount, regions);
      assertBytes(bytesOf(a), pattern(2 * page, 2));
      using b = a.clone();
      assertBytes(bytesOf(b), pattern(2 * page, 2));
    });

    it('throws KERN_PROTECTION_FAILURE and unmaps the clone when it would not be writable', () => {
      using a = Segment.create(page);
      sim.remapProtection = mach.VM_PROT_READ;
      assert.throws(() => a.clone(), machFailure('KERN_PROTECTION_FAILURE', 2, 'mach_vm_remap'));
      assert.equal(sim.regionCount, 2);
      assert.equal(backend.memory().mappings, 2);
    });

    it('unmaps the reservation when its guard page cannot be made', () => {
      using a = Segment.create(page);
      sim.fail('mach_vm_protect', mach.KERN_PROTECTION_FAILURE);
      assert.throws(() => a.clone(), machFailure('KERN_PROTECTION_FAILURE', 2, 'mach_vm_protect'));
      sim.fail('mach_vm_protect', mach.KERN_FAILURE);
      assert.throws(() => Segment.create(page), machFailure('KERN_FAILURE', 5, 'mach_vm_protect'));
      assert.equal(sim.regionCount, 2);
    });
  });

  describe('restore()', () => {
    it('remaps the source over the target at its own address with VM_FLAGS_FIXED | VM_FLAGS_OVERWRITE', () => {
      using a = Segment.from(pattern(2 * page, 3));
      using b = a.clone();
      bytesOf(b).fill(5);
      const view = new Uint8Array(a.view(page, page));
      const buffer = a.buffer;
      const at = a.address;
      a.restore(b);
      assert.equal(a.address, at);
      assert.equal(a.buffer, buffer);
      assertBytes(view, new Uint8Array(page).fill(5), 'view after restore');
      const call = sim.log.filter((c) => c.call === 'mach_vm_remap').at(-1)!;
      assert.equal(call.args.target_address, at);
      assert.equal(call.args.src_address, b.address);
      assert.equal(call.args.flags, mach.VM_FLAGS_FIXED | mach.VM_FLAGS_OVERWRITE);
      assert.equal(call.args.copy, mach.TRUE);
      // Independent again.
      bytesOf(a)[0] = 1;
      assert.equal(bytesOf(b)[0], 5);
      bytesOf(b)[1] = 2;
      assert.equal(bytesOf(a)[1], 5);
    });

    it('throws KERN_PROTECTION_FAILURE when the restored pages come back not writable', () => {
      using a = Segment.from(pattern(page, 4));
      using b = a.clone();
      sim.remapProtection = mach.VM_PROT_READ;
      assert.throws(() => a.restore(b), machFailure('KERN_PROTECTION_FAILURE', 2, 'mach_vm_remap'));
    });

    it('leaves both segments as they were when the remap fails', () => {
      using a = Segment.from(pattern(page, 4));
      using b = Segment.from(pattern(page, 5));
      sim.fail('mach_vm_remap', mach.KERN_INVALID_ADDRESS);
      assert.throws(() => a.restore(b), machFailure('KERN_INVALID_ADDRESS', 1, 'mach_vm_remap', '(os/kern) invalid address'));
      assertBytes(bytesOf(a), pattern(page, 4));
      assertBytes(bytesOf(b), pattern(page, 5));
    });
  });

  describe('close()', () => {
    it('deallocates exactly the range it allocated, and detaches views first', () => {
      const seg = Segment.create(2 * page);
      const at = seg.address;
      const buffer = seg.buffer;
      seg.close();
      assert.equal(buffer.byteLength, 0);
      const call = sim.log.find((c) => c.call === 'mach_vm_deallocate')!;
      assert.deepEqual(call.args, { target: sim.taskSelf, address: at, size: BigInt(3 * page) });
      assert.equal(sim.regionCount, 0);
    });

    it('reports a failed deallocation and retries it on the next close()', () => {
      const seg = Segment.create(page);
      sim.fail('mach_vm_deallocate', mach.KERN_INVALID_ARGUMENT);
      assert.throws(() => seg.close(), machFailure('KERN_INVALID_ARGUMENT', 4, 'mach_vm_deallocate'));
      assert.equal(sim.regionCount, 2);
      seg.close();
      assert.equal(sim.regionCount, 0);
    });

    it('leaves clones intact when the origin closes', () => {
      const a = Segment.from(pattern(page, 6));
      using b = a.clone();
      a.close();
      assertBytes(bytesOf(b), pattern(page, 6));
    });
  });

  describe('stats() and memory()', () => {
    it('reports a fresh segment as private, counting every faulted page as resident, one mapping per map entry and one for the guard', () => {
      using a = Segment.create(4 * page);
      assert.deepEqual(a.stats(), { byteLength: 4 * page, privateBytes: 0, sharedBytes: 0, mappings: 2 });
      bytesOf(a).fill(1, 0, 2 * page);
      assert.deepEqual(a.stats(), { byteLength: 4 * page, privateBytes: 2 * page, sharedBytes: 0, mappings: 2 });
      // A read faults a zero page in: the kernel counts it resident.
      assert.equal(bytesOf(a)[3 * page], 0);
      assert.deepEqual(a.stats(), { byteLength: 4 * page, privateBytes: 3 * page, sharedBytes: 0, mappings: 2 });
      const flavors = new Set(sim.log.filter((c) => c.call === 'mach_vm_region').map((c) => c.args.flavor));
      assert.deepEqual([...flavors].sort(), [mach.VM_REGION_TOP_INFO, mach.VM_REGION_EXTENDED_INFO]);
    });

    it('follows the delayed copy: a clone\'s own pages are private, what it sees of its origin shared, and the origin approximately all shared', () => {
      using a = Segment.create(4 * page);
      bytesOf(a).fill(1, 0, 2 * page);
      using b = a.clone();
      assert.deepEqual(b.stats(), { byteLength: 4 * page, privateBytes: 0, sharedBytes: 2 * page, mappings: 2 });
      assert.deepEqual(a.stats(), { byteLength: 4 * page, privateBytes: 0, sharedBytes: 2 * page, mappings: 2 });
      bytesOf(b)[0] = 2;
      // The page it overwrote is its own, no longer shared.
      assert.deepEqual(b.stats(), { byteLength: 4 * page, privateBytes: page, sharedBytes: page, mappings: 2 });
      // The origin writes a page: its old contents are pushed to the clone's
      // copy object. Both still see two pages; the kernel calls the origin's shared.
      bytesOf(a)[page] = 9;
      assert.deepEqual(b.stats(), { byteLength: 4 * page, privateBytes: page, sharedBytes: page, mappings: 2 });
      assert.deepEqual(a.stats(), { byteLength: 4 * page, privateBytes: 0, sharedBytes: 2 * page, mappings: 2 });
      assert.equal(bytesOf(b)[page], 1);
      // Origin and clone name the same bottom object: one family, whose
      // objects hold 4 pages (2 of the origin, 1 pushed, 1 of the clone).
      const [ra] = backend.regions(handleOf(a, page));
      const [rb] = backend.regions(handleOf(b, page));
      assert.equal(ra!.objectId, rb!.objectId);
      assert.equal(rb!.shadowDepth, 2);
      assert.deepEqual(backend.memory(), { layers: 1, layerBytes: 4 * page, privateBytes: page, mappings: 4 });
    });

    it('keeps neighbouring segments in map entries of their own, so no segment is charged a neighbour\'s pages', () => {
      using a = Segment.create(page);
      using b = Segment.create(page);
      bytesOf(b).fill(3);
      assert.deepEqual(sim.entries(a.address, page).map((e) => e.end), [a.address + BigInt(page)]);
      assert.deepEqual(a.stats(), { byteLength: page, privateBytes: 0, sharedBytes: 0, mappings: 2 });
      assert.deepEqual(b.stats(), { byteLength: page, privateBytes: page, sharedBytes: 0, mappings: 2 });
      using c = a.clone();
      assert.deepEqual(b.stats(), { byteLength: page, privateBytes: page, sharedBytes: 0, mappings: 2 });
      assert.deepEqual(c.stats(), { byteLength: page, privateBytes: 0, sharedBytes: 0, mappings: 2 });
    });

    it('counts the kernel\'s pages in vm_kernel_page_size, 16 KiB under Rosetta where vm_page_size is 4 KiB', () => {
      sim.dispose();
      sim = new MachSim({ pageSize: 4096, kernelPageSize: 16384 });
      backend = new DarwinBackend(sim);
      setBackend(backend);
      assert.equal(backend.pageSize, 4096);
      assert.equal(backend.kernelPageSize, 16384);
      using a = Segment.create(8 * 4096);
      bytesOf(a)[0] = 1;
      // One kernel page is resident: 16 KiB, not 4 KiB.
      assert.deepEqual(a.stats(), { byteLength: 8 * 4096, privateBytes: 16384, sharedBytes: 0, mappings: 2 });
      assert.equal(backend.taskVmInfo().physFootprint, 16384);
    });

    it('throws the kern_return_t when mach_vm_region fails', () => {
      using a = Segment.create(page);
      sim.fail('mach_vm_region', mach.KERN_FAILURE);
      assert.throws(() => a.stats(), machFailure('KERN_FAILURE', 5, 'mach_vm_region', '(os/kern) failure'));
      assert.equal(a.stats().mappings, 2);
    });

    it('reads process-wide figures with task_info(TASK_VM_INFO)', () => {
      using a = Segment.create(2 * page);
      bytesOf(a).fill(1, 0, page);
      const t = backend.taskVmInfo();
      assert.equal(t.pageSize, page);
      assert.equal(t.regionCount, 2);
      assert.equal(t.virtualSize, 3 * page);
      assert.equal(t.physFootprint, page);
      const call = sim.log.find((c) => c.call === 'task_info')!;
      assert.equal(call.args.flavor, mach.TASK_VM_INFO);
      assert.equal(call.args.count, mach.TASK_VM_INFO_LAYOUT.rev1Count);
      sim.fail('task_info', mach.KERN_INVALID_ARGUMENT);
      assert.throws(() => backend.taskVmInfo(), machFailure('KERN_INVALID_ARGUMENT', 4, 'task_info'));
    });
  });

  describe('shutdown()', () => {
    it('releases every live segment and its guard', () => {
      const a = Segment.from(pattern(2 * page, 1));
      const b = a.clone();
      Segment.create(page);
      assert.equal(sim.regionCount, 6);
      backend.shutdown();
      assert.equal(sim.regionCount, 0);
      assert.equal(backend.memory().mappings, 0);
      void b;
    });
  });

  it('runs random create / write / clone / restore / close sequences byte for byte like plain copies', () => {
    let seed = 12345;
    const rand = (n: number) => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed % n;
    };
    const n = 2 * page + 100;
    const live: { seg: Segment; model: Uint8Array }[] = [];
    try {
      for (let step = 0; step < 150; step++) {
        const op = live.length === 0 ? 0 : rand(5);
        if (op === 0 && live.length < 8) {
          live.push({ seg: Segment.create(n), model: new Uint8Array(n) });
        } else if (op === 1) {
          const x = live[rand(live.length)]!;
          const off = rand(n);
          const v = rand(256);
          bytesOf(x.seg)[off] = v;
          x.model[off] = v;
        } else if (op === 2 && live.length < 8) {
          const x = live[rand(live.length)]!;
          live.push({ seg: x.seg.clone(), model: x.model.slice() });
        } else if (op === 3) {
          const x = live[rand(live.length)]!;
          const y = live[rand(live.length)]!;
          x.seg.restore(y.seg);
          x.model.set(y.model);
        } else if (op === 4 && live.length > 1) {
          live.splice(rand(live.length), 1)[0]!.seg.close();
        }
        for (const [i, x] of live.entries()) assertBytes(bytesOf(x.seg), x.model, `segment ${i} after step ${step} (seed 12345)`);
      }
    } finally {
      for (const x of live) x.seg.close();
    }
    assert.equal(sim.regionCount, 0);
  });
});

describe('DarwinBackend on macOS', { skip: process.platform !== 'darwin' && 'macOS only' }, () => {
  it('creates, clones, restores and closes real memory', () => {
    const b = new DarwinBackend();
    setBackend(b);
    assert.ok(b.pageSize === 4096 || b.pageSize === 16384);
    using a = Segment.from(pattern(3 * b.pageSize, 7));
    using c = a.clone();
    bytesOf(c)[0] ^= 0xff;
    assertBytes(bytesOf(a), pattern(3 * b.pageSize, 7));
    a.restore(c);
    assert.equal(bytesOf(a)[0], bytesOf(c)[0]);
    assert.ok(b.taskVmInfo().physFootprint > 0);
    assert.ok(c.stats().mappings >= 1);
  });
});
