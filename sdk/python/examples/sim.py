"""``sim`` in Python: a simulated device, configured like the Rust ``sim``.

Each channel produces one signal: ``sine``, ``ramp`` (sawtooth),
``random-walk`` or ``counter`` (an integer that grows by ``step`` every
poll). Signals follow wall-clock time::

    [driver.config]
    seed = 7
    channels = [
      { name = "temperature", signal = "sine", offset = 20.0, amplitude = 5.0, period_s = 60.0, unit = "degC" },
      { name = "parts", signal = "counter" },
    ]
"""

import math
import random
import time

from ferrule_sdk import Channel, DeviceStatus, Driver, InvalidConfig, Reading, log

SIGNALS = ("sine", "ramp", "random-walk", "counter")
KEYS = {"name", "signal", "offset", "amplitude", "period_s", "step", "unit"}


class Sim(Driver):
    def __init__(self, config):
        unknown = set(config) - {"channels", "seed"}
        if unknown:
            raise InvalidConfig(f"unknown field(s) {sorted(unknown)}; expected channels, seed")
        channels = config.get("channels") or []
        if not channels:
            raise InvalidConfig("channels: expected at least one channel")
        self.channels_ = []
        for i, c in enumerate(channels):
            where = f"channels[{i}]"
            if not isinstance(c, dict) or "name" not in c or "signal" not in c:
                raise InvalidConfig(f"{where}: expected a table with name and signal")
            if set(c) - KEYS:
                raise InvalidConfig(f"{where}: unknown field(s) {sorted(set(c) - KEYS)}")
            if c["signal"] not in SIGNALS:
                raise InvalidConfig(f"{where}.signal: expected one of {', '.join(SIGNALS)}")
            period = float(c.get("period_s", 60.0))
            if not math.isfinite(period) or period <= 0:
                raise InvalidConfig(f"{where}.period_s: expected a positive number of seconds")
            if any(c["name"] == o["name"] for o in self.channels_):
                raise InvalidConfig(f"channels: duplicate channel name {c['name']!r}")
            offset = float(c.get("offset", 0.0))
            self.channels_.append({
                "name": c["name"], "signal": c["signal"], "offset": offset,
                "amplitude": float(c.get("amplitude", 1.0)), "period": period,
                "step": float(c.get("step", 1.0)), "unit": c.get("unit"), "state": offset,
            })
        self.rng = random.Random(int(config.get("seed", 0x5EED)))
        self.polls = 0
        log.info("sim: %d channel(s)", len(self.channels_))

    def channels(self):
        return [Channel(c["name"], int if c["signal"] == "counter" else float, unit=c["unit"])
                for c in self.channels_]

    def poll(self):
        now_ns = time.time_ns()
        t = now_ns / 1e9
        self.polls += 1
        out = []
        for i, c in enumerate(self.channels_):
            phase = t / c["period"]
            phase -= math.floor(phase)
            if c["signal"] == "sine":
                value = c["offset"] + c["amplitude"] * math.sin(math.tau * phase)
            elif c["signal"] == "ramp":
                value = c["offset"] + c["amplitude"] * phase
            elif c["signal"] == "random-walk":
                step = (self.rng.random() * 2 - 1) * c["step"]
                lo, hi = c["offset"] - c["amplitude"], c["offset"] + c["amplitude"]
                c["state"] = min(max(c["state"] + step, lo), hi)
                value = c["state"]
            else:
                value = int(c["state"])
                c["state"] += c["step"]
            out.append(Reading(i, value, now_ns))
        return out

    def status(self):
        return DeviceStatus(firmware="sim-py-0.2.0", signal_quality=100,
                            extra={"polls": self.polls})
