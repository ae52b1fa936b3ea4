// The public Segment: argument checks, closed state, view tracking and
// detaching, finalization. Everything here is the same on every platform; the
// backend only maps, clones, restores and unmaps.
import type { Backend } from './backend.ts';
import { closedError } from './errors.ts';
import { detach, guardMessages, guardTransfers } from './runtime.ts';
import { roundUp } from './pages.ts';

/** Figures about one segment, from {@link Segment.stats}. */
export interface SegmentStats {
  /** The length given at creation. */
  byteLength: number;
  /** Bytes of pages that belong to this segment alone: written since its last `clone()`/`restore()`, or shared with nothing. */
  privateBytes: number;
  /** Bytes of pages it shares copy-on-write with other segments, or holds in shared storage. */
  sharedBytes: number;
  /** Kernel mappings (VMAs on Linux, map entries on macOS) the segment uses now. */
  mappings: number;
}

/** Process-wide figures, from {@link memoryStats}. */
export interface MemoryStats {
  /** Live segments. */
  segments: number;
  /** Backing layers (Linux: the memory files that hold them) or memory objects. */
  layers: number;
  /** Bytes held in those layers. */
  layerBytes: number;
  /** Bytes private to segments. */
  privateBytes: number;
  /** Mappings used by all segments together. */
  mappings: number;
}

// The state a Segment shares with the ArrayBuffers it hands out. Each buffer
// keeps it reachable (through `owners`), so the memory is released by the
// garbage collector only once the Segment and every buffer are unreachable.
interface Core {
  handle: unknown;
  views: Set<WeakRef<ArrayBuffer>>;
  /** Size of `views` after the last sweep of dead references. */
  swept: number;
  buffer: ArrayBuffer | undefined;
  /** Set while `release` has failed and `close()` may retry it. */
  releasePending: boolean;
}

interface Held {
  backend: Backend;
  handle: unknown;
}

let active: Backend | undefined;
let live = 0;

const owners = new WeakMap<ArrayBuffer, Core>();
/**
 * Set once the runtime is unloading: Deno may still run finalizers then, and
 * an FFI call at that point crashes it. The process is ending anyway, and the
 * kernel takes the memory back.
 */
let unloading = false;
const events = globalThis as { addEventListener?: (type: string, listener: () => void) => void };
if (typeof events.addEventListener === 'function') {
  events.addEventListener('unload', () => {
    unloading = true;
  });
}
/** Buffers of ours that `ArrayBuffer.prototype.transfer` moved, to a buffer tracked in their place. */
const followed = new WeakSet<ArrayBuffer>();
// A buffer moved out of one of ours aliases the same memory: track it too.
guardTransfers((from, to) => {
  const core = owners.get(from);
  if (core === undefined || to.byteLength === 0) return;
  followed.add(from);
  owners.set(to, core);
  core.views.add(new WeakRef(to));
});
// No buffer of ours may be moved to another owner (Deno would let it go).
guardMessages((value) => typeof value === 'object' && value !== null && owners.has(value as ArrayBuffer));

/**
 * Segments whose memory a buffer moved beyond memfork's reach still aliases:
 * never released, so that buffer can never reach unmapped memory.
 */
const kept: Held[] = [];
let warnedKept = false;

const finalizer = new FinalizationRegistry<Held>((held) => {
  live--;
  if (unloading) return;
  try {
    held.backend.release(held.handle);
  } catch {
    // Nobody can be told any more; close() is the call that reports errors.
  }
});
const constructing = Symbol('memfork.construct');
/** `new Segment(…)`, for the class's own static methods and clone(); set by its static block. */
let make: (backend: Backend, byteLength: number, handle: unknown) => Segment;

/** Installs the backend every new segment uses (done once at load time). */
export function setBackend(backend: Backend): void {
  active = backend;
}

function currentBackend(): Backend {
  if (active === undefined) throw new Error('memfork: no backend loaded');
  return active;
}

/** Number of segments not yet released. */
export function liveSegments(): number {
  return live;
}

function checkLength(value: unknown, what: string): number {
  if (typeof value !== 'number') {
    throw new TypeError(`Invalid ${what}: expected a number, got ${describe(value)}`);
  }
  if (!Number.isSafeInteger(value) || value < 0) {
    throw new RangeError(`Invalid ${what}: expected a safe integer >= 0, got ${String(value)}`);
  }
  return value;
}

function describe(value: unknown): string {
  if (value === null) return 'null';
  if (typeof value === 'bigint') return `bigint ${value}n`;
  if (typeof value === 'object' || typeof value === 'function') return typeof value;
  return `${typeof value} ${String(value)}`;
}

