"""``{{name}}``: a ferrule driver in Python. It reports one counter that
grows every poll; replace ``poll`` with your device's protocol.

    [[driver]]
    name = "{{name}}"
    plugin = "{{lib}}.wasm"
    interval_ms = 1000
    [driver.config]
    start = 100
"""

from ferrule_sdk import Channel, Driver, InvalidConfig, Reading, log


class {{class}}(Driver):
    def __init__(self, config):
        unknown = set(config) - {"start"}
        if unknown:
            raise InvalidConfig(f"unknown field(s) {sorted(unknown)}; expected start")
        self.next = config.get("start", 0)
        if not isinstance(self.next, int) or self.next < 0:
            raise InvalidConfig("start: expected 0 or more")
        log.info("{{name}}: counting from %d", self.next)

    def channels(self):
        return [Channel("count", int, description="polls since start, plus `start`")]

    def poll(self):
        reading = Reading(0, self.next)
        self.next += 1
        return [reading]
