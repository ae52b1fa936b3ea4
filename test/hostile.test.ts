// Anything at all, fed to every public entry point: the only outcomes allowed
// are a result, a TypeError, a RangeError or a SegmentError (or an error the
// input's own trap threw, passed through). Never a crash, and a live witness
// segment never changes.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { Buffer } from 'node:buffer';
import fc from 'fast-check';
import { Segment, SegmentError, backend } from '../src/index.ts';

const page = backend.pageSize;
const LEN = 2 * page + 123;

/** Thrown by the traps of hostile inputs; passing it through is fine. */
class Hostile extends Error {}

let tried = 0;
const outcomes = new Map<string, number>();

function note(kind: string): void {
  outcomes.set(kind, (outcomes.get(kind) ?? 0) + 1);
}

/** Runs `fn` and lets only the allowed errors through; returns its result or `undefined`. */
function attempt(label: string, fn: () => unknown): unknown {
  tried++;
  try {
    const r = fn();
    note('returned');
    return r;
  } catch (err) {
    if (err instanceof SegmentError) note(`SegmentError ${err.code}`);
    else if (err instanceof RangeError) note('RangeError');
    else if (err instanceof TypeError) note('TypeError');
    else if (err instanceof Hostile) note('the input’s own error');
    else assert.fail(`${label} threw ${describe(err)}`);
    return undefined;
  }
}

function describe(value: unknown): string {
  if (value instanceof Error) return `${value.constructor.name}: ${value.message}`;
  try {
    return `${typeof value} ${String(value)}`;
  } catch {
    return typeof value;
  }
}

/** Anything a caller could pass, from plain values to traps. */
function hostileValues(victim: Segment): unknown[] {
  const revoked = Proxy.revocable({}, {});
  revoked.revoke();
  const trapAll = new Proxy(
    {},
    {
      get() {
        throw new Hostile('get');
      },
      getPrototypeOf() {
        throw new Hostile('getPrototypeOf');
      },
      has() {
        throw new Hostile('has');
      },
    },
  );
  const detachedView = new Uint8Array(new ArrayBuffer(16));
  structuredClone(detachedView.buffer, { transfer: [detachedView.buffer] });
  const sab = new SharedArrayBuffer(32);
  new Uint8Array(sab).fill(3);
  type Resizable = new (n: number, o: { maxByteLength: number }) => ArrayBuffer;
  let resizable: ArrayBuffer | undefined;
  try {
    resizable = new (ArrayBuffer as unknown as Resizable)(8, { maxByteLength: 64 });
  } catch {
    resizable = undefined;
  }
  class LyingLength extends Uint8Array {
    override get byteLength(): number {
      return 1 << 30;
    }
  }
  class ThrowingOffset extends Uint8Array {
    override get byteOffset(): number {
      throw new Hostile('byteOffset');
    }
  }
  class FractionalOffset extends Uint8Array {
    override get byteOffset(): number {
      return 1.5;
    }
  }
  const fake = Object.create(Segment.prototype) as object;
  return [
    revoked.proxy,
    trapAll,
    { valueOf: () => 4096 },
    {
      valueOf() {
        throw new Hostile('valueOf');
      },
    },
    { [Symbol.toPrimitive]: () => 1 },
    fake,
    new Proxy(victim, {}),
    Object.setPrototypeOf({ byteLength: LEN }, Segment.prototype),
    detachedView,
    detachedView.buffer,
    sab,
    new Uint16Array(sab, 2, 3),
    ...(resizable === undefined ? [] : [resizable, new Uint8Array(resizable), new DataView(resizable, 2)]),
    new DataView(new ArrayBuffer(10), 3, 4),
    new LyingLength(4),
    new ThrowingOffset(4),
    new FractionalOffset(4),
    new Float64Array([1.5, -0, NaN]),
    new BigInt64Array([-1n]),
    Buffer.from('hello'),
    Symbol('s'),
    10n,
    -1n,
    () => 1,
    Segment,
    Segment.prototype,
    globalThis,
    Object.create(null),
    new Number(5),
    '4096',
    -0,
    NaN,
    Infinity,
    -Infinity,
    0.5,
    -1,
    2 ** 53,
    2 ** 53 - 1,
    Number.MAX_VALUE,
    Number.MIN_VALUE,
    page,
    LEN,
    LEN + 1,
    2 ** 32,
    2 ** 47,
    2 ** 52,
  ];
}

const anything = fc.anything({
  withBigInt: true,
  withBoxedValues: true,
  withMap: true,
  withSet: true,
  withObjectString: true,
  withNullPrototype: true,
  withDate: true,
  withTypedArray: true,
  withSparseArray: true,
});

/** An argument: a generated value, a number near the edges, or one of the hostile values. */
const arg = fc.oneof(
  anything,
  fc.double(),
  fc.integer({ min: -(2 ** 31), max: 2 ** 31 }),
  fc.integer({ min: 0, max: LEN + 2 }),
  fc.nat({ max: 200 }).map((i) => ({ hostile: i })),
);

