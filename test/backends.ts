// The backends that load on this machine, for suites that run once per
// backend: Linux with each way of finding written pages, macOS (on Linux, over
// the simulated Mach calls of test/mach-sim.ts), and the portable copy
// backend. `useBackend` makes `Segment.create` use one of them.
import type { Backend } from '../src/backend.ts';
import { setBackend } from '../src/segment.ts';
import { CopyBackend } from '../platform/copy.ts';
import { LinuxBackend, type ScanMethod } from '../platform/linux/index.ts';
import { DarwinBackend } from '../platform/darwin.ts';
import { simulatedDarwin } from './mach-sim.ts';

/** One backend a suite can run against. */
export interface BackendCase {
  /** A name for test titles, e.g. `linux (pagemap-scan)`. */
  readonly name: string;
  /** A new instance of the backend. */
  make(): Backend;
}

function linuxCase(scan: ScanMethod): BackendCase | undefined {
  if (process.platform !== 'linux') return undefined;
  try {
    const probe = new LinuxBackend({ scan });
    if (probe.scanMethod !== scan) return undefined;
  } catch {
    return undefined;
  }
  return { name: `linux (${scan})`, make: () => new LinuxBackend({ scan }) };
}

/**
 * The macOS backend: the real one on macOS; on Linux the same code over a
 * simulation of the Mach calls, which lives on Linux memory.
 */
function darwinCase(): BackendCase | undefined {
  if (process.platform === 'darwin') return { name: 'darwin', make: () => new DarwinBackend() };
  if (process.platform === 'linux') return simulatedDarwin;
  return undefined;
}

const copy: BackendCase = { name: 'copy', make: () => new CopyBackend() };

/** Every backend that loads here, the native ones first. */
export const backends: readonly BackendCase[] = [
  linuxCase('pagemap-scan'),
  linuxCase('pagemap-read'),
  darwinCase(),
  copy,
].filter((b): b is BackendCase => b !== undefined);

/** The Linux backends that load here (none on other systems). */
export const linuxBackends: readonly BackendCase[] = backends.filter((b) => b.name.startsWith('linux'));

/**
 * Makes every segment created from now on use `backend` (a case is
 * instantiated first); returns the backend instance.
 */
export function useBackend(backend: BackendCase | Backend): Backend {
  const instance = 'make' in backend ? backend.make() : backend;
  setBackend(instance);
  return instance;
}

/**
 * Asserts that two byte arrays are equal, naming the first differing index
 * (fast on large arrays, unlike a deep comparison).
 */
export function assertBytes(actual: Uint8Array, expected: Uint8Array, what = 'bytes'): void {
  if (actual.byteLength !== expected.byteLength) {
    throw new Error(`${what}: length ${actual.byteLength}, expected ${expected.byteLength}`);
  }
  const a = Buffer.from(actual.buffer, actual.byteOffset, actual.byteLength);
  const b = Buffer.from(expected.buffer, expected.byteOffset, expected.byteLength);
  if (a.equals(b)) return;
  let i = 0;
  while (a[i] === b[i]) i++;
  throw new Error(`${what}: byte ${i} is ${a[i]}, expected ${b[i]}`);
}
