// An independent Sparkplug B host for ferrule's tests. Eclipse Tahu's
// payload codec (the `sparkplug-payload` package) decodes every message;
// nothing of ferrule's own code is used. The checks follow what a
// Sparkplug 3.0 host application expects of an edge node.
//
//   node host.mjs check < messages.jsonl    one {"topic", "hex"} per line
//   node host.mjs encode '<payload JSON>'   prints the encoded payload, hex
//
// `check` prints one JSON report: every message decoded (aliases resolved
// to names from the births) and every rule broken ("violations").

import { createRequire } from "node:module";
import { readFileSync } from "node:fs";

const require = createRequire(import.meta.url);
const spb = require("sparkplug-payload").get("spBv1.0");

/** A protobuf.js Long as a Number when exact, else as a decimal string. */
function plain(v) {
  if (v && typeof v === "object" && "low" in v && "high" in v && typeof v.toString === "function") {
    const n = v.toNumber();
    return Number.isSafeInteger(n) ? n : v.toString();
  }
  if (v instanceof Uint8Array) return Buffer.from(v).toString("hex");
  return v;
}

function properties(props) {
  if (!props) return undefined;
  const out = {};
  for (const [k, p] of Object.entries(props)) out[k] = plain(p.value);
  return out;
}

function check(lines) {
  const nodes = new Map(); // "group/edge" -> state
  const messages = [];
  const violations = [];
  let seqWraps = 0;
  // ferrule publishes at QoS 1 (nothing is deleted from its queue before
  // the broker has it), so a broker may deliver a message twice (after a
  // restart, say). A byte-identical copy is counted, not checked again.
  const seen = new Set();
  let duplicates = 0;
  const node = (key) => {
    if (!nodes.has(key)) nodes.set(key, { online: false, bdSeq: null, seq: null, devices: new Map(), aliases: new Map() });
    return nodes.get(key);
  };
  lines.forEach((line, index) => {
    const { topic, hex } = JSON.parse(line);
    const parts = topic.split("/");
    if (parts[0] !== "spBv1.0" || parts[1] === "STATE") return;
    if (seen.has(line)) {
      duplicates += 1;
      return;
    }
    seen.add(line);
    const [, group, type, edge, device] = parts;
    const where = `#${index} ${type}${device ? " " + device : ""}`;
    let payload;
    try {
      payload = spb.decodePayload(Buffer.from(hex, "hex"));
    } catch (e) {
      violations.push(`${where}: cannot be decoded: ${e.message}`);
      return;
    }
    // Commands come from hosts, not from the edge node: recorded only.
    if (type === "NCMD" || type === "DCMD") return;
    const n = node(`${group}/${edge}`);
    const seq = payload.seq == null ? null : plain(payload.seq);
    const summary = { index, type, device: device ?? null, seq, timestamp: plain(payload.timestamp), metrics: [] };
    const metrics = payload.metrics ?? [];
    const bdSeq = () => {
      const m = metrics.find((m) => m.name === "bdSeq");
      return m ? plain(m.value) : null;
    };
    if (type === "NBIRTH") {
      if (seq !== 0) violations.push(`${where}: NBIRTH seq ${seq}, not 0`);
      summary.bdSeq = bdSeq();
      if (summary.bdSeq == null) violations.push(`${where}: NBIRTH without bdSeq`);
      if (!metrics.some((m) => m.name === "Node Control/Rebirth")) violations.push(`${where}: NBIRTH without Node Control/Rebirth`);
      Object.assign(n, { online: true, bdSeq: summary.bdSeq, seq: 0, devices: new Map(), aliases: new Map() });
    } else if (type === "NDEATH") {
      summary.bdSeq = bdSeq();
      summary.matches_nbirth = n.bdSeq != null && summary.bdSeq === n.bdSeq;
      if (!summary.matches_nbirth) violations.push(`${where}: NDEATH bdSeq ${summary.bdSeq}, NBIRTH had ${n.bdSeq}`);
      n.online = false;
    } else {
      if (!n.online) violations.push(`${where}: before NBIRTH`);
      if (n.seq != null && seq !== (n.seq + 1) % 256) violations.push(`${where}: seq ${seq} after ${n.seq}`);
      if (n.seq === 255 && seq === 0) seqWraps += 1;
      n.seq = seq;
    }
    const dev = device ? (n.devices.get(device) ?? { born: false, metrics: new Map() }) : null;
    if (type === "DBIRTH") {
      dev.born = true;
      dev.metrics = new Map();
      for (const m of metrics) {
        if (m.alias != null) {
          const alias = plain(m.alias);
          const owner = n.aliases.get(alias);
          if (owner && owner !== `${device}/${m.name}`) violations.push(`${where}: alias ${alias} of ${m.name} already names ${owner}`);
          n.aliases.set(alias, `${device}/${m.name}`);
          dev.metrics.set(alias, { name: m.name, type: m.type });
        }
      }
    }
    if ((type === "DDATA" || type === "DDEATH") && !dev.born) violations.push(`${where}: before its DBIRTH`);
    if (type === "DDEATH") dev.born = false;
    if (dev) n.devices.set(device, dev);
    for (const m of metrics) {
      let name = m.name ?? null;
      if (name == null && m.alias != null) {
        const known = dev?.metrics.get(plain(m.alias));
        if (!known) violations.push(`${where}: alias ${plain(m.alias)} not declared in a birth`);
        name = known?.name ?? null;
      }
      summary.metrics.push({
        name,
        alias: m.alias == null ? null : plain(m.alias),
        type: m.type ?? null,
        value: m.isNull ? null : plain(m.value),
        historical: m.isHistorical === true,
        timestamp: plain(m.timestamp),
        properties: properties(m.properties),
      });
    }
    messages.push(summary);
  });
  return { messages, violations, seq_wraps: seqWraps, duplicates };
}

const [mode, arg] = process.argv.slice(2);
if (mode === "check") {
  const lines = readFileSync(0, "utf8").split("\n").filter((l) => l.trim() !== "");
  process.stdout.write(JSON.stringify(check(lines)) + "\n");
} else if (mode === "encode") {
  process.stdout.write(Buffer.from(spb.encodePayload(JSON.parse(arg))).toString("hex") + "\n");
} else {
  process.stderr.write("usage: node host.mjs check < messages.jsonl | node host.mjs encode '<payload JSON>'\n");
  process.exit(2);
}