type Arg = unknown;

/** Replaces `{ hostile: i }` by the i-th hostile value (made fresh for each run). */
function materialize(a: Arg, pool: unknown[]): unknown {
  if (a !== null && typeof a === 'object' && Object.getPrototypeOf(a) === Object.prototype) {
    const keys = Object.keys(a);
    if (keys.length === 1 && keys[0] === 'hostile') return pool[(a as { hostile: number }).hostile % pool.length];
  }
  return a;
}

function expectedBytes(source: unknown): Uint8Array | undefined {
  try {
    if (ArrayBuffer.isView(source)) return new Uint8Array(source.buffer, source.byteOffset, source.byteLength).slice();
    if (source instanceof ArrayBuffer || source instanceof SharedArrayBuffer) return new Uint8Array(source).slice();
  } catch {
    return undefined;
  }
  return undefined;
}

const methods = ['clone', 'restore', 'view', 'stats', 'close'] as const;
const getters = ['buffer', 'address', 'closed'] as const;

function fill(seg: Segment, seed: number): void {
  const u = new Uint8Array(seg.buffer);
  for (let i = 0; i < u.length; i += 61) u[i] = (i * 7 + seed) & 0xff;
}

test('anything passed to every entry point throws only TypeError, RangeError or SegmentError, and a live segment never changes', (t) => {
  const witness = Segment.create(LEN);
  fill(witness, 1);
  const twin = witness.clone();
  const expected = new Uint8Array(witness.buffer).slice();
  const witnessBuffer = witness.buffer;
  const proto = Segment.prototype as unknown as Record<string, (...a: unknown[]) => unknown>;
  const getter = (name: string) => Object.getOwnPropertyDescriptor(Segment.prototype, name)!.get!;

  try {
    runAll();
  } finally {
    t.diagnostic(`${tried} calls tried; outcomes: ${[...outcomes].map(([k, n]) => `${k} ×${n}`).join(', ')}`);
  }
  assert.ok(tried > 1000, 'enough inputs were tried');

  assert.equal(witness.buffer, witnessBuffer, 'the witness still hands out the same buffer');
  assert.deepEqual(new Uint8Array(witness.buffer), expected, 'the witness is unchanged');
  assert.deepEqual(new Uint8Array(twin.buffer), expected, 'its clone is unchanged');
  twin.close();
  witness.close();

  function runAll(): void {
  fc.assert(
    fc.property(fc.array(arg, { minLength: 6, maxLength: 6 }), fc.nat(), (raw, pick) => {
      const victim = Segment.create(LEN);
      fill(victim, 2);
      const closed = Segment.create(page);
      closed.close();
      const tiny = Segment.create(1);
      const pool = [...hostileValues(victim), witness, twin, closed, tiny];
      const [a, b, c, d, e, f] = raw.map((x) => materialize(x, pool));
      const made: Segment[] = [tiny];
      const keep = (r: unknown): void => {
        if (r instanceof Segment) made.push(r);
      };

      // Static entry points.
      const created = attempt('Segment.create', () => Segment.create(a as number));
      keep(created);
      if (created instanceof Segment) {
        assert.equal(created.byteLength, a);
        if (created.byteLength > 0 && created.byteLength <= 1 << 16) {
          assert.ok(new Uint8Array(created.buffer).every((x) => x === 0), 'create() is zero-filled');
        }
      }
      for (const source of [a, b]) {
        const want = expectedBytes(source);
        const from = attempt('Segment.from', () => Segment.from(source as ArrayBuffer));
        keep(from);
        if (from instanceof Segment && want !== undefined && from.byteLength === want.length) {
          assert.deepEqual(from.byteLength === 0 ? new Uint8Array(0) : new Uint8Array(from.buffer), want, 'from() copies');
        }
      }
      attempt('new Segment', () => Reflect.construct(Segment, [a, b, c, d]));
      // The constructor is private to TypeScript, not to JavaScript.
      const Open = Segment as unknown as new (...args: unknown[]) => object;
      attempt('Segment subclass', () => new (class extends Open {})(a, b, c, d));

      // Instance methods, with anything as arguments.
      const v1 = attempt('view(a, b)', () => victim.view(c as number, d as number));
      if (v1 instanceof ArrayBuffer) assert.ok(v1.byteLength <= LEN);
      attempt('view(a)', () => victim.view(e as number));
      attempt('restore(x)', () => victim.restore(f as Segment));
      attempt('restore(pool)', () => victim.restore(pool[pick % pool.length] as Segment));
      keep(attempt('clone()', () => victim.clone()));

      // A closed segment: every method but close() says so.
      for (const m of methods) {
        if (m === 'close') continue;
        tried++;
        assert.throws(
          () => proto[m]!.call(closed, a, b),
          (err: unknown) => err instanceof SegmentError && err.code === 'ERR_SEGMENT_CLOSED',
          `${m}() on a closed segment`,
        );
      }
      for (const g of getters) {
        if (g === 'closed') continue;
        tried++;
        assert.throws(() => getter(g).call(closed), SegmentError, `${g} on a closed segment`);
      }
      attempt('close() on a closed segment', () => closed.close());

      // The wrong `this`: anything at all, or the right one with anything.
      // The witness and its twin are only ever arguments, never `this`.
      const notWitness = (x: unknown): unknown => (x === witness || x === twin ? victim : x);
      for (const x of [notWitness(a), notWitness(pool[pick % pool.length])]) {
        for (const m of methods) attempt(`${m}.call(x)`, () => proto[m]!.call(x, b, c));
        attempt('[Symbol.dispose].call(x)', () => (Segment.prototype[Symbol.dispose] as () => void).call(x));
        for (const g of getters) attempt(`${g} getter on x`, () => getter(g).call(x));
      }

      for (const s of made) attempt('close()', () => s.close());
      victim.close();
      assert.deepEqual(new Uint8Array(witness.buffer), expected, 'the witness is unchanged');
    }),
    { numRuns: 300, includeErrorInReport: true },
  );
  }
});

