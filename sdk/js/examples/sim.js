// `sim` in JavaScript: a simulated device, configured like the Rust `sim`.
//
// Each channel produces one signal: `sine`, `ramp` (sawtooth),
// `random-walk` or `counter` (an integer that grows by `step` every poll).
// Signals follow wall-clock time.
//
//   [driver.config]
//   seed = 7
//   channels = [
//     { name = "temperature", signal = "sine", offset = 20.0, amplitude = 5.0, period_s = 60.0, unit = "degC" },
//     { name = "parts", signal = "counter" },
//   ]

import { Driver, InvalidConfig, channel, log, nowNs, reading } from 'ferrule-sdk';

const SIGNALS = ['sine', 'ramp', 'random-walk', 'counter'];
const KEYS = ['name', 'signal', 'offset', 'amplitude', 'period_s', 'step', 'unit'];

/** xorshift32: reproducible by seed. */
function rng(seed) {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x / 2 ** 32;
  };
}

export default class Sim extends Driver {
  constructor(config) {
    super();
    const unknown = Object.keys(config).filter((k) => k !== 'channels' && k !== 'seed');
    if (unknown.length) throw new InvalidConfig(`unknown field(s) ${unknown.join(', ')}; expected channels, seed`);
    const list = config.channels ?? [];
    if (!Array.isArray(list) || list.length === 0) throw new InvalidConfig('channels: expected at least one channel');
    this.list = list.map((c, i) => {
      const where = `channels[${i}]`;
      if (typeof c !== 'object' || typeof c.name !== 'string' || typeof c.signal !== 'string') {
        throw new InvalidConfig(`${where}: expected a table with name and signal`);
      }
      const extra = Object.keys(c).filter((k) => !KEYS.includes(k));
      if (extra.length) throw new InvalidConfig(`${where}: unknown field(s) ${extra.join(', ')}`);
      if (!SIGNALS.includes(c.signal)) throw new InvalidConfig(`${where}.signal: expected one of ${SIGNALS.join(', ')}`);
      const period = c.period_s ?? 60;
      if (!(Number.isFinite(period) && period > 0)) throw new InvalidConfig(`${where}.period_s: expected a positive number of seconds`);
      if (list.slice(0, i).some((o) => o.name === c.name)) throw new InvalidConfig(`channels: duplicate channel name "${c.name}"`);
      const offset = c.offset ?? 0;
      return { name: c.name, signal: c.signal, offset, amplitude: c.amplitude ?? 1, period, step: c.step ?? 1, unit: c.unit, state: offset };
    });
    this.random = rng(config.seed ?? 0x5eed);
    this.polls = 0;
    log.info(`sim: ${this.list.length} channel(s)`);
  }

  channels() {
    return this.list.map((c) => channel(c.name, c.signal === 'counter' ? 'int' : 'float', { unit: c.unit }));
  }

  poll() {
    const now = nowNs();
    const t = Number(now) / 1e9;
    this.polls += 1;
    return this.list.map((c, i) => {
      let phase = t / c.period;
      phase -= Math.floor(phase);
      let value;
      if (c.signal === 'sine') value = c.offset + c.amplitude * Math.sin(2 * Math.PI * phase);
      else if (c.signal === 'ramp') value = c.offset + c.amplitude * phase;
      else if (c.signal === 'random-walk') {
        const step = (this.random() * 2 - 1) * c.step;
        c.state = Math.min(Math.max(c.state + step, c.offset - c.amplitude), c.offset + c.amplitude);
        value = c.state;
      } else {
        value = Math.trunc(c.state);
        c.state += c.step;
      }
      return reading(i, value, { timestampNs: now });
    });
  }

  status() {
    return { connected: true, firmware: 'sim-js-0.2.0', signalQuality: 100, extra: { polls: this.polls } };
  }
}