/**
 * A region of memory that can be cloned copy-on-write inside this process,
 * the way `fork()` copies a process.
 *
 * A segment is used from one thread at a time: `clone()` and `restore()`
 * must not run while another thread (a worker, or a thread-pool read into
 * its buffer) writes into it.
 *
 * @example
 * ```ts
 * using a = Segment.create(1 << 30);
 * new Uint8Array(a.buffer).fill(7);
 * using b = a.clone();             // shares every page with a
 * new Uint8Array(b.buffer)[0] = 1; // copies one page; a still reads 7
 * a.restore(b);                    // a now reads what b holds
 * ```
 */
export class Segment implements Disposable {
  readonly #byteLength: number;
  #core: Core | undefined;
  readonly #backend: Backend;

  /** Use {@link Segment.create}, {@link Segment.from} or {@link Segment.clone}. */
  private constructor(token: symbol, backend: Backend, byteLength: number, handle: unknown) {
    if (token !== constructing) throw new TypeError('Illegal constructor: use Segment.create() or Segment.from()');
    this.#byteLength = byteLength;
    this.#backend = backend;
    const core: Core = { handle, views: new Set(), swept: 0, buffer: undefined, releasePending: false };
    this.#core = core;
    if (handle !== undefined) {
      live++;
      finalizer.register(core, { backend, handle }, core);
    }
    // No own property may shadow byteLength or buffer: the memory checks rely on them.
    Object.freeze(this);
  }

  /**
   * A new zero-filled, readable and writable segment.
   *
   * @param byteLength - a safe integer `>= 0`; `0` gives an empty segment.
   * @returns the segment.
   * @throws {TypeError} when `byteLength` is not a number.
   * @throws {RangeError} when it is negative, fractional, not finite or above 2^53 - 1.
   * @throws {SegmentError} when the system cannot map that much (`ENOMEM`, …).
   * @example
   * ```ts
   * const seg = Segment.create(64 << 20);
   * ```
   */
  static create(byteLength: number): Segment {
    const length = checkLength(byteLength, 'byteLength');
    const backend = currentBackend();
    const handle = length === 0 ? undefined : backend.create(roundUp(length, backend.pageSize));
    return make(backend, length, handle);
  }

