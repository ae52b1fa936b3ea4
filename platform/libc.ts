// Linux libc bindings for the Linux backend, through koffi. Each binding is
// declared as its man page writes it and wrapped in a function that throws
// SegmentError (code, errno, syscall) on failure, so the backend reads as a
// sequence of calls.
//
// A test-only seam sits in front of every call: `injectFault(name, k, errno)`
// makes the k-th next call of `name` fail with `errno` without reaching the
// kernel, so tests can drive every failure path.
import koffi from 'koffi';
import { systemError } from '../src/errors.ts';

// Linux values, the same on x86_64 and arm64 (asm-generic); macOS differs.
export const PROT_NONE = 0;
export const PROT_READ = 1;
export const PROT_WRITE = 2;
export const MAP_SHARED = 0x01;
export const MAP_PRIVATE = 0x02;
export const MAP_FIXED = 0x10;
export const MAP_ANONYMOUS = 0x20;
export const MAP_NORESERVE = 0x4000;
export const MADV_DONTNEED = 4;
/** Linux 5.14+: fault the range in as if written (private copies of file pages), bytes unchanged. */
export const MADV_POPULATE_WRITE = 23;
export const MREMAP_MAYMOVE = 1;
export const MREMAP_FIXED = 2;
export const MREMAP_DONTUNMAP = 4;
export const MFD_CLOEXEC = 0x1;
export const MFD_ALLOW_SEALING = 0x2;
export const MFD_NOEXEC_SEAL = 0x8;
export const F_ADD_SEALS = 1033;
export const F_GET_SEALS = 1034;
export const F_SEAL_SHRINK = 0x2;
export const F_SEAL_GROW = 0x4;
export const FALLOC_FL_KEEP_SIZE = 0x1;
export const FALLOC_FL_PUNCH_HOLE = 0x2;
export const SEEK_DATA = 3;
export const SEEK_HOLE = 4;
export const O_RDONLY = 0;
export const O_CLOEXEC = 0x80000;
export const O_DIRECTORY = 0x10000;
export const EPERM = 1;
export const EINTR = 4;
export const EIO = 5;
export const EBADF = 9;
export const ENOMEM = 12;
export const EXDEV = 18;
export const EMFILE = 24;
export const ENOSYS = 38;
export const EOPNOTSUPP = 95;
export const EFAULT = 14;
export const ENXIO = 6;
export const EINVAL = 22;

/** `MAP_FAILED`, as koffi returns it for a `void *`. */
export const MAP_FAILED = 0xffffffffffffffffn;

/** Largest byte count Linux moves in one read/write call. */
const MAX_IO = 0x7ffff000;

interface Bindings {
  memfd_create: (name: string, flags: number) => number;
  ftruncate: (fd: number, length: number) => number;
  fcntl: (fd: number, cmd: number, ...args: unknown[]) => number;
  mmap: (addr: bigint | null, len: number, prot: number, flags: number, fd: number, off: number) => bigint;
  munmap: (addr: bigint, len: number) => number;
  mremap: (old: bigint, oldLen: number, newLen: number, flags: number, ...args: unknown[]) => bigint;
  madvise: (addr: bigint, len: number, advice: number) => number;
  pwrite: (fd: number, buf: bigint, n: number, off: number) => number;
  pwritev: (fd: number, iov: BigUint64Array, count: number, off: number) => number;
  pread: (fd: number, buf: bigint | ArrayBufferView, n: number, off: number) => number;
  fallocate: (fd: number, mode: number, off: number, len: number) => number;
  lseek: (fd: number, off: number, whence: number) => number;
  close: (fd: number) => number;
  open: (path: string, flags: number, ...args: unknown[]) => number;
  ioctl: (fd: number, request: number, ...args: unknown[]) => number;
  fstat: (fd: number, buf: ArrayBufferView) => number;
  process_madvise: (nr: number, ...args: unknown[]) => number;
  userfaultfd: (nr: number, ...args: unknown[]) => number;
  copy_file_range: (fdIn: number, offIn: BigInt64Array, fdOut: number, offOut: BigInt64Array, n: number, flags: number) => number;
  pipe2: (fds: Int32Array, flags: number) => number;
  vmsplice: (fd: number, iov: BigUint64Array, n: number, flags: number) => number;
  splice: (fdIn: number, offIn: null, fdOut: number, offOut: BigInt64Array, n: number, flags: number) => number;
  memcpy: (dest: bigint, src: bigint, n: number) => bigint;
  memcpyAt: (dest: number, src: number, n: number) => void;
  getpagesize: () => number;
  getrlimit: (resource: number, out: BigUint64Array) => number;
  sigaction: (signal: number, act: Uint8Array | null, old: Uint8Array | null) => number;
}

