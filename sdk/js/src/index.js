/**
 * Write ferrule device drivers and data processors in JavaScript.
 *
 * A driver extends {@link Driver}, a processor {@link Processor}; the
 * module's default export is the plugin class. `ferrule-js build` bundles
 * the module and builds a WebAssembly component for the
 * `ferrule:plugin@0.2.0` world, which ferrule runs in its sandbox like a
 * plugin written in Rust.
 *
 * Readings go by channel name (the SDK maps each name to its index in the
 * channel table and declares a name it has not seen) or by index, the
 * position of a channel in the table the driver declares:
 *
 * ```js
 * import { Driver, channel, reading } from 'ferrule-sdk';
 *
 * export default class Counter extends Driver {
 *   constructor(config) { super(); this.next = config.start ?? 0; }
 *   channels() { return [channel('count', 'int')]; }
 *   poll() { return [reading(0, ++this.next)]; }
 * }
 * ```
 *
 * Values: a `number` is a float unless its channel is declared `int` (then
 * it must be an integer); a `bigint` is an int; `boolean`, `string` and
 * `Uint8Array` are booleans, text and bytes. Nothing here needs the
 * component runtime: a plugin's own tests import its module and call it
 * with Node.js.
 *
 * @module ferrule-sdk
 */

/** The version of the `ferrule:plugin` WIT package this SDK builds against. */
export const WIT_VERSION = '0.2.0';

/** @typedef {'float' | 'int' | 'boolean' | 'text' | 'bytes'} ValueType */
/** @typedef {'good' | 'uncertain' | 'bad'} Quality */
/** @typedef {number | bigint | boolean | string | Uint8Array} Value */

const VALUE_TYPES = ['float', 'int', 'boolean', 'text', 'bytes'];
const QUALITIES = ['good', 'uncertain', 'bad'];

/**
 * One channel of a device: what a reading's index stands for.
 * @typedef {object} Channel
 * @property {string} name unique within the driver; not empty, no control characters
 * @property {ValueType} valueType
 * @property {string} [unit] engineering unit: "degC", "kW"
 * @property {string} [description]
 * @property {string} [address] where the device keeps it: "holding:40001", "ns=2;s=Temp"
 * @property {{min: number, max: number}} [range] the range its values are expected in
 * @property {boolean} [writable] whether `write` accepts values for it
 */

/**
 * A channel declaration.
 * @param {string} name
 * @param {ValueType} [valueType='float']
 * @param {Omit<Partial<Channel>, 'name' | 'valueType'>} [more] unit, description, address, range, writable
 * @returns {Channel}
 */
export function channel(name, valueType = 'float', more = {}) {
  if (typeof name !== 'string') throw new TypeError(`a channel's name must be a string, not ${typeof name}`);
  if (!VALUE_TYPES.includes(valueType)) {
    throw new TypeError(`unknown value type ${JSON.stringify(valueType)}: ${VALUE_TYPES.join(', ')}`);
  }
  return { writable: false, ...more, name, valueType };
}

/**
 * One value of one channel at one moment.
 * @typedef {object} Reading
 * @property {string | number} channel a name, or an index in the channel table
 * @property {Value} value
 * @property {bigint | number} [timestampNs] nanoseconds since the Unix epoch; absent: the batch's time
 * @property {Quality} [quality] 'good' when absent
 * @property {string} [unit] used when the SDK declares a name it has not seen
 */

/**
 * A reading.
 * @param {string | number} channel a name or an index
 * @param {Value} value
 * @param {{timestampNs?: bigint | number, quality?: Quality, unit?: string}} [more]
 * @returns {Reading}
 */
export function reading(channel, value, more = {}) {
  if (more.quality !== undefined && !QUALITIES.includes(more.quality)) {
    throw new TypeError(`unknown quality ${JSON.stringify(more.quality)}: ${QUALITIES.join(', ')}`);
  }
  return { channel, value, ...more };
}

/** Nanoseconds since the Unix epoch, as a bigint (millisecond resolution). */
export function nowNs() {
  return BigInt(Date.now()) * 1_000_000n;
}

/** Why a plugin call failed; throw one of the subclasses. Any other
 * exception reaches the runtime as `other`, with its message (and its
 * stack in the log). */
export class PluginError extends Error {
  /** @returns {string} */
  get kind() {
    return 'other';
  }
}

/** The plugin's configuration is wrong; say what and where. */
export class InvalidConfig extends PluginError {
  get kind() {
    return 'invalid-config';
  }
}

/** The device cannot be reached right now. */
export class Unavailable extends PluginError {
  get kind() {
    return 'unavailable';
  }
}

/** The device did not answer in time. */
export class Timeout extends PluginError {
  get kind() {
    return 'timeout';
  }
}

/** The device answered something the plugin could not understand. */
export class ProtocolError extends PluginError {
  get kind() {
    return 'protocol';
  }
}

/** The operation is not supported by this plugin or channel. */
export class Unsupported extends PluginError {
  get kind() {
    return 'unsupported';
  }
}

/**
 * What a driver knows about the device behind it.
 * @typedef {object} DeviceStatus
 * @property {boolean} connected
 * @property {string} [firmware]
 * @property {number} [batteryPercent] 0 to 100
 * @property {number} [signalQuality] link or communication quality, 0 to 100
 * @property {Record<string, string | number | boolean>} [extra] anything else worth reporting
 */

/**
 * The channel table as a plugin knows it: the driver's channels, then those
 * of the processors before (and including) this one.
 */
export class Channels {
  /** @param {Iterable<Channel>} [channels] */
  constructor(channels = []) {
    /** @type {Channel[]} */
    this.table = [];
    /** @type {Map<string, number[]>} */
    this.byName = new Map();
    for (const c of channels) this.push(c);
  }

