// `{{name}}`: a ferrule driver in JavaScript. It reports one counter that
// grows every poll; replace `poll` with your device's protocol.
//
//   [[driver]]
//   name = "{{name}}"
//   plugin = "{{lib}}.wasm"
//   interval_ms = 1000
//   [driver.config]
//   start = 100

import { Driver, InvalidConfig, channel, log, reading } from 'ferrule-sdk';

export default class {{class}} extends Driver {
  constructor(config) {
    super();
    const unknown = Object.keys(config).filter((k) => k !== 'start');
    if (unknown.length) throw new InvalidConfig(`unknown field(s) ${unknown.join(', ')}; expected start`);
    this.next = config.start ?? 0;
    if (!Number.isInteger(this.next) || this.next < 0) throw new InvalidConfig('start: expected 0 or more');
    log.info(`{{name}}: counting from ${this.next}`);
  }

  channels() {
    return [channel('count', 'int', { description: 'polls since start, plus `start`' })];
  }

  poll() {
    return [reading(0, this.next++)];
  }
}
