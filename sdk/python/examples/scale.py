"""``scale`` in Python: ``value * gain + offset`` per channel, with an
optional new name and unit. Channels not listed pass unchanged; a listed
channel whose value is not a number passes with ``bad`` quality::

    [driver.processor.config.channels.temperature]
    gain = 1.8
    offset = 32.0
    rename = "temperature_f"
    unit = "degF"
"""

import math

from ferrule_sdk import Channel, InvalidConfig, Processor, Quality, Reading, is_number, log


class Scale(Processor):
    def __init__(self, config):
        self.rules = {}
        for name, rule in (config.get("channels") or {}).items():
            unknown = set(rule) - {"gain", "offset", "rename", "unit"}
            if unknown:
                raise InvalidConfig(f"channels.{name}: unknown field(s) {sorted(unknown)}")
            gain, offset = float(rule.get("gain", 1.0)), float(rule.get("offset", 0.0))
            if not (math.isfinite(gain) and math.isfinite(offset)):
                raise InvalidConfig(f"channels.{name}: gain and offset must be finite numbers")
            self.rules[name] = (gain, offset, rule.get("rename"), rule.get("unit"))
        # By input index: (gain, offset, output index or name, unit) or None.
        self.targets = []
        # The channels this processor derives, so it does not scale its own.
        self.own = set()

    def channels(self, table):
        derived = []
        self._resolve(table, derived)
        return derived

    def _resolve(self, table, derived=None):
        for index in range(len(self.targets), len(table)):
            c = table[index]
            rule = self.rules.get(c.name)
            if rule is None or (c.name, c.unit) in self.own:
                self.targets.append(None)
                continue
            gain, offset, rename, unit = rule
            if rename is None and unit is None and c.value_type.name == "FLOAT":
                out = index
            else:
                self.own.add((rename or c.name, unit or c.unit))
                if derived is not None:
                    out = table.next_index() + len(derived)
                    derived.append(Channel(rename or c.name, float, unit=unit or c.unit))
                else:
                    out = rename or c.name
            self.targets.append((gain, offset, out, unit or c.unit))

    def process(self, readings, table):
        if len(self.targets) < len(table):
            self._resolve(table)
        out = []
        for r in readings:
            target = self.targets[r.channel] if r.channel < len(self.targets) else None
            if target is None:
                out.append(r)
                continue
            gain, offset, where, unit = target
            if not is_number(r.value):
                log.warn("scale: %s is not a number; passed on as bad", table[r.channel].name)
                r.quality = Quality.BAD
                out.append(r)
                continue
            value = float(r.value) * gain + offset
            unit = unit if isinstance(where, str) else None
            out.append(Reading(where, value, r.timestamp_ns, r.quality, unit))
        return out
