"""The plugin's own tests, with plain Python: python -m unittest"""

import unittest

from ferrule_sdk import InvalidConfig

from {{lib}} import {{class}}


class Test{{class}}(unittest.TestCase):
    def test_counts_up_from_start(self):
        driver = {{class}}({"start": 5})
        self.assertEqual(driver.channels()[0].name, "count")
        self.assertEqual([driver.poll()[0].value for _ in range(3)], [5, 6, 7])
        with self.assertRaises(InvalidConfig):
            {{class}}({"start": -1})


if __name__ == "__main__":
    unittest.main()
