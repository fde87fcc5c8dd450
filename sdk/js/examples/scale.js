// `scale` in JavaScript: `value * gain + offset` per channel, with an
// optional new name and unit. Channels not listed pass unchanged; a listed
// channel whose value is not a number passes with `bad` quality.
//
//   [driver.processor.config.channels.temperature]
//   gain = 1.8
//   offset = 32.0
//   rename = "temperature_f"
//   unit = "degF"

import { InvalidConfig, Processor, channel, log, reading } from 'ferrule-sdk';

export default class Scale extends Processor {
  constructor(config) {
    super();
    this.rules = new Map();
    for (const [name, rule] of Object.entries(config.channels ?? {})) {
      const extra = Object.keys(rule).filter((k) => !['gain', 'offset', 'rename', 'unit'].includes(k));
      if (extra.length) throw new InvalidConfig(`channels.${name}: unknown field(s) ${extra.join(', ')}`);
      const gain = rule.gain ?? 1;
      const offset = rule.offset ?? 0;
      if (!Number.isFinite(gain) || !Number.isFinite(offset)) {
        throw new InvalidConfig(`channels.${name}: gain and offset must be finite numbers`);
      }
      this.rules.set(name, { gain, offset, rename: rule.rename, unit: rule.unit });
    }
    // By input index: where scaled values go, or null to pass unchanged.
    this.targets = [];
    // The channels this processor derives, so it does not scale its own.
    this.own = new Set();
  }

  channels(table) {
    const derived = [];
    this.resolve(table, derived);
    return derived;
  }

  resolve(table, derived) {
    for (let i = this.targets.length; i < table.length; i++) {
      const c = table.get(i);
      const rule = this.rules.get(c.name);
      if (!rule || this.own.has(`${c.name}\u0000${c.unit ?? ''}`)) {
        this.targets.push(null);
        continue;
      }
      const name = rule.rename ?? c.name;
      const unit = rule.unit ?? c.unit;
      let out = i;
      if (rule.rename !== undefined || rule.unit !== undefined || c.valueType !== 'float') {
        this.own.add(`${name}\u0000${unit ?? ''}`);
        if (derived) {
          out = table.nextIndex() + derived.length;
          derived.push(channel(name, 'float', { unit }));
        } else {
          out = name;
        }
      }
      this.targets.push({ gain: rule.gain, offset: rule.offset, out, unit });
    }
  }

  process(readings, table) {
    if (this.targets.length < table.length) this.resolve(table, null);
    return readings.map((r) => {
      const target = this.targets[r.channel];
      if (!target) return r;
      if (typeof r.value !== 'number' && typeof r.value !== 'bigint') {
        log.warn(`scale: ${table.get(r.channel).name} is not a number; passed on as bad`);
        return { ...r, quality: 'bad' };
      }
      const value = Number(r.value) * target.gain + target.offset;
      const more = { timestampNs: r.timestampNs, quality: r.quality };
      if (typeof target.out === 'string') more.unit = target.unit;
      return reading(target.out, value, more);
    });
  }
}
