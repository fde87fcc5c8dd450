/**
 * Between the SDK's values and the `ferrule:plugin@0.2.0` wire types as
 * componentize-js lifts and lowers them (records as objects with camelCase
 * fields, variants as `{tag, val}`, enums as strings, `u64`/`s64` as
 * bigints). Free of imports from the host, so it runs under Node.js too.
 * @module ferrule-sdk/convert
 */

import { Channels, InvalidConfig, PluginError, valueTypeOf } from './index.js';

const INT_MIN = -(2n ** 63n);
const INT_MAX = 2n ** 63n - 1n;
const U64_MAX = 2n ** 64n - 1n;

/** @param {unknown} ts @returns {bigint | undefined} */
function toNs(ts) {
  if (ts === undefined || ts === null) return undefined;
  const ns = typeof ts === 'bigint' ? ts : BigInt(Math.round(Number(ts)));
  if (ns < 0n || ns > U64_MAX) throw new RangeError(`timestampNs ${ts} is outside 0..2^64`);
  return ns;
}

/** @param {bigint} v */
function checkInt(v) {
  if (v < INT_MIN || v > INT_MAX) throw new RangeError(`integer reading ${v} does not fit in 64 bits`);
  return v;
}

/**
 * A reading's value as the wire variant, typed by its channel where the
 * value alone does not say (a whole number on an int channel is an int).
 * @param {import('./index.js').Value} v @param {string | undefined} declared
 */
export function toWireValue(v, declared) {
  const kind = typeof v === 'number' && declared === 'int' && Number.isInteger(v) ? 'int' : valueTypeOf(v);
  switch (kind) {
    case 'float':
      return { tag: 'float', val: v };
    case 'int':
      return { tag: 'int', val: checkInt(BigInt(v)) };
    case 'boolean':
      return { tag: 'boolean', val: v };
    case 'text':
      return { tag: 'text', val: v };
    default:
      return { tag: 'bytes', val: v };
  }
}

/** A wire value for a plugin: ints as numbers when exact, else bigints. */
export function fromWireValue(v) {
  if (v.tag === 'int') {
    const n = Number(v.val);
    return Number.isSafeInteger(n) ? n : v.val;
  }
  return v.val;
}

/** @param {import('./index.js').Channel} c */
export function toWireChannel(c) {
  if (!c || typeof c.name !== 'string') throw new TypeError(`a channel needs a name: ${JSON.stringify(c)}`);
  const range = c.range ? { min: Number(c.range.min), max: Number(c.range.max) } : undefined;
  return {
    name: c.name,
    unit: c.unit ?? undefined,
    valueType: c.valueType ?? 'float',
    description: c.description ?? undefined,
    address: c.address ?? undefined,
    range,
    writable: Boolean(c.writable),
  };
}

/** @returns {import('./index.js').Channel} */
export function fromWireChannel(c) {
  const out = { name: c.name, valueType: c.valueType, writable: c.writable };
  if (c.unit !== undefined && c.unit !== null) out.unit = c.unit;
  if (c.description !== undefined && c.description !== null) out.description = c.description;
  if (c.address !== undefined && c.address !== null) out.address = c.address;
  if (c.range !== undefined && c.range !== null) out.range = { min: c.range.min, max: c.range.max };
  return out;
}

/**
 * Readings as a wire batch; names not in `table` are declared in `added`.
 * Good floats and ints at the batch's time go in its columns.
 * @param {Channels} table @param {import('./index.js').Reading[]} readings
 */
export function toBatch(table, readings) {
  const list = readings ? Array.from(readings) : [];
  const stamps = list.map((r) => toNs(r?.timestampNs));
  const first = stamps[0];
  const shared = first !== undefined && stamps.every((ts) => ts === first) ? first : undefined;
  const added = [];
  const rest = [];
  const fc = [], fv = [], ic = [], iv = [];
  for (const [i, r] of list.entries()) {
    if (!r || typeof r !== 'object') throw new TypeError(`a plugin returns readings, not ${JSON.stringify(r)}`);
    const index = table.resolve(r, added);
    const ts = stamps[i];
    const atBatchTime = ts === undefined || ts === shared;
    const quality = r.quality ?? 'good';
    const value = toWireValue(r.value, table.get(index)?.valueType);
    if (atBatchTime && quality === 'good' && value.tag === 'float') {
      fc.push(index);
      fv.push(value.val);
    } else if (atBatchTime && quality === 'good' && value.tag === 'int') {
      ic.push(index);
      iv.push(value.val);
    } else {
      rest.push({ channel: index, value, timestampNs: atBatchTime ? undefined : ts, quality });
    }
  }
  return {
    added: added.map(toWireChannel),
    timestampNs: shared,
    readings: rest,
    floats: { channels: Uint32Array.from(fc), values: Float64Array.from(fv) },
    ints: { channels: Uint32Array.from(ic), values: BigInt64Array.from(iv) },
  };
}

/** A wire batch's readings, by index, each with its timestamp. */
export function fromBatch(batch) {
  const shared = batch.timestampNs ?? undefined;
  const out = [];
  for (const r of batch.readings) {
    out.push({ channel: r.channel, value: fromWireValue(r.value), timestampNs: r.timestampNs ?? shared, quality: r.quality });
  }
  const at = (channel, value) => ({ channel, value, timestampNs: shared, quality: 'good' });
  const f = batch.floats;
  for (let i = 0; i < f.channels.length; i++) out.push(at(f.channels[i], f.values[i]));
  const n = batch.ints;
  for (let i = 0; i < n.channels.length; i++) out.push(at(n.channels[i], fromWireValue({ tag: 'int', val: BigInt(n.values[i]) })));
  return out;
}

/** A plugin's JSON config as an object. */
export function parseConfig(text) {
  let config;
  try {
    config = text.trim() ? JSON.parse(text) : {};
  } catch (e) {
    throw new InvalidConfig(`config is not JSON: ${e.message}`);
  }
  if (config === null) return {};
  if (typeof config !== 'object' || Array.isArray(config)) throw new InvalidConfig('config must be a table');
  return config;
}

/** @param {unknown} v */
function percent(v) {
  return v === undefined || v === null ? undefined : Math.max(0, Math.min(100, Math.round(Number(v)) || 0));
}

/** A device status as the wire record. */
export function toWireStatus(s) {
  if (!s || typeof s !== 'object') return { connected: false, extra: [['error', `status() returned ${typeof s}`]] };
  return {
    connected: Boolean(s.connected),
    firmware: s.firmware ?? undefined,
    batteryPercent: percent(s.batteryPercent),
    signalQuality: percent(s.signalQuality),
    extra: Object.entries(s.extra ?? {}).map(([k, v]) => [String(k), String(v)]),
  };
}

/**
 * An exception as the WIT error a call returns (`{tag, val}`): the SDK's
 * errors keep their kind, anything else is `other`.
 * @param {unknown} e
 */
export function toWireError(e) {
  if (e instanceof PluginError) return { tag: e.kind, val: e.message };
  if (e instanceof Error) return { tag: 'other', val: `${e.name}: ${e.message}` };
  return { tag: 'other', val: `thrown: ${String(e)}` };
}

export { Channels };
