"""``{{name}}``: a ferrule processor in Python. It multiplies every float
reading by ``factor``; replace ``process`` with your own transformation.

    [[driver.processor]]
    name = "{{name}}"
    plugin = "{{lib}}.wasm"
    [driver.processor.config]
    factor = 2.0
"""

import math

from ferrule_sdk import InvalidConfig, Processor


class {{class}}(Processor):
    def __init__(self, config):
        self.factor = config.get("factor")
        if not isinstance(self.factor, (int, float)) or not math.isfinite(self.factor):
            raise InvalidConfig("factor: expected a finite number")

    def process(self, readings, table):
        for r in readings:
            # Floats are scaled in place; integers keep their type.
            if isinstance(r.value, float):
                r.value *= self.factor
        return readings
