// What differs between JavaScript runtimes: how large one ArrayBuffer may be,
// and how to detach an ArrayBuffer that aliases memory about to be unmapped.
import * as v8 from 'node:v8';
import * as vm from 'node:vm';

/** `'node'`, `'bun'` or `'deno'`. */
export const runtimeName: 'node' | 'bun' | 'deno' =
  typeof (globalThis as { Bun?: unknown }).Bun !== 'undefined'
    ? 'bun'
    : typeof (globalThis as { Deno?: unknown }).Deno !== 'undefined'
      ? 'deno'
      : 'node';

const GiB4 = 2 ** 32;

/** Major version of Node.js (or of the Node.js API a runtime reports). */
function nodeMajor(): number {
  const v = typeof process !== 'undefined' ? process.versions?.node : undefined;
  return v === undefined ? 0 : Number.parseInt(v, 10);
}

/**
 * The largest ArrayBuffer one view may have. A larger external ArrayBuffer
 * aborts the process on Node.js before 22 and on Bun (its V8/JSC limit is
 * 4 GiB); Deno and Node.js 22+ take buffers up to 2^53 - 1 bytes.
 */
export const maxViewLength: number =
  runtimeName === 'bun' || (runtimeName === 'node' && nodeMajor() < 22) ? GiB4 : Number.MAX_SAFE_INTEGER;

type Transfer = (this: ArrayBuffer, newLength?: number) => ArrayBuffer;

// This context's own ArrayBuffer.prototype.transfer and transferToFixedLength,
// as the runtime made them (before guardTransfers wraps them).
const nativeTransfer = (ArrayBuffer.prototype as { transfer?: Transfer }).transfer;

/**
 * Wraps this context's `ArrayBuffer.prototype.transfer` and
 * `transferToFixedLength` so that `adopt(from, to)` learns of every buffer
 * moved out of another: moving an ArrayBuffer over outside memory hands the
 * same memory to the new buffer, which must then be detached on close() too.
 */
export function guardTransfers(adopt: (from: ArrayBuffer, to: ArrayBuffer) => void): void {
  for (const name of ['transfer', 'transferToFixedLength'] as const) {
    const proto = ArrayBuffer.prototype as unknown as Record<string, Transfer | undefined>;
    const original = proto[name];
    if (typeof original !== 'function') continue;
    Object.defineProperty(ArrayBuffer.prototype, name, {
      configurable: true,
      enumerable: false,
      writable: true,
      value: {
        // A method (not an arrow) so `this` is the buffer; named as the original.
        [name](this: ArrayBuffer, ...args: [number?]): ArrayBuffer {
          const moved = original.apply(this, args);
          adopt(this, moved);
          return moved;
        },
      }[name],
    });
  }
}

function findTransfer(): Transfer | undefined {
  if (typeof nativeTransfer === 'function') return nativeTransfer;
  // Node.js 20 ships ArrayBuffer.prototype.transfer behind a V8 flag. Flags set
  // at run time apply to contexts made afterwards, so take it from a new one;
  // it works on ArrayBuffers of any context.
  try {
    v8.setFlagsFromString('--harmony-rab-gsab-transfer');
    const fromContext = vm.runInNewContext('ArrayBuffer.prototype.transfer') as unknown;
    return typeof fromContext === 'function' ? (fromContext as Transfer) : undefined;
  } catch {
    return undefined;
  }
}

let transfer: Transfer | undefined | null = null;

/** Whether this runtime can detach an ArrayBuffer (it is required to hand out aliasing views). */
export function canDetach(): boolean {
  if (transfer === null) transfer = findTransfer();
  return transfer !== undefined;
}

/**
 * Detaches `buffer`: its byteLength becomes 0 and every typed array over it
 * reads as empty, so nothing can reach the memory behind it any more.
 */
export function detach(buffer: ArrayBuffer): void {
  if (buffer.byteLength === 0 || !canDetach()) return;
  try {
    transfer!.call(buffer, 0);
  } catch {
    // Already detached, or not detachable: nothing refers to the memory then.
  }
}
