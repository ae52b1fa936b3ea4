// What differs between JavaScript runtimes: how large one ArrayBuffer may be,
// and how to detach an ArrayBuffer that aliases memory about to be unmapped.
import * as v8 from 'node:v8';
import * as vm from 'node:vm';
import * as threads from 'node:worker_threads';

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

/** The error every guarded entry point throws for a segment's buffer in a transfer list. */
function refusal(): Error {
  const message =
    'Cannot transfer an ArrayBuffer of a memfork segment: its memory belongs to the segment; copy it (omit it from the transfer list) instead';
  return typeof DOMException === 'function' ? new DOMException(message, 'DataCloneError') : new TypeError(message);
}

/**
 * The transfer list a call received as `arg` (an array, an iterable, or an
 * options object with `transfer`), checked against `owned`, and the argument
 * to pass on: an iterable is read once here, so the call gets an array.
 */
function checkedTransfers(arg: unknown, owned: (value: unknown) => boolean): unknown {
  if (arg === null || typeof arg !== 'object') return arg;
  const check = (list: unknown): unknown[] | undefined => {
    if (list === null || typeof list !== 'object') return undefined;
    const items = Array.isArray(list)
      ? list
      : typeof (list as Iterable<unknown>)[Symbol.iterator] === 'function'
        ? Array.from(list as Iterable<unknown>)
        : undefined;
    if (items !== undefined) for (const item of items) if (owned(item)) throw refusal();
    return items;
  };
  if (Array.isArray(arg) || typeof (arg as Iterable<unknown>)[Symbol.iterator] === 'function') return check(arg);
  const options = arg as { transfer?: unknown };
  const transfer = options.transfer;
  const items = check(transfer);
  return items === undefined || items === transfer ? arg : { ...options, transfer: items };
}

type Method = (this: unknown, ...args: unknown[]) => unknown;

/** The methods already guarded, so that one reached twice is wrapped once. */
const guardedMethods = new WeakSet<Method>();

/** Replaces `target[key]` (a method taking its transfer list at `index`) by one that checks the list first. */
function guardMethod(target: object | null | undefined, key: string, index: number, owned: (value: unknown) => boolean): void {
  if (target === null || target === undefined) return;
  const descriptor = Object.getOwnPropertyDescriptor(target, key);
  const original = descriptor?.value as Method | undefined;
  if (typeof original !== 'function' || guardedMethods.has(original)) return;
  if (!descriptor!.writable && !descriptor!.configurable) return;
  const guarded = {
    [key](this: unknown, ...args: unknown[]): unknown {
      if (args.length > index) args[index] = checkedTransfers(args[index], owned);
      return original.apply(this, args);
    },
  }[key];
  Object.defineProperty(guarded, 'length', { value: original.length });
  guardedMethods.add(guarded);
  Object.defineProperty(target, key, { ...descriptor, value: guarded });
}

/**
 * Makes `structuredClone` and every `postMessage` of this runtime refuse, with
 * a `DataCloneError`, a transfer list that holds a buffer `owned` recognises.
 *
 * Only Deno needs it. Node.js 22+ and Bun refuse to transfer an ArrayBuffer
 * over outside memory by themselves, and Node.js 20 copies it. Deno moves the
 * memory to a new ArrayBuffer that nothing can detach, and the one mark it
 * honours per buffer (a V8 detach key, set by `markAsUntransferable`) also
 * stops `close()` from detaching the buffer. So the entry points are guarded
 * instead: `structuredClone`, `postMessage` of `MessagePort`, `Worker`, a
 * worker's global scope, and `node:worker_threads` (`Worker`, `parentPort`).
 * A function captured before memfork loaded is out of reach; `close()` then
 * keeps the memory (see `Segment#close`).
 */
export function guardMessages(owned: (value: unknown) => boolean): void {
  if (runtimeName !== 'deno') return;
  const g = globalThis as unknown as Record<string, { prototype?: object } | undefined>;
  guardMethod(globalThis, 'structuredClone', 1, owned);
  guardMethod(g.MessagePort?.prototype, 'postMessage', 1, owned);
  guardMethod(g.Worker?.prototype, 'postMessage', 1, owned);
  // A worker's own postMessage (the global scope's, or its prototype's).
  guardMethod(globalThis, 'postMessage', 1, owned);
  guardMethod(Object.getPrototypeOf(globalThis) as object, 'postMessage', 1, owned);
  guardMethod(threads.Worker?.prototype, 'postMessage', 1, owned);
  if (threads.parentPort !== null) {
    guardMethod(threads.parentPort, 'postMessage', 1, owned);
    guardMethod(Object.getPrototypeOf(threads.parentPort) as object, 'postMessage', 1, owned);
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
