// Knowing which pages a segment rewrote since its last clone, where it keeps
// private copies of pages across clones (a deferred freeze, freeze.ts):
// those are private whether rewritten or not, so the private-page scan
// (scan.ts) cannot tell. A userfaultfd(2) in asynchronous write-protect
// mode (Linux 6.7+) can: the kernel clears a page's protection on its first
// write, with no handler and no signal, and PAGEMAP_SCAN reports the pages
// written since and protects them again in one walk (Scanner.writtenSince).
// Measured in C on the bench's VM: rewriting a page already private costs
// 0.65 µs (a copy-on-write fault from the layer, 1.6 to 2.2), and reporting
// and protecting 131,072 scattered pages of 1 GiB 1.8 to 2.3 ms.
//
// UFFD_USER_MODE_ONLY lets a process without privilege open one where
// vm.unprivileged_userfaultfd is 0 (the default); asynchronous protection
// never waits on a handler, so writes by the kernel (read(2) into a
// segment) are tracked too. Where any of it is refused (an older kernel, a
// seccomp filter), the backend freezes as before.
import * as sys from '../libc.ts';
import { systemError } from '../../src/errors.ts';

const O_NONBLOCK = 0x800;
/** userfaultfd(2) flag: handle faults from user mode only (Linux 5.11+). */
const UFFD_USER_MODE_ONLY = 1;
const UFFD_API = 0xaan;
/** Write faults resolve themselves, clearing the page's protection (Linux 6.7+). */
const UFFD_FEATURE_WP_ASYNC = 1n << 15n;
/** Write-protect works on shared-memory (and hugetlbfs) backed mappings, private ones included. */
const UFFD_FEATURE_WP_HUGETLBFS_SHMEM = 1n << 12n;
const WANTED = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_HUGETLBFS_SHMEM;
// _IOWR(0xAA, 0x3F, struct uffdio_api) and _IOWR(0xAA, 0x00, struct uffdio_register), the same on x86_64 and arm64.
const UFFDIO_API = 0xc018aa3f;
const UFFDIO_REGISTER = 0xc020aa00;
const UFFDIO_REGISTER_MODE_WP = 2n;
/** struct uffdio_register: range (start, len), mode, ioctls: 4 × u64. */
const SCRATCH_WORDS = 4;

/** One backend's userfaultfd, open for asynchronous write-protect. */
export class WriteTracker {
  readonly #fd: number;
  /** Scratch memory for the ioctl arguments. */
  readonly #scratch: bigint;
  readonly #words: BigUint64Array;
  readonly #pageSize: number;
  #closed = false;

  private constructor(fd: number, scratch: bigint, pageSize: number) {
    this.#fd = fd;
    this.#scratch = scratch;
    // Safety: the scratch page lives until close(), the last use of this view.
    this.#words = new BigUint64Array(sys.view(scratch, SCRATCH_WORDS * 8));
    this.#pageSize = pageSize;
  }

  /**
   * A tracker, or null where the kernel or a sandbox refuses any step:
   * userfaultfd(2) itself, user-mode-only descriptors, or the two features.
   * Nothing is left open then.
   */
  static open(pageSize: number): WriteTracker | null {
    let fd: number;
    try {
      fd = sys.userfaultfd(sys.O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
    } catch {
      return null;
    }
    let scratch = 0n;
    try {
      scratch = sys.mmap(null, pageSize, sys.PROT_READ | sys.PROT_WRITE, sys.MAP_PRIVATE | sys.MAP_ANONYMOUS, -1, 0);
      const tracker = new WriteTracker(fd, scratch, pageSize);
      if (tracker.#handshake()) return tracker;
    } catch {
      // Refused: no tracking.
    }
    if (scratch !== 0n) sys.munmap(scratch, pageSize);
    sys.closeFd(fd);
    return null;
  }

  /** UFFDIO_API: whether the kernel grants both features (it refuses the call where it lacks one). */
  #handshake(): boolean {
    const w = this.#words;
    w[0] = UFFD_API;
    w[1] = WANTED;
    w[2] = 0n;
    sys.ioctl(this.#fd, UFFDIO_API, this.#scratch, 'cannot set up write tracking');
    return (w[1]! & WANTED) === WANTED;
  }

  /**
   * Registers the `length` bytes from `addr` for asynchronous write-protect.
   * Pages are not protected by this: those already written report as
   * written until the next Scanner.writtenSince over them. Registering a
   * range again is harmless; mappings placed over it since (MAP_FIXED) are
   * new and need it. Throws SegmentError where the kernel refuses.
   */
  register(addr: bigint, length: number): void {
    if (this.#closed) throw systemError('ioctl', sys.EBADF, 'write tracking is closed');
    const w = this.#words;
    w[0] = addr;
    w[1] = BigInt(length);
    w[2] = UFFDIO_REGISTER_MODE_WP;
    w[3] = 0n;
    sys.ioctl(this.#fd, UFFDIO_REGISTER, this.#scratch, 'cannot register a segment for write tracking');
  }

  /** Closes the descriptor (registrations end with it) and frees the scratch page. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      sys.munmap(this.#scratch, this.#pageSize);
    } finally {
      sys.closeFd(this.#fd);
    }
  }
}