let bindings: Bindings | undefined;

/** The C library, loaded once for every binding. */
let library: ReturnType<typeof koffi.load> | undefined;

function libc(): Bindings {
  if (bindings !== undefined) return bindings;
  const lib = (library ??= koffi.load('libc.so.6'));
  bindings = {
    memfd_create: lib.func('int memfd_create(const char *name, unsigned int flags)'),
    ftruncate: lib.func('int ftruncate(int fd, int64_t length)'),
    fcntl: lib.func('int fcntl(int fd, int cmd, ...)'),
    mmap: lib.func('void *mmap(void *addr, size_t length, int prot, int flags, int fd, int64_t offset)'),
    munmap: lib.func('int munmap(void *addr, size_t length)'),
    mremap: lib.func('void *mremap(void *old_address, size_t old_size, size_t new_size, int flags, ...)'),
    madvise: lib.func('int madvise(void *addr, size_t length, int advice)'),
    pwrite: lib.func('intptr_t pwrite(int fd, const void *buf, size_t count, int64_t offset)'),
    pwritev: lib.func('intptr_t pwritev(int fd, const void *iov, int iovcnt, int64_t offset)'),
    memcpy: lib.func('void *memcpy(void *dest, const void *src, size_t n)'),
    // Addresses as numbers, nothing returned: no BigInt or pointer object a
    // call (0.45 µs a page copied, against 0.50).
    memcpyAt: lib.func('void memcpy(uintptr_t dest, uintptr_t src, size_t n)'),
    pread: lib.func('intptr_t pread(int fd, void *buf, size_t count, int64_t offset)'),
    fallocate: lib.func('int fallocate(int fd, int mode, int64_t offset, int64_t len)'),
    lseek: lib.func('int64_t lseek(int fd, int64_t offset, int whence)'),
    close: lib.func('int close(int fd)'),
    open: lib.func('int open(const char *pathname, int flags, ...)'),
    ioctl: lib.func('int ioctl(int fd, unsigned long request, ...)'),
    fstat: lib.func('int fstat(int fd, _Out_ uint8_t *statbuf)'),
    process_madvise: lib.func('long syscall(long number, ...)'),
    userfaultfd: lib.func('long syscall(long number, ...)'),
    pipe2: lib.func('int pipe2(_Out_ int *fds, int flags)'),
    vmsplice: lib.func('intptr_t vmsplice(int fd, const void *iov, size_t nr_segs, unsigned int flags)'),
    splice: lib.func('intptr_t splice(int fd_in, void *off_in, int fd_out, _Inout_ int64_t *off_out, size_t len, unsigned int flags)'),
    copy_file_range: lib.func(
      'intptr_t copy_file_range(int fd_in, _Inout_ int64_t *off_in, int fd_out, _Inout_ int64_t *off_out, size_t len, unsigned int flags)',
    ),
    getpagesize: lib.func('int getpagesize(void)'),
    getrlimit: lib.func('int getrlimit(int resource, _Out_ uint64_t *rlim)'),
    sigaction: lib.func('int sigaction(int signum, const uint8_t *act, _Out_ uint8_t *oldact)'),
  } as Bindings;
  return bindings;
}

/** `getdents64`, bound on first use (glibc 2.30 and later export it); null where it is missing. */
type GetDents = (fd: number, buf: Uint8Array, n: number) => number;
let getdents: GetDents | null | undefined;

function getdents64(): GetDents | null {
  if (getdents === undefined) {
    try {
      libc();
      getdents = library!.func('intptr_t getdents64(int fd, _Out_ uint8_t *dirp, size_t count)') as unknown as GetDents;
    } catch {
      getdents = null;
    }
  }
  return getdents;
}

/** Loads libc; throws when this is not a glibc Linux system. */
export function loadLibc(): void {
  libc();
}

// ---- fault injection (tests only) ------------------------------------------