  /**
   * A new segment holding a copy of the bytes of `source`.
   *
   * @param source - an ArrayBuffer, SharedArrayBuffer, typed array or DataView.
   * @throws {TypeError} when `source` is none of those.
   * @throws {SegmentError} when the system cannot map the memory.
   * @example
   * ```ts
   * const seg = Segment.from(new TextEncoder().encode('hello'));
   * ```
   */
  static from(source: ArrayBuffer | SharedArrayBuffer | ArrayBufferView): Segment {
    let bytes: Uint8Array;
    if (ArrayBuffer.isView(source)) {
      bytes = new Uint8Array(source.buffer, source.byteOffset, source.byteLength);
    } else if (source instanceof ArrayBuffer || isSharedArrayBuffer(source)) {
      bytes = new Uint8Array(source as ArrayBuffer);
    } else {
      throw new TypeError(`Invalid source: expected an ArrayBuffer or ArrayBufferView, got ${describe(source)}`);
    }
    const length = bytes.byteLength;
    const backend = currentBackend();
    const seg = make(backend, length, length === 0 ? undefined : backend.create(roundUp(length, backend.pageSize)));
    if (bytes.byteLength <= seg.#backend.maxViewLength) {
      new Uint8Array(seg.buffer).set(bytes);
      return seg;
    }
    try {
      // Larger than one ArrayBuffer may be here: copy window by window.
      const window = Math.min(seg.#backend.maxViewLength, 1 << 30);
      for (let off = 0; off < bytes.byteLength; off += window) {
        const n = Math.min(window, bytes.byteLength - off);
        const target = new Uint8Array(seg.view(off, n));
        target.set(bytes.subarray(off, off + n));
        // The window is ours alone: detach it now rather than keep it tracked.
        seg.#forget(target.buffer);
      }
    } catch (err) {
      seg.close();
      throw err;
    }
    return seg;
  }

  /** The length given at creation (not rounded to pages). */
  get byteLength(): number {
    return this.#byteLength;
  }

  /** Whether `close()` has been called. */
  get closed(): boolean {
    return this.#core === undefined;
  }

  /**
   * An ArrayBuffer that aliases the whole segment; the same object on every read.
   *
   * @throws {RangeError} when the segment is larger than one ArrayBuffer may be on this runtime: use {@link Segment.view}.
   * @throws {SegmentError} when the segment is closed.
   */
  get buffer(): ArrayBuffer {
    const core = this.#open('read buffer');
    if (core.buffer !== undefined) return core.buffer;
    if (this.#byteLength > this.#backend.maxViewLength) {
      throw new RangeError(
        `Cannot read buffer: ${this.#byteLength} bytes exceed the ${this.#backend.maxViewLength}-byte ArrayBuffer limit of this runtime; use view(byteOffset, byteLength) instead`,
      );
    }
    core.buffer = this.#makeView(core, 0, this.#byteLength);
    return core.buffer;
  }

  /** The start address, for passing to other FFI code (`0n` for an empty segment). */
  get address(): bigint {
    const core = this.#open('read address');
    return core.handle === undefined ? 0n : this.#backend.address(core.handle);
  }

  /**
   * An ArrayBuffer aliasing part of the segment.
   *
   * @param byteOffset - where the view starts; any offset, default 0.
   * @param byteLength - its length; default the rest of the segment.
   * @throws {TypeError} when an argument is not a number.
   * @throws {RangeError} when the range falls outside the segment, or is longer than `backend.maxViewLength`.
   * @throws {SegmentError} when the segment is closed.
   * @example
   * ```ts
   * const page = new Uint8Array(seg.view(4096, 4096));
   * ```
   */
  view(byteOffset: number = 0, byteLength?: number): ArrayBuffer {
    const core = this.#open('create view');
    const offset = checkLength(byteOffset, 'byteOffset');
    if (offset > this.#byteLength) {
      throw new RangeError(`Invalid byteOffset: ${offset} is beyond the segment's ${this.#byteLength} bytes`);
    }
    const length = byteLength === undefined ? this.#byteLength - offset : checkLength(byteLength, 'byteLength');
    if (offset + length > this.#byteLength) {
      throw new RangeError(
        `Invalid byteLength: ${offset} + ${length} is beyond the segment's ${this.#byteLength} bytes`,
      );
    }
    if (length > this.#backend.maxViewLength) {
      throw new RangeError(
        `Invalid byteLength: ${length} exceeds the ${this.#backend.maxViewLength}-byte ArrayBuffer limit of this runtime`,
      );
    }
    return this.#makeView(core, offset, length);
  }

  /**
   * A copy-on-write copy of the current contents. Both segments stay readable
   * and writable; a write to either is never seen by the other.
   *
   * @returns the new segment.
   * @throws {SegmentError} when the system fails; this segment is then unchanged and usable.
   * @example
   * ```ts
   * using snapshot = seg.clone();
   * ```
   */
  clone(): Segment {
    const core = this.#open('clone segment');
    const handle = core.handle === undefined ? undefined : this.#backend.clone(core.handle);
    return make(this.#backend, this.#byteLength, handle);
  }

  /**
   * Makes this segment's contents equal to `source`'s current contents,
   * sharing pages copy-on-write. The address, `buffer` and views stay valid.
   *
   * @param source - a segment of the same `byteLength`; it stays as it was.
   * @throws {TypeError} when `source` is not a Segment.
   * @throws {RangeError} when the lengths differ.
   * @throws {SegmentError} when either segment is closed, or the system fails (both then read as before).
   * @example
   * ```ts
   * const snapshot = state.clone();
   * mutate(state);
   * state.restore(snapshot); // roll back
   * ```
   */
  restore(source: Segment): void {
    const core = this.#open('restore segment');
    if (typeof source !== 'object' || source === null || !(#core in source)) {
      throw new TypeError(`Invalid source: expected a Segment, got ${describe(source)}`);
    }
    const from = source.#core;
    if (from === undefined) throw closedError('restore segment: source');
    if (source.byteLength !== this.#byteLength) {
      throw new RangeError(
        `Invalid source: its byteLength ${source.byteLength} differs from this segment's ${this.#byteLength}`,
      );
    }
    if (source === this || core.handle === undefined) return;
    if (source.#backend !== this.#backend) {
      throw new TypeError('Invalid source: it was made by another memfork backend');
    }
    this.#backend.restore(core.handle, from.handle);
  }

  /** Figures about this segment. */
  stats(): SegmentStats {
    const core = this.#open('read stats');
    if (core.handle === undefined) return { byteLength: 0, privateBytes: 0, sharedBytes: 0, mappings: 0 };
    return { byteLength: this.#byteLength, ...this.#backend.stats(core.handle) };
  }

  /**
   * Releases the segment. Idempotent. Every ArrayBuffer it handed out is
   * detached first (its `byteLength` becomes 0). Other segments, clones
   * included, are unaffected.
   *
   * @throws {SegmentError} when unmapping fails; calling `close()` again retries.
   */
  close(): void {
    const core = this.#core;
    if (core === undefined) {
      this.#retryRelease();
      return;
    }
    this.#core = undefined;
    this.#pending = core;
    // A tracked buffer that is already detached was moved by someone else: by
    // a transfer memfork followed (the new buffer is tracked too), or by a
    // path it could not guard, to a buffer nothing can detach.
    let escaped = false;
    for (const ref of core.views) {
      const ab = ref.deref();
      if (ab === undefined) continue;
      if (ab.byteLength === 0 && !followed.has(ab)) escaped = true;
      else detach(ab);
    }
    core.views.clear();
    core.buffer = undefined;
    if (core.handle === undefined) return;
    if (escaped) {
      this.#keep(core);
      return;
    }
    core.releasePending = true;
    this.#retryRelease();
  }

  /** `close()`, for `using`. */
  [Symbol.dispose](): void {
    // Checked first: called on anything else, `this.close()` would be that
    // object's own close (Deno's global close() ends the process).
    if (!(#core in this)) {
      throw new TypeError(`Symbol.dispose called on ${describe(this)}: expected a Segment`);
    }
    this.close();
  }

  #pending: Core | undefined;

  /** Closes without releasing: a buffer moved out of reach still aliases the memory. */
  #keep(core: Core): void {
    finalizer.unregister(core);
    live--;
    this.#pending = undefined;
    kept.push({ backend: this.#backend, handle: core.handle });
    if (warnedKept) return;
    warnedKept = true;
    console.warn(
      'memfork: an ArrayBuffer of a closed segment had been moved out of it by a transfer memfork could not refuse ' +
        "(Deno's worker_threads.postMessageToThread, or a structuredClone, postMessage or ArrayBuffer.prototype.transfer taken before memfork loaded); " +
        'the segment\'s memory stays mapped so that buffer never reads freed memory',
    );
  }

  #retryRelease(): void {
    const core = this.#pending;
    if (core === undefined || !core.releasePending) return;
    finalizer.unregister(core);
    try {
      this.#backend.release(core.handle);
    } catch (err) {
      // Still mapped, and still counted: a later close() retries, and if
      // there is none the garbage collector does once the segment is dropped.
      finalizer.register(core, { backend: this.#backend, handle: core.handle }, core);
      throw err;
    }
    live--;
    core.releasePending = false;
    this.#pending = undefined;
  }

  #open(operation: string): Core {
    const core = this.#core;
    if (core === undefined) throw closedError(operation);
    return core;
  }

  #makeView(core: Core, offset: number, length: number): ArrayBuffer {
    if (length === 0) return new ArrayBuffer(0);
    const ab = this.#backend.view(core.handle, offset, length);
    owners.set(ab, core);
    core.views.add(new WeakRef(ab));
    if (core.views.size >= 2 * core.swept + 64) {
      for (const ref of core.views) if (ref.deref() === undefined) core.views.delete(ref);
      core.swept = core.views.size;
    }
    return ab;
  }

  // How `util.inspect`, `console.log` and Deno's inspector show a segment:
  // `Segment { byteLength: 4096, closed: false, backend: 'linux', address: 0x…n }`,
  // or `Segment <closed> { byteLength: 4096, backend: 'linux' }`. Symbol-keyed
  // methods of the prototype, so the public type stays as API.md has it.
  static {
    // The class body never names the class: a bundler then has no reason to
    // rename it (esbuild would call it `_Segment` in stack traces).
    make = (backend, byteLength, handle) => new this(constructing, backend, byteLength, handle);
    function inspect(this: unknown): string {
      if (typeof this !== 'object' || this === null || !(#core in this)) return Object.prototype.toString.call(this);
      const seg = this as Segment;
      const name = seg.#backend.name;
      if (seg.closed) return `Segment <closed> { byteLength: ${seg.#byteLength}, backend: '${name}' }`;
      // Shown, not handed out: an unmapped clone stays unmapped.
      const handle = seg.#core!.handle;
      const address = handle === undefined ? 0n : seg.#backend.address(handle, false);
      return `Segment { byteLength: ${seg.#byteLength}, closed: false, backend: '${name}', address: 0x${address.toString(16)}n }`;
    }
    for (const key of [Symbol.for('nodejs.util.inspect.custom'), Symbol.for('Deno.customInspect')]) {
      Object.defineProperty(this.prototype, key, { value: inspect, writable: true, configurable: true });
    }
  }

  #forget(ab: ArrayBuffer): void {
    const core = this.#core;
    if (core === undefined) return;
    for (const ref of core.views) {
      if (ref.deref() === ab) {
        core.views.delete(ref);
        break;
      }
    }
    detach(ab);
  }
}

function isSharedArrayBuffer(value: unknown): boolean {
  return typeof SharedArrayBuffer !== 'undefined' && value instanceof SharedArrayBuffer;
}
