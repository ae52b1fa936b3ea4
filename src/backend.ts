// The internal interface every platform backend implements, and the choice of
// backend made once at load time.

/** Backend names, as `backend.name` reports them. */
export type BackendName = 'linux' | 'darwin' | 'copy';

/** Per-segment figures a backend reports (see `SegmentStats`). */
export interface BackendStats {
  privateBytes: number;
  sharedBytes: number;
  mappings: number;
}

/** Process-wide figures a backend reports (see `memoryStats()`). */
export interface BackendMemory {
  layers: number;
  layerBytes: number;
  privateBytes: number;
  mappings: number;
}

/**
 * One platform's implementation of copy-on-write memory. `src/segment.ts` does
 * every check that does not depend on the OS (arguments, closed state, views,
 * lengths of zero), so a backend only ever sees:
 * - handles it made and has not released,
 * - lengths that are positive multiples of `pageSize`,
 * - view ranges inside the handle, at most `maxViewLength` long, never empty.
 *
 * Every method that fails throws `SegmentError` and leaves every live handle's
 * bytes as they were.
 */
export interface Backend<H = unknown> {
  readonly name: BackendName;
  /** Bytes per page; always a power of two. */
  readonly pageSize: number;
  /** The largest ArrayBuffer a single view may be on this runtime. */
  readonly maxViewLength: number;
  /** New zero-filled, readable and writable memory of `length` bytes. */
  create(length: number): H;
  /** A copy-on-write copy of `source`'s current contents. */
  clone(source: H): H;
  /** Makes `target`'s contents equal to `source`'s, at `target`'s address. Never called with target === source. */
  restore(target: H, source: H): void;
  /** Unmaps the memory. On failure it throws and may be called again. */
  release(handle: H): void;
  /**
   * Start address of the memory, mapped and ready for other FFI code to
   * read and write; with `use` false only to be shown (inspect), where
   * nothing need be mapped for it.
   */
  address(handle: H, use?: boolean): bigint;
  /** An ArrayBuffer aliasing `length` bytes at `offset`. */
  view(handle: H, offset: number, length: number): ArrayBuffer;
  stats(handle: H): BackendStats;
  memory(): BackendMemory;
  /**
   * Releases every live handle and whatever the backend holds itself. Called
   * when a worker thread exits: its finalizers never run, and the process
   * lives on.
   */
  shutdown?(): void;
}

/**
 * Which backend to use: `MEMFORK_BACKEND` when it names one, otherwise the
 * platform's own (`copy` where no copy-on-write backend exists).
 *
 * @returns the name, and a warning to print when the override was not understood.
 */
export function chooseBackend(
  platform: string,
  override: string | undefined,
): { name: BackendName; warning?: string } {
  const native: BackendName = platform === 'linux' ? 'linux' : platform === 'darwin' ? 'darwin' : 'copy';
  if (override === undefined || override === '') return { name: native };
  const wanted = override.trim().toLowerCase();
  if (wanted === 'linux' || wanted === 'darwin' || wanted === 'copy') return { name: wanted };
  return {
    name: native,
    warning: `MEMFORK_BACKEND=${override} is not one of linux, darwin, copy: using ${native}`,
  };
}

/**
 * Reads `MEMFORK_BACKEND` through `read`. Where the runtime refuses to (Deno
 * without `--allow-env` throws NotCapable, whether the variable is set or not),
 * the value is unknown: `unreadable` says why, for a warning, and the platform's
 * own backend is used.
 */
export function readOverride(read: () => string | undefined): { value: string | undefined; unreadable?: string } {
  try {
    return { value: read() };
  } catch (err) {
    const e = err as { name?: unknown; message?: unknown } | null;
    const why = typeof e?.message === 'string' ? `${typeof e.name === 'string' ? `${e.name}: ` : ''}${e.message}` : String(err);
    return { value: undefined, unreadable: why.replace(/\s+/g, ' ').trim() };
  }
}