/** Names of the calls a fault can be injected into. */
export type CallName = Exclude<keyof Bindings, 'getpagesize' | 'getrlimit' | 'memcpy' | 'memcpyAt' | 'sigaction'>;

interface Fault {
  countdown: number;
  errno: number;
  /** Fail every call from the k-th on, not only the k-th. */
  sticky: boolean;
}

const faults = new Map<CallName, Fault>();
const calls = new Map<CallName, number>();

/**
 * Test-only: the `k`-th next call (1 = the very next) of `name` fails with
 * `errno` and does not reach the kernel; with `sticky`, every call from then on.
 */
export function injectFault(name: CallName, k: number, errno: number, sticky = false): void {
  faults.set(name, { countdown: k, errno, sticky });
}

/** Test-only: removes every injected fault. */
export function clearFaults(): void {
  faults.clear();
}

/** Test-only: how many times each call was made since the last reset. */
export function callCounts(reset = false): Map<CallName, number> {
  const copy = new Map(calls);
  if (reset) calls.clear();
  return copy;
}

/** An injected errno for this call, or 0 to make the real call. */
function injected(name: CallName): number {
  calls.set(name, (calls.get(name) ?? 0) + 1);
  if (faults.size === 0) return 0;
  const f = faults.get(name);
  if (f === undefined) return 0;
  f.countdown--;
  if (f.countdown > 0) return 0;
  if (!f.sticky) faults.delete(name);
  return f.errno;
}

// ---- checked calls ----------------------------------------------------------

function fail(name: string, errno: number, detail: string): never {
  throw systemError(name, errno, detail);
}

/** Runs `call` (a libc call whose failure is -1) and retries on EINTR. */
function retry(name: CallName, call: () => number, detail: () => string): number {
  for (;;) {
    const fake = injected(name);
    if (fake !== 0) fail(name, fake, detail());
    const r = call();
    if (r !== -1) return r;
    const errno = koffi.errno();
    if (errno !== EINTR) fail(name, errno, detail());
  }
}

export function memfdCreate(name: string, flags: number): number {
  return retry('memfd_create', () => libc().memfd_create(name, flags), () => `cannot create a memory file`);
}

export function ftruncate(fd: number, length: number): void {
  retry('ftruncate', () => libc().ftruncate(fd, length), () => `cannot size memory file to ${length} bytes`);
}

export function addSeals(fd: number, seals: number): void {
  retry('fcntl', () => libc().fcntl(fd, F_ADD_SEALS, 'int', seals), () => `cannot seal memory file`);
}

export function getSeals(fd: number): number {
  return retry('fcntl', () => libc().fcntl(fd, F_GET_SEALS), () => `cannot read seals`);
}

/** `mmap`; throws on MAP_FAILED. */
export function mmap(addr: bigint | null, length: number, prot: number, flags: number, fd: number, offset: number): bigint {
  const fake = injected('mmap');
  if (fake !== 0) fail('mmap', fake, `cannot map ${length} bytes`);
  const p = libc().mmap(addr, length, prot, flags, fd, offset);
  if (p === MAP_FAILED) fail('mmap', koffi.errno(), `cannot map ${length} bytes`);
  return p;
}

/** `mremap(old, oldLen, newLen, flags, newAddress)`; throws on MAP_FAILED. */
export function mremap(old: bigint, oldLength: number, newLength: number, flags: number, to: bigint): bigint {
  const fake = injected('mremap');
  if (fake !== 0) fail('mremap', fake, `cannot move ${oldLength} bytes`);
  const p = libc().mremap(old, oldLength, newLength, flags, 'void *', to);
  if (p === MAP_FAILED) fail('mremap', koffi.errno(), `cannot move ${oldLength} bytes`);
  return p;
}

export function munmap(addr: bigint, length: number): void {
  retry('munmap', () => libc().munmap(addr, length), () => `cannot unmap ${length} bytes`);
}

/**
 * Copies `length` bytes between two mapped ranges of this process. It cannot
 * fail; the caller guarantees both ranges stay mapped, writable at `dest`.
 */
export function copyMemory(dest: bigint, src: bigint, length: number): void {
  libc().memcpy(dest, src, length);
}

/** copyMemory() with addresses as numbers, for addresses exact as numbers (below 2^53). */
export function copyMemoryAt(dest: number, src: number, length: number): void {
  libc().memcpyAt(dest, src, length);
}

