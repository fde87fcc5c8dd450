"""The plugin's own tests, with plain Python: python -m unittest"""

import unittest

from ferrule_sdk import Channels, InvalidConfig, Reading

from {{lib}} import {{class}}


class Test{{class}}(unittest.TestCase):
    def test_scales_floats_and_keeps_the_rest(self):
        p = {{class}}({"factor": 2.0})
        out = p.process([Reading(0, 1.5), Reading(1, 3)], Channels())
        self.assertEqual([r.value for r in out], [3.0, 3])
        with self.assertRaises(InvalidConfig):
            {{class}}({})


if __name__ == "__main__":
    unittest.main()