  /** How many channels it holds. */
  get length() {
    return this.table.length;
  }

  /** @param {number} index @returns {Channel | undefined} */
  get(index) {
    return Number.isInteger(index) ? this.table[index] : undefined;
  }

  /** The index the next channel appended will get. */
  nextIndex() {
    return this.table.length;
  }

  /**
   * The index of the first channel called `name` (with `unit`, when given).
   * @param {string} name @param {string | null} [unit] @returns {number | undefined}
   */
  index(name, unit) {
    for (const i of this.byName.get(name) ?? []) {
      if (unit === undefined || (this.table[i].unit ?? null) === unit) return i;
    }
    return undefined;
  }

  /** A reading's channel name. @param {Reading} r @returns {string | undefined} */
  name(r) {
    return typeof r.channel === 'string' ? r.channel : this.get(r.channel)?.name;
  }

  /** Appends a channel; returns its index. @param {Channel} c */
  push(c) {
    const i = this.table.length;
    this.table.push(c);
    const list = this.byName.get(c.name);
    if (list) list.push(i);
    else this.byName.set(c.name, [i]);
    return i;
  }

  /**
   * The index of `r`'s channel, declaring it into `added` when the reading
   * names one not yet in the table.
   * @param {Reading} r @param {Channel[]} added @returns {number}
   */
  resolve(r, added) {
    const unit = r.unit ?? null;
    let name;
    if (typeof r.channel === 'number') {
      const c = this.get(r.channel);
      // An index the table does not hold goes to the runtime as it is;
      // the runtime rejects and counts the reading.
      if (c === undefined || r.unit === undefined || (c.unit ?? null) === unit) return r.channel;
      name = c.name;
    } else if (typeof r.channel === 'string') {
      name = r.channel;
    } else {
      throw new TypeError(`a reading's channel must be a name or an index, not ${typeof r.channel}`);
    }
    const found = this.index(name, unit);
    if (found !== undefined) return found;
    const declared = channel(name, valueTypeOf(r.value), { unit: r.unit, writable: true });
    added.push(declared);
    return this.push(declared);
  }

  [Symbol.iterator]() {
    return this.table[Symbol.iterator]();
  }
}

/**
 * The value type a value carries on its own: a number is a float.
 * @param {Value} v @returns {ValueType}
 */
export function valueTypeOf(v) {
  switch (typeof v) {
    case 'number':
      return 'float';
    case 'bigint':
      return 'int';
    case 'boolean':
      return 'boolean';
    case 'string':
      return 'text';
    default:
      if (v instanceof Uint8Array) return 'bytes';
      throw new TypeError(`a reading's value must be a number, bigint, boolean, string or Uint8Array, not ${v === null ? 'null' : typeof v}`);
  }
}

/**
 * A device driver: reads a device on the runtime's schedule. The
 * constructor receives the driver's `config` table from the gateway's TOML
 * file as an object (empty when absent); validate it there and throw
 * {@link InvalidConfig}. Do not contact the device yet (`ferrule check`
 * builds the driver without network access).
 */
export class Driver {
  /** @param {object} [config] */
  constructor(config = {}) {
    if (config && Object.keys(config).length > 0 && new.target === Driver) {
      throw new InvalidConfig(`this driver takes no configuration, got ${Object.keys(config).join(', ')}`);
    }
  }

  /** The channels declared once, after construction: the `i`-th has index `i`.
   * By default none: a name a reading uses is declared when it first appears.
   * @returns {Channel[]} */
  channels() {
    return [];
  }

  /** Reads the device. @returns {Reading[]} */
  poll() {
    throw new Error('a driver implements poll()');
  }

  /** Writes a value to a channel (a command from the cloud).
   * @param {string} channel @param {Value} value @returns {void} */
  write(channel, value) {
    throw new Unsupported(`channel ${JSON.stringify(channel)} is not writable`);
  }

  /** The device's health; by default connected, nothing else known. @returns {DeviceStatus} */
  status() {
    return { connected: true };
  }
}

/**
 * A data processor: transforms each batch of readings a driver produces.
 * The constructor receives its `config` table as an object.
 */
export class Processor {
  /** @param {object} [config] */
  constructor(config = {}) {
    if (config && Object.keys(config).length > 0 && new.target === Processor) {
      throw new InvalidConfig(`this processor takes no configuration, got ${Object.keys(config).join(', ')}`);
    }
  }

  /** The channels it derives, once, given the table so far: the `i`-th gets
   * index `table.nextIndex() + i`. By default none.
   * @param {Channels} table @returns {Channel[]} */
  channels(table) {
    return [];
  }

  /** Transforms one batch: readings come by index (`table.get(r.channel)`
   * names them; int values arrive as numbers when they fit in 2^53, else
   * bigints). Return fewer to filter, more to derive, by index or by name.
   * @param {Reading[]} readings @param {Channels} table @returns {Reading[]} */
  process(readings, table) {
    throw new Error('a processor implements process()');
  }
}

/**
 * Logging into the runtime's structured log; the runtime tags each line
 * with the plugin instance and rate-limits it. Outside a component (a
 * plugin's own tests) lines go to the console. `console.log` and
 * `console.error` reach the runtime's log too.
 */
export const log = {
  /** @type {(level: string, message: string) => void} */
  sink: (level, message) => console.error(`[${level}] ${message}`),
  /** @param {string} m */ trace: (m) => log.sink('trace', String(m)),
  /** @param {string} m */ debug: (m) => log.sink('debug', String(m)),
  /** @param {string} m */ info: (m) => log.sink('info', String(m)),
  /** @param {string} m */ warn: (m) => log.sink('warn', String(m)),
  /** @param {string} m */ error: (m) => log.sink('error', String(m)),
};