export function madvise(addr: bigint, length: number, advice: number): void {
  retry('madvise', () => libc().madvise(addr, length, advice), () => `cannot advise on ${length} bytes`);
}

/**
 * Moves `length` bytes with `call(done, n)`, which moves up to `n` bytes from
 * `done` on and returns how many (a short count is followed by another call).
 * A call that moves nothing fails with `stalled`. `what` names the transfer in
 * errors: "write 4096 bytes to a memory file".
 */
function transferAll(name: CallName, length: number, what: string, stalled: number, call: (done: number, n: number) => number): void {
  let done = 0;
  while (done < length) {
    const n = Math.min(length - done, MAX_IO);
    const w = retry(name, () => call(done, n), () => `cannot ${what}`);
    if (w === 0) fail(name, stalled, `${what}: stopped after ${done} bytes`);
    done += w;
  }
}

/** Writes `length` bytes from memory at `addr` to `fd` at `offset`, all of them. */
export function pwriteAll(fd: number, addr: bigint, length: number, offset: number): void {
  transferAll('pwrite', length, `write ${length} bytes to a memory file`, 28 /* ENOSPC */, (done, n) =>
    libc().pwrite(fd, addr + BigInt(done), n, offset + done),
  );
}

/**
 * pwritev(2): writes the memory `iov` names ((address, length) pairs, `count`
 * of them) one after another into `fd` from `offset`; returns the bytes
 * written, which may be fewer.
 */
export function pwritev(fd: number, iov: BigUint64Array, count: number, offset: number): number {
  return retry('pwritev', () => Number(libc().pwritev(fd, iov, count, offset)), () => `cannot write ${count} ranges of memory to a memory file`);
}

/**
 * Offsets handed to copy_file_range and splice, made once: a typed array
 * handed to native code for the first time costs microseconds (its memory
 * leaves the JavaScript heap), more than the call itself for one page.
 */
const offsets = { in: new BigInt64Array(1), out: new BigInt64Array(1) };

/**
 * Copies `length` bytes of file `from` at `offset` to file `to` at
 * `toOffset` (the same offset if not given), inside the kernel
 * (copy_file_range(2)): no page of either file needs mapping, or touching
 * through a mapping, to be copied. Written out, not
 * through transferAll: it runs once a page for scattered pages.
 */
export function copyFileRange(from: number, to: number, offset: number, length: number, toOffset = offset): void {
  const offIn = offsets.in;
  const offOut = offsets.out;
  for (let done = 0; done < length; ) {
    const fake = injected('copy_file_range');
    if (fake !== 0) fail('copy_file_range', fake, `cannot copy ${length} bytes between memory files`);
    offIn[0] = BigInt(offset + done);
    offOut[0] = BigInt(toOffset + done);
    const w = Number(libc().copy_file_range(from, offIn, to, offOut, Math.min(length - done, MAX_IO), 0));
    if (w === -1) {
      const errno = koffi.errno();
      if (errno !== EINTR) fail('copy_file_range', errno, `cannot copy ${length} bytes between memory files`);
      continue;
    }
    if (w === 0) fail('copy_file_range', EIO, `copy ${length} bytes between memory files: stopped after ${done} bytes`);
    done += w;
  }
}

const O_NONBLOCK = 0x800;
const F_SETPIPE_SZ = 1031;
const F_GETPIPE_SZ = 1032;
const SPLICE_F_NONBLOCK = 0x2;

/**
 * A non-blocking pipe (read end, write end) and its capacity in bytes, at
 * most `want` (the capacity only makes copies faster, so setting it is not
 * checked for faults).
 */
export function pipe(want: number): { read: number; write: number; size: number } {
  const fds = new Int32Array(2);
  retry('pipe2', () => libc().pipe2(fds, O_CLOEXEC | O_NONBLOCK), () => 'cannot create a pipe');
  const [read, write] = [fds[0]!, fds[1]!];
  let size = libc().fcntl(write, F_SETPIPE_SZ, 'int', want);
  if (size < 0) size = libc().fcntl(write, F_GETPIPE_SZ);
  return { read, write, size: size > 0 ? size : 4096 };
}

