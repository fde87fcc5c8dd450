// The JavaScript SDK, natively (node --test sdk/js/test): its types, the
// conversion to and from the wire types as componentize-js lifts and
// lowers them, and the examples.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { Channels, Driver, InvalidConfig, Unavailable, channel, reading, valueTypeOf } from '../src/index.js';
import { fromBatch, fromWireChannel, parseConfig, toBatch, toWireChannel, toWireError, toWireStatus } from '../src/convert.js';
import Scale from '../examples/scale.js';
import Sim from '../examples/sim.js';

test('value types: a number is a float unless its channel is int; bigint is int', () => {
  assert.equal(valueTypeOf(1), 'float');
  assert.equal(valueTypeOf(1n), 'int');
  assert.equal(valueTypeOf(true), 'boolean');
  assert.equal(valueTypeOf('x'), 'text');
  assert.equal(valueTypeOf(new Uint8Array([1])), 'bytes');
  assert.throws(() => valueTypeOf(null), TypeError);
  assert.throws(() => channel('a', 'complex'), TypeError);
  const table = new Channels([channel('n', 'int'), channel('t', 'float')]);
  const b = toBatch(table, [reading(0, 3), reading(1, 3), reading(0, 2.5)]);
  assert.deepEqual([...b.ints.channels], [0]);
  assert.deepEqual([...b.ints.values], [3n]);
  // 2.5 on an int channel goes as a float: the runtime rejects and counts it.
  assert.deepEqual([...b.floats.channels], [1, 0]);
});

test('names are declared once, units tell channels apart, odd readings keep their own time', () => {
  const table = new Channels([channel('t', 'float', { unit: 'degC' })]);
  const first = toBatch(table, [
    reading('t', 1.5, { unit: 'degC' }),
    reading('n', 2n),
    reading(0, 9.5, { unit: 'degF' }),
    reading('late', 'open', { timestampNs: 5n, quality: 'uncertain' }),
    reading('flag', false),
  ]);
  assert.deepEqual(first.added.map((c) => [c.name, c.unit, c.valueType, c.writable]), [
    ['n', undefined, 'int', true],
    ['t', 'degF', 'float', true],
    ['late', undefined, 'text', true],
    ['flag', undefined, 'boolean', true],
  ]);
  assert.equal(first.timestampNs, undefined);
  assert.deepEqual([...first.floats.channels], [0, 2]);
  assert.deepEqual(first.readings.map((r) => [r.channel, r.value.tag, r.timestampNs, r.quality]), [
    [3, 'text', 5n, 'uncertain'],
    [4, 'boolean', undefined, 'good'],
  ]);
  assert.deepEqual(toBatch(table, [reading('n', 3n)]).added, []);
  // Back from the wire: `readings`, then floats, then ints, ints as numbers.
  const back = fromBatch({ ...first, timestampNs: 7n });
  assert.deepEqual(back.map((r) => [r.channel, r.value, r.timestampNs]), [
    [3, 'open', 5n],
    [4, false, 7n],
    [0, 1.5, 7n],
    [2, 9.5, 7n],
    [1, 2, 7n],
  ]);
});

test('config, channels, status and errors cross as the WIT says', () => {
  assert.deepEqual(parseConfig(''), {});
  assert.deepEqual(parseConfig('null'), {});
  assert.throws(() => parseConfig('[1]'), InvalidConfig);
  assert.throws(() => parseConfig('{x'), InvalidConfig);
  const c = toWireChannel(channel('on', 'boolean', { writable: true, range: { min: 0, max: 1 } }));
  assert.deepEqual(fromWireChannel(c), { name: 'on', valueType: 'boolean', writable: true, range: { min: 0, max: 1 } });
  assert.deepEqual(toWireError(new Unavailable('gone')), { tag: 'unavailable', val: 'gone' });
  assert.deepEqual(toWireError(new TypeError('x')), { tag: 'other', val: 'TypeError: x' });
  assert.deepEqual(toWireStatus({ connected: true, signalQuality: 140, extra: { polls: 3 } }), {
    connected: true,
    firmware: undefined,
    batteryPercent: undefined,
    signalQuality: 100,
    extra: [['polls', '3']],
  });
  assert.throws(() => new Driver({ x: 1 }), InvalidConfig);
});

test('sim and scale examples: a counter, a scaled renamed sine, errors named', () => {
  const sim = new Sim({
    seed: 3,
    channels: [
      { name: 'temperature', signal: 'sine', offset: 20, amplitude: 5, unit: 'degC' },
      { name: 'parts', signal: 'counter', step: 2 },
    ],
  });
  const table = new Channels(sim.channels());
  const scale = new Scale({ channels: { temperature: { gain: 1.8, offset: 32, rename: 'temperature_f', unit: 'degF' } } });
  const derived = scale.channels(table);
  assert.deepEqual(derived.map((c) => [c.name, c.unit]), [['temperature_f', 'degF']]);
  for (const c of derived) table.push(c);
  const counts = [];
  for (let i = 0; i < 3; i++) {
    const raw = toBatch(table, sim.poll());
    const t = raw.floats.values[0];
    assert.ok(t >= 15 && t <= 25, `${t}`);
    const out = toBatch(table, scale.process(fromBatch(raw), table));
    assert.equal(out.timestampNs, raw.timestampNs);
    assert.deepEqual([...out.floats.channels], [2]);
    assert.ok(Math.abs(out.floats.values[0] - (t * 1.8 + 32)) < 1e-9);
    counts.push(Number(out.ints.values[0]));
  }
  assert.deepEqual(counts, [0, 2, 4]);
  assert.throws(() => new Sim({ channels: [{ name: 'a', signal: 'square' }] }), /channels\[0\]\.signal/);
});

test('the WIT shipped in the package is the runtime\'s', async (t) => {
  const { readdir, readFile, stat } = await import('node:fs/promises');
  const shipped = new URL('../wit/', import.meta.url);
  const source = new URL('../../macros/wit/0.2.0/', import.meta.url);
  try {
    await stat(source);
  } catch {
    t.skip('outside the ferrule repository');
    return;
  }
  const names = (await readdir(source)).filter((n) => n.endsWith('.wit')).sort();
  assert.deepEqual((await readdir(shipped)).filter((n) => n.endsWith('.wit')).sort(), names);
  for (const n of names) {
    assert.equal(await readFile(new URL(n, shipped), 'utf8'), await readFile(new URL(n, source), 'utf8'), n);
  }
});
