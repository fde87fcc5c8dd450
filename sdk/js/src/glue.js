/**
 * The component side: turns the author's plugin class into the exports of
 * the `ferrule:plugin@0.2.0` world. Imported only by the entry module
 * `ferrule-js build` writes.
 * @module ferrule-sdk/glue
 */

import { log as hostLog } from 'ferrule:plugin/host@0.2.0';

import { Channels, log } from './index.js';
import {
  fromBatch,
  fromWireChannel,
  fromWireValue,
  parseConfig,
  toBatch,
  toWireChannel,
  toWireError,
  toWireStatus,
} from './convert.js';

/** Runs `f`; an exception becomes the WIT error the call returns. */
function call(f) {
  try {
    return f();
  } catch (e) {
    if (!(e && typeof e === 'object' && 'kind' in e)) {
      log.error(e instanceof Error && e.stack ? e.stack : String(e));
    }
    throw toWireError(e);
  }
}

function notReady() {
  return { tag: 'other', val: 'plugin called before a successful init' };
}

/** The `driver` export for a {@link Driver} subclass. */
export function driverExport(Plugin) {
  log.sink = hostLog;
  let plugin;
  let table;
  return {
    init(config) {
      return call(() => {
        const p = new Plugin(parseConfig(config));
        const declared = Array.from(p.channels() ?? []);
        const wire = declared.map(toWireChannel);
        plugin = p;
        table = new Channels(declared);
        return wire;
      });
    },
    poll() {
      if (!plugin) throw notReady();
      return call(() => toBatch(table, plugin.poll()));
    },
    write(index, value) {
      if (!plugin) throw notReady();
      const c = table.get(index);
      if (!c) throw { tag: 'unsupported', val: `no channel at index ${index}` };
      call(() => plugin.write(c.name, fromWireValue(value)));
    },
    status() {
      try {
        return toWireStatus(plugin ? plugin.status() : { connected: false });
      } catch (e) {
        return { connected: false, extra: [['error', String(e)]] };
      }
    },
  };
}

/** The `processor` export for a {@link Processor} subclass. */
export function processorExport(Plugin) {
  log.sink = hostLog;
  let plugin;
  let table;
  return {
    init(config, channels) {
      return call(() => {
        const p = new Plugin(parseConfig(config));
        const t = new Channels(channels.map(fromWireChannel));
        const derived = Array.from(p.channels(t) ?? []);
        const wire = derived.map(toWireChannel);
        for (const c of derived) t.push(c);
        plugin = p;
        table = t;
        return wire;
      });
    },
    process(batch) {
      if (!plugin) throw notReady();
      return call(() => {
        for (const c of batch.added) table.push(fromWireChannel(c));
        return toBatch(table, plugin.process(fromBatch(batch), table));
      });
    },
  };
}