/**
 * vmsplice(2): puts the memory `iov` names ((address, length) pairs, `count`
 * of them) into a pipe by reference; returns the bytes taken.
 */
export function vmsplice(fd: number, iov: BigUint64Array, count: number): number {
  return retry('vmsplice', () => Number(libc().vmsplice(fd, iov, count, 0)), () => `cannot pass ${count} ranges of memory to a pipe`);
}

/** splice(2): moves `length` bytes from pipe `from` into file `to` at `offset`, all of them. */
export function spliceAll(from: number, to: number, offset: number, length: number): void {
  const off = offsets.out;
  transferAll('splice', length, `write ${length} bytes to a memory file`, EIO, (done, n) => {
    off[0] = BigInt(offset + done);
    return Number(libc().splice(from, null, to, off, n, SPLICE_F_NONBLOCK));
  });
}

/** Reads up to `length` bytes of `fd` at `offset` into `into`; returns the count. */
export function pread(fd: number, into: bigint | ArrayBufferView, length: number, offset: number): number {
  return retry('pread', () => libc().pread(fd, into, length, offset), () => `cannot read ${length} bytes`);
}

export function punchHole(fd: number, offset: number, length: number): void {
  retry(
    'fallocate',
    () => libc().fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length),
    () => `cannot free ${length} bytes of a memory file`,
  );
}

/** `lseek(fd, offset, SEEK_DATA/SEEK_HOLE)`; returns -1 for ENXIO (no data/hole past offset). */
export function seek(fd: number, offset: number, whence: number): number {
  const fake = injected('lseek');
  if (fake !== 0) fail('lseek', fake, `cannot look for data in a memory file`);
  const r = libc().lseek(fd, offset, whence);
  if (r !== -1) return Number(r);
  const errno = koffi.errno();
  if (errno === ENXIO) return -1;
  return fail('lseek', errno, `cannot look for data in a memory file`);
}

/** Closes `fd`. Linux releases the descriptor even when close reports an error, so errors are ignored. */
export function closeFd(fd: number): void {
  injected('close');
  libc().close(fd);
}

export function open(path: string, flags: number): number {
  return retry('open', () => libc().open(path, flags), () => `cannot open ${path}`);
}

/** `ioctl(fd, request, arg)` with a pointer argument; returns its non-negative result. */
export function ioctl(fd: number, request: number, arg: bigint, what = 'cannot scan page tables'): number {
  return retry('ioctl', () => libc().ioctl(fd, request, 'void *', arg), () => `${what} (request 0x${request.toString(16)})`);
}

/** userfaultfd(2)'s number: x86_64's, else the generic table's (arm64 and the other newer ports). */
const SYS_USERFAULTFD = process.arch === 'x64' ? 323 : 282;

/** `userfaultfd(flags)`: a new userfaultfd descriptor. */
export function userfaultfd(flags: number): number {
  return retry(
    'userfaultfd',
    () => Number(libc().userfaultfd(SYS_USERFAULTFD, 'int', flags)),
    () => 'cannot open a userfaultfd',
  );
}

/** process_madvise(2): the same number on x86_64 and arm64 (syscalls from 424 on are shared). */
const SYS_PROCESS_MADVISE = 440;
/** `PIDFD_SELF_THREAD` (Linux 6.15): the calling thread, whose memory is the whole process's. */
const PIDFD_SELF = -10000;

/**
 * `process_madvise(PIDFD_SELF, iov, count, advice, 0)` on this process: one
 * call for `count` ranges, given as (address, length) pairs in `iov`. Returns
 * the bytes advised, which is less than the total when the kernel stopped early.
 */
export function processMadvise(iov: BigUint64Array, count: number, advice: number): number {
  return retry(
    'process_madvise',
    () => Number(libc().process_madvise(SYS_PROCESS_MADVISE, 'int', PIDFD_SELF, 'void *', iov, 'size_t', count, 'int', advice, 'unsigned int', 0)),
    () => `cannot advise on ${count} ranges`,
  );
}

/**
 * struct stat for allocatedBytes, kept: an array buffer allocated while
 * segments' buffers count as much external memory brings on a garbage
 * collection (a first clone of 256 MiB took 2.5 ms against 0.9 with one
 * allocated a call, the collector's threads running beside its mremap).
 */
let statBuf: { bytes: Uint8Array; view: DataView } | undefined;

