// How a segment shows in util.inspect / console.log, and the name its class
// and methods carry in stack traces.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { inspect } from 'node:util';
import { Segment, backend } from '../src/index.ts';

test('util.inspect shows a segment as Segment { byteLength, closed, backend, address }', () => {
  const seg = Segment.create(5000);
  try {
    const shown = inspect(seg);
    assert.equal(shown, `Segment { byteLength: 5000, closed: false, backend: '${backend.name}', address: 0x${seg.address.toString(16)}n }`);
    assert.match(inspect({ nested: [seg] }), /nested: \[\s*Segment \{ byteLength: 5000, closed: false/);
  } finally {
    seg.close();
  }
  assert.equal(inspect(seg), `Segment <closed> { byteLength: 5000, backend: '${backend.name}' }`);
  const empty = Segment.create(0);
  assert.equal(inspect(empty), `Segment { byteLength: 0, closed: false, backend: '${backend.name}', address: 0x0n }`);
  empty.close();
});

test('the class is named Segment, and so are its methods in stack traces', () => {
  assert.equal(Segment.name, 'Segment');
  const seg = Segment.create(1);
  seg.close();
  let stack = '';
  try {
    seg.clone();
  } catch (err) {
    stack = String((err as Error).stack);
  }
  assert.match(stack, /\bSegment\.clone\b|\bat clone\b/, stack);
  assert.doesNotMatch(stack, /_Segment/, stack);
});
