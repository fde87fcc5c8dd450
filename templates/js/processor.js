// `{{name}}`: a ferrule processor in JavaScript. It multiplies every float
// reading by `factor`; replace `process` with your own transformation.
//
//   [[driver.processor]]
//   name = "{{name}}"
//   plugin = "{{lib}}.wasm"
//   [driver.processor.config]
//   factor = 2.0

import { InvalidConfig, Processor } from 'ferrule-sdk';

export default class {{class}} extends Processor {
  constructor(config) {
    super();
    this.factor = config.factor;
    if (!Number.isFinite(this.factor)) throw new InvalidConfig('factor: expected a finite number');
  }

  process(readings, table) {
    // Floats are scaled; integers (on int channels) keep their type.
    return readings.map((r) => (table.get(r.channel)?.valueType === 'float' ? { ...r, value: r.value * this.factor } : r));
  }
}