/** Bytes allocated to `fd` (st_blocks × 512; offset 64 in struct stat on x86_64 and arm64). */
export function allocatedBytes(fd: number): number {
  if (statBuf === undefined) {
    const bytes = new Uint8Array(256);
    statBuf = { bytes, view: new DataView(bytes.buffer) };
  }
  const { bytes, view } = statBuf;
  retry('fstat', () => libc().fstat(fd, bytes), () => `cannot stat memory file`);
  return Number(view.getBigInt64(64, true)) * 512;
}

/** The text of a small file such as one under /proc, or undefined when it cannot be read. */
export function readSmallFile(path: string): string | undefined {
  let fd: number;
  try {
    fd = open(path, O_RDONLY | O_CLOEXEC);
  } catch {
    return undefined;
  }
  try {
    const chunks: Uint8Array[] = [];
    let offset = 0;
    for (;;) {
      const chunk = new Uint8Array(65536);
      const n = pread(fd, chunk, chunk.byteLength, offset);
      if (n <= 0) break;
      chunks.push(chunk.subarray(0, n));
      offset += n;
    }
    return Buffer.concat(chunks).toString('utf8');
  } catch {
    return undefined;
  } finally {
    closeFd(fd);
  }
}

/** MemAvailable from /proc/meminfo, in bytes; Infinity where it cannot be read. */
export function availableMemory(): number {
  const m = /^MemAvailable:\s+(\d+) kB/m.exec(readSmallFile('/proc/meminfo') ?? '');
  return m === null ? Infinity : Number(m[1]) * 1024;
}

/** The soft limit on open file descriptors (RLIMIT_NOFILE, 7 on Linux), or undefined. */
export function fdLimit(): number | undefined {
  const out = new BigUint64Array(2);
  if (libc().getrlimit(7, out) !== 0) return undefined;
  return out[0]! > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(out[0]!);
}

/**
 * How many descriptors the process has open (entries of /proc/self/fd, less
 * the one reading it), or undefined where that cannot be read. One
 * getdents64 call per 64 KiB of entries: about a thousand descriptors.
 */
export function countOpenFds(): number | undefined {
  const list = getdents64();
  if (list === null) return undefined;
  let fd: number;
  try {
    fd = open('/proc/self/fd', O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  } catch {
    return undefined;
  }
  try {
    const buf = new Uint8Array(1 << 16);
    const data = new DataView(buf.buffer);
    let entries = 0;
    for (;;) {
      const n = Number(list(fd, buf, buf.byteLength));
      if (n < 0) return undefined;
      if (n === 0) break;
      // struct linux_dirent64: d_ino (8), d_off (8), d_reclen (2), d_type (1), d_name.
      for (let at = 0; at < n; at += data.getUint16(at + 16, true)) {
        if (buf[at + 19] !== 0x2e) entries++; // not "." or ".."
      }
    }
    return entries - 1;
  } finally {
    closeFd(fd);
  }
}

/** SIGXFSZ: the same number on x86_64 and arm64. */
const SIGXFSZ = 25;

/**
 * Makes a file grown past RLIMIT_FSIZE fail with EFBIG rather than kill the
 * process: sets SIGXFSZ to ignored where it is at its default action (Node.js
 * and Bun ignore it already; Deno leaves it at the default, which ends the
 * process when a memory file is sized past the limit). A handler someone
 * installed is left alone. Returns whether it changed anything.
 */
export function ignoreFileSizeSignal(): boolean {
  // struct sigaction: the handler comes first (x86_64 and arm64 glibc); 152 bytes, rounded up.
  const old = new Uint8Array(256);
  if (libc().sigaction(SIGXFSZ, null, old) !== 0) return false;
  if (new DataView(old.buffer).getBigUint64(0, true) !== 0n) return false; // not SIG_DFL
  const act = new Uint8Array(256);
  new DataView(act.buffer).setBigUint64(0, 1n, true); // SIG_IGN
  return libc().sigaction(SIGXFSZ, act, null) === 0;
}

/** The kernel's page size in bytes. */
export function getpagesize(): number {
  return libc().getpagesize();
}

/** An ArrayBuffer aliasing `length` bytes at `addr`. */
export function view(addr: bigint, length: number): ArrayBuffer {
  return koffi.view(addr as unknown as never, length) as ArrayBuffer;
}