test('assigning to, redefining or deleting a segment’s public properties changes nothing', (t) => {
  const before = tried;
  const getter = (name: string) => Object.getOwnPropertyDescriptor(Segment.prototype, name)!.get!;
  fc.assert(
    fc.property(arg, arg, (rawValue, rawOther) => {
      const target = Segment.create(page);
      const pool = hostileValues(target);
      const value = materialize(rawValue, pool);
      const other = materialize(rawOther, pool);
      const record = target as unknown as Record<string, unknown>;
      try {
        for (const prop of ['byteLength', 'buffer', 'address', 'closed']) {
          attempt(`seg.${prop} = x`, () => {
            record[prop] = value;
          });
          attempt(`defineProperty(seg, ${prop})`, () => Object.defineProperty(target, prop, { value: other, writable: true }));
          attempt(`delete seg.${prop}`, () => delete record[prop]);
        }
        tried++;
        // Checked before any use: a segment that believed another length
        // would hand out views beyond its memory.
        assert.equal(target.byteLength, page, 'byteLength cannot be changed from outside');
        assert.equal(getter('closed').call(target), false);
        assert.equal((getter('buffer').call(target) as ArrayBuffer).byteLength, page);
      } finally {
        Segment.prototype.close.call(target);
      }
    }),
    { numRuns: 100, includeErrorInReport: true },
  );
  t.diagnostic(`${tried - before} calls tried`);
});

test('Symbol.dispose on anything but a segment throws TypeError and never calls that object’s close()', () => {
  const dispose = Segment.prototype[Symbol.dispose] as (this: unknown) => void;
  let called = 0;
  const lookalike = { close: () => called++ };
  const posing = Object.setPrototypeOf({ close: () => called++ }, Segment.prototype) as unknown;
  // globalThis as well: Deno's global close() ends the process.
  for (const x of [lookalike, posing, globalThis, undefined, null, 1]) {
    assert.throws(() => dispose.call(x), TypeError);
  }
  assert.equal(called, 0, 'a close() of the wrong object was called');
  const seg = Segment.create(page);
  dispose.call(seg);
  assert.equal(seg.closed, true);
  dispose.call(seg); // twice is fine, like close()
});

type Transfer = (this: ArrayBuffer, length?: number) => ArrayBuffer;

/**
 * `ArrayBuffer.prototype[name]` of this context. (Node.js 20 has the method
 * only in contexts made after memfork turns V8's flag on; memfork guards the
 * prototype of the context it is loaded in, and a user who takes the method
 * from a context of their own is out of its reach.)
 */
function bufferMethod(name: 'transfer' | 'transferToFixedLength'): Transfer | undefined {
  const own = (ArrayBuffer.prototype as unknown as Record<string, Transfer | undefined>)[name];
  return typeof own === 'function' ? own : undefined;
}

for (const name of ['transfer', 'transferToFixedLength'] as const) {
  const method = bufferMethod(name);
  test(
    `close() still cuts off a buffer the user moved with ArrayBuffer.prototype.${name}()`,
    { skip: method === undefined && `this runtime has no ArrayBuffer.prototype.${name}` },
    () => {
      const seg = Segment.create(2 * page);
      new Uint8Array(seg.buffer)[0] = 42;
      const views = [seg.buffer, seg.view(page, page)];
      const moved: ArrayBuffer[] = [];
      for (const v of views) {
        try {
          moved.push(method!.call(v));
        } catch (err) {
          // Refusing to move memory it does not own is fine too.
          assert.ok(err instanceof TypeError || err instanceof RangeError, String(err));
        }
      }
      seg.close();
      // Checked by length only: reading memory that is no longer mapped
      // would kill the process.
      for (const m of moved) {
        assert.equal(m.byteLength, 0, `a ${m === moved[0] ? 'buffer' : 'view'} moved away before close() was not detached: it aliases unmapped memory`);
      }
    },
  );
}
