// memfork: copy-on-write copies of memory inside one process.
import type { Backend, BackendName } from './backend.ts';
import { chooseBackend, readOverride } from './backend.ts';
import { liveSegments, setBackend } from './segment.ts';
import type { MemoryStats } from './segment.ts';
import { loadBackend } from './load.ts';
import { isMainThread } from 'node:worker_threads';

export { Segment } from './segment.ts';
export type { SegmentStats, MemoryStats } from './segment.ts';
export { SegmentError } from './errors.ts';
export type { BackendName } from './backend.ts';

/** Which backend this process uses, and its limits. */
export interface BackendInfo {
  /** `'linux'`, `'darwin'` or `'copy'`. */
  readonly name: BackendName;
  /** Bytes per page. */
  readonly pageSize: number;
  /** The largest `byteLength` a single `buffer` or `view()` may have on this runtime. */
  readonly maxViewLength: number;
}

const env = readOverride(() => (typeof process !== 'undefined' ? process.env.MEMFORK_BACKEND : undefined));
const chosen = chooseBackend(typeof process !== 'undefined' ? process.platform : 'unknown', env.value);
if (env.unreadable !== undefined) {
  console.warn(`memfork: MEMFORK_BACKEND cannot be read (${env.unreadable}): using ${chosen.name}`);
}
if (chosen.warning !== undefined) console.warn(`memfork: ${chosen.warning}`);
const active: Backend = loadBackend(chosen.name);
setBackend(active);
// A worker's segments would outlive it: its finalizers never run, and the
// process goes on. Release them, and the backend's own descriptors, on exit.
if (!isMainThread && typeof process !== 'undefined' && typeof process.once === 'function') {
  process.once('exit', () => active.shutdown?.());
}

/**
 * The backend chosen at load time (from the platform, or `MEMFORK_BACKEND`).
 *
 * @example
 * ```ts
 * console.log(backend.name, backend.pageSize, backend.maxViewLength);
 * ```
 */
export const backend: BackendInfo = Object.freeze({
  name: active.name,
  pageSize: active.pageSize,
  maxViewLength: active.maxViewLength,
});

/**
 * Process-wide figures: live segments, backing layers and the bytes in them,
 * bytes private to segments, and the mappings all segments use together.
 *
 * @example
 * ```ts
 * const { segments, mappings } = memoryStats();
 * ```
 */
export function memoryStats(): MemoryStats {
  return { segments: liveSegments(), ...active.memory() };
}
