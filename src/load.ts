// Loads the chosen backend. A backend opens its system libraries only here,
// so Linux never loads libSystem and macOS never loads libc.so.6.
//
// Every backend, the copy backend too, then runs one create → write → clone →
// write → restore → close cycle over two pages (selfTest). A backend that
// fails it in a way the system should not (a refused call, wrong bytes) is
// not used: memfork falls back to the copy backend with a one-line warning
// naming the failure, rather than load a backend whose every clone throws.
// Running out of a resource (ENOMEM, EMFILE, ...) is not such a failure: the
// copy backend would need the same memory, so the backend stays.
import type { Backend, BackendName } from './backend.ts';
import { canDetach, detach } from './runtime.ts';
import { SegmentError } from './errors.ts';
import { LinuxBackend } from '../platform/linux/index.ts';
import { CopyBackend } from '../platform/copy.ts';
import { DarwinBackend } from '../platform/darwin.ts';

/** Makes the backend called `name` (the real one; tests pass their own). */
export type BackendFactory = (name: BackendName) => Backend;

const makeBackend: BackendFactory = (name) =>
  name === 'linux' ? new LinuxBackend() : name === 'darwin' ? new DarwinBackend() : new CopyBackend();

/**
 * Codes of a system that ran out of something for now: the backend works, the
 * machine is short (the kern_return_t names are the macOS ones).
 */
const SHORTAGES: ReadonlySet<string> = new Set(['ENOMEM', 'EMFILE', 'ENFILE', 'EAGAIN', 'KERN_NO_SPACE', 'KERN_RESOURCE_SHORTAGE']);

/**
 * One create → write → clone → write → restore → close cycle over two pages
 * of `b`, checking the bytes at each step.
 *
 * @returns undefined when it passed, or what failed, in one line
 *   (`clone: mach_vm_remap KERN_INVALID_ARGUMENT: ...`), with `shortage` set
 *   when the failure was a resource running out.
 */
export function selfTest(b: Backend): { failure: string; shortage: boolean } | undefined {
  const length = 2 * b.pageSize;
  const handles: unknown[] = [];
  const views: ArrayBuffer[] = [];
  let step = 'create';
  const bytes = (h: unknown): Uint8Array => {
    const v = b.view(h, 0, length);
    views.push(v);
    return new Uint8Array(v);
  };
  try {
    const origin = b.create(length);
    handles.push(origin);
    step = 'write';
    const a = bytes(origin);
    a[0] = 1;
    a[length - 1] = 2;
    step = 'clone';
    const copy = b.clone(origin);
    handles.push(copy);
    step = 'write';
    const c = bytes(copy);
    if (c[0] !== 1 || c[length - 1] !== 2) return { failure: 'the clone does not read the bytes of its origin', shortage: false };
    c[0] = 3;
    a[length - 1] = 4;
    if (a[0] !== 1 || c[length - 1] !== 2) return { failure: 'a write to a clone or its origin shows in the other', shortage: false };
    step = 'restore';
    b.restore(origin, copy);
    if (at(a, 0) !== 3 || at(a, length - 1) !== 2) return { failure: 'restore() did not bring back the bytes of the source', shortage: false };
    a[0] = 5;
    if (at(c, 0) !== 3) return { failure: 'a write after restore() shows in the source', shortage: false };
    step = 'close';
    for (const v of views.splice(0)) detach(v);
    while (handles.length > 0) b.release(handles.pop());
    return undefined;
  } catch (err) {
    const shortage = err instanceof SegmentError && SHORTAGES.has(err.code);
    return { failure: `${step}: ${oneLine(err)}`, shortage };
  } finally {
    // Safety: the views are detached before the memory behind them goes.
    for (const v of views) detach(v);
    for (const h of handles) {
      try {
        b.release(h);
      } catch {
        // What could not be released stays mapped; the backend is not used.
      }
    }
  }
}

/**
 * The backend called `name`, or the portable `copy` backend (with a one-line
 * warning) when that one cannot load here (an unsupported system, a runtime
 * that refuses ArrayBuffers over outside memory, as Electron does) or fails
 * its self-test.
 *
 * @param make - makes the backend; the real constructors by default.
 */
export function loadBackend(name: BackendName, make: BackendFactory = makeBackend): Backend {
  let b: Backend;
  try {
    if (name !== 'copy' && !canDetach()) throw new Error('this runtime cannot detach ArrayBuffers');
    b = make(name);
  } catch (err) {
    if (name === 'copy') throw err;
    console.warn(`memfork: the ${name} backend cannot load (${oneLine(err)}); using the copy backend`);
    return make('copy');
  }
  const failed = selfTest(b);
  if (failed === undefined || failed.shortage) return b;
  if (name === 'copy') {
    // Nothing to fall back to: say so, and go on with it.
    console.warn(`memfork: the copy backend failed its self-test (${failed.failure})`);
    return b;
  }
  try {
    b.shutdown?.();
  } catch {
    // It is not used any more.
  }
  console.warn(`memfork: the ${name} backend failed its self-test (${failed.failure}); using the copy backend`);
  return make('copy');
}

/** A byte, read afresh (the compiler would narrow `a[i]` to the value last written). */
function at(bytes: Uint8Array, i: number): number | undefined {
  return bytes[i];
}

/** An error's message on one line, whatever the system's message looks like. */
function oneLine(err: unknown): string {
  return String((err as Error)?.message ?? err).replace(/\s+/g, ' ').trim();
}
