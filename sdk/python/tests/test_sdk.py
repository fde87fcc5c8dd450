"""The Python SDK, natively: its types, the glue against the bindings
componentize-py generates for ferrule:plugin@0.2.0, and the examples.

Run with the guest tools' Python: ``python -m unittest discover sdk/python/tests``
(``cargo xtask test`` does).
"""

import importlib
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "examples"))

import ferrule_sdk as sdk  # noqa: E402
from ferrule_sdk import Channel, Channels, Quality, Reading, ValueType  # noqa: E402

_bindings = tempfile.TemporaryDirectory(prefix="ferrule-py-bindings-")


def setUpModule():
    """Generates the bindings once and imports the glue against them."""
    wit = HERE.parent / "ferrule_sdk" / "wit"
    run = ("import sys; from componentize_py import script; "
           "sys.argv[0] = 'componentize-py'; sys.exit(script())")
    subprocess.run([sys.executable, "-c", run, "-q", "-d", str(wit), "-w", "driver-plugin", "-w",
                    "processor-plugin", "bindings", _bindings.name], check=True)
    sys.path.insert(0, _bindings.name)
    global glue, wt, host, logged
    host = importlib.import_module("wit_world.imports.host")
    wt = importlib.import_module("wit_world.imports.types")
    logged = []
    host.log = lambda level, message: logged.append((level, message))
    glue = importlib.import_module("ferrule_sdk._glue")


def tearDownModule():
    _bindings.cleanup()


class Types(unittest.TestCase):
    def test_value_types_come_from_python_values_bool_before_int(self):
        self.assertEqual(ValueType.of(True), ValueType.BOOLEAN)
        self.assertEqual(ValueType.of(3), ValueType.INT)
        self.assertEqual(ValueType.of(3.5), ValueType.FLOAT)
        self.assertEqual(ValueType.of("x"), ValueType.TEXT)
        self.assertEqual(ValueType.of(b"x"), ValueType.BYTES)
        with self.assertRaises(TypeError):
            ValueType.of([1])
        self.assertEqual(Channel("a", int).value_type, ValueType.INT)
        self.assertEqual(Channel("a", "boolean").value_type, ValueType.BOOLEAN)
        with self.assertRaises(ValueError):
            Channel("a", "complex")

    def test_names_are_declared_once_and_units_tell_channels_apart(self):
        table = Channels([Channel("t", float, unit="degC")])
        added = []
        self.assertEqual(table.resolve(Reading("t", 1.0, unit="degC"), added), 0)
        self.assertEqual(table.resolve(Reading("n", 2), added), 1)
        self.assertEqual(table.resolve(Reading("n", 3), added), 1)
        # By index with another unit: a channel of the same name, that unit.
        self.assertEqual(table.resolve(Reading(0, 5.0, unit="degF"), added), 2)
        self.assertEqual([(c.name, c.unit, c.value_type, c.writable) for c in added],
                         [("n", None, ValueType.INT, True), ("t", "degF", ValueType.FLOAT, True)])
        # An index the table does not hold goes on as it is (the runtime counts it).
        self.assertEqual(table.resolve(Reading(9, 1.0), added), 9)
        self.assertEqual(table.index("t", "degF"), 2)
        self.assertIsNone(table.index("missing"))

    def test_a_plugin_without_config_refuses_keys(self):
        sdk.Driver({})
        with self.assertRaises(sdk.InvalidConfig):
            sdk.Driver({"x": 1})


class Counter(sdk.Driver):
    def __init__(self, config):
        self.n = int(config.get("start", 0))

    def channels(self):
        return [Channel("count", int), Channel("on", bool, writable=True, range=(0, 1))]

    def poll(self):
        self.n += 1
        if self.n == 3:
            raise sdk.Unavailable("device went away")
        if self.n == 4:
            return [Reading("x", {"not": "a value"})]
        if self.n == 5:
            raise KeyError("boom")
        return [Reading(0, self.n), Reading(1, self.n % 2 == 0), Reading("t", 1.5, unit="degC"),
                Reading("late", 2.5, timestamp_ns=5, quality=Quality.UNCERTAIN)]

    def write(self, channel, value):
        self.written = (channel, value)


class Glue(unittest.TestCase):
    def test_a_driver_declares_polls_into_columns_and_maps_errors(self):
        d = glue.driver_export(Counter)()
        declared = d.init('{"start": 0}')
        self.assertEqual([c.name for c in declared], ["count", "on"])
        self.assertEqual(declared[1].range, wt.ValueRange(0.0, 1.0))
        self.assertTrue(declared[1].writable)
        b = d.poll()
        self.assertEqual([c.name for c in b.added], ["t", "late"])
        self.assertEqual((b.ints.channels, b.ints.values), ([0], [1]))
        self.assertEqual((b.floats.channels, b.floats.values), ([2], [1.5]))
        self.assertIsNone(b.timestamp_ns)
        kinds = [(r.channel, type(r.value).__name__, r.timestamp_ns, r.quality) for r in b.readings]
        self.assertEqual(kinds, [(1, "Value_Boolean", None, wt.Quality.GOOD),
                                 (3, "Value_Float", 5, wt.Quality.UNCERTAIN)])
        self.assertEqual(d.poll().added, [])
        with self.assertRaises(glue.Err) as e:
            d.poll()
        self.assertEqual(e.exception.value, wt.Error_Unavailable("device went away"))
        with self.assertRaises(glue.Err) as e:
            d.poll()
        self.assertIsInstance(e.exception.value, wt.Error_Other)
        self.assertIn("TypeError", e.exception.value.value)
        with self.assertRaises(glue.Err) as e:
            d.poll()
        self.assertEqual(e.exception.value, wt.Error_Other("KeyError: 'boom'"))
        self.assertTrue(any("Traceback" in m for _, m in logged))
        d.write(1, wt.Value_Boolean(True))
        with self.assertRaises(glue.Err):
            d.write(7, wt.Value_Int(1))
        status = d.status()
        self.assertTrue(status.connected)

    def test_init_errors_and_bad_config_are_errors_not_traps(self):
        d = glue.driver_export(Counter)()
        with self.assertRaises(glue.Err) as e:
            d.init("{not json")
        self.assertIsInstance(e.exception.value, wt.Error_InvalidConfig)
        with self.assertRaises(glue.Err) as e:
            d.poll()
        self.assertIn("before a successful init", e.exception.value.value)

    def test_sim_and_scale_examples_through_the_glue(self):
        sim = importlib.import_module("sim")
        scale = importlib.import_module("scale")
        d = glue.driver_export(sim.Sim)()
        table = d.init('{"seed": 3, "channels": ['
                       '{"name": "temperature", "signal": "sine", "offset": 20, "amplitude": 5, "unit": "degC"},'
                       '{"name": "parts", "signal": "counter", "step": 2},'
                       '{"name": "fill", "signal": "ramp", "amplitude": 100}]}')
        p = glue.processor_export(scale.Scale)()
        derived = p.init('{"channels": {"temperature": {"gain": 1.8, "offset": 32, '
                         '"rename": "temperature_f", "unit": "degF"}, "fill": {"gain": 0.01}}}', table)
        self.assertEqual([(c.name, c.unit) for c in derived], [("temperature_f", "degF")])
        counts = []
        for _ in range(3):
            raw = d.poll()
            self.assertIsNotNone(raw.timestamp_ns)
            t = raw.floats.values[raw.floats.channels.index(0)]
            fill = raw.floats.values[raw.floats.channels.index(2)]
            self.assertTrue(15 <= t <= 25)
            out = p.process(raw)
            self.assertEqual(out.timestamp_ns, raw.timestamp_ns)
            floats = dict(zip(out.floats.channels, out.floats.values))
            self.assertAlmostEqual(floats[3], t * 1.8 + 32)
            self.assertAlmostEqual(floats[2], fill * 0.01)
            self.assertNotIn(0, floats)
            counts.append(dict(zip(out.ints.channels, out.ints.values))[1])
        self.assertEqual(counts, [0, 2, 4])
        with self.assertRaises(glue.Err) as e:
            glue.driver_export(sim.Sim)().init('{"channels": [{"name": "a", "signal": "square"}]}')
        self.assertIn("channels[0].signal", e.exception.value.value)


class Build(unittest.TestCase):
    def test_the_build_finds_one_plugin_class_or_says_why(self):
        from ferrule_sdk import build
        name, cls, is_driver = build.find_plugin(HERE.parent / "examples" / "sim.py", None)
        self.assertEqual((name, cls, is_driver), ("sim", "Sim", True))
        _, cls, is_driver = build.find_plugin(HERE.parent / "examples" / "scale.py", None)
        self.assertEqual((cls, is_driver), ("Scale", False))
        with tempfile.TemporaryDirectory() as tmp:
            empty = Path(tmp) / "nothing_here.py"
            empty.write_text("x = 1\n")
            with self.assertRaises(build.BuildError) as e:
                build.find_plugin(empty, None)
            self.assertIn("found none", str(e.exception))

    def test_the_wit_shipped_in_the_package_is_the_runtimes(self):
        shipped = HERE.parent / "ferrule_sdk" / "wit"
        source = HERE.parent.parent / "macros" / "wit" / sdk.WIT_VERSION
        if not source.is_dir():
            self.skipTest("outside the ferrule repository")
        names = sorted(p.name for p in source.glob("*.wit"))
        self.assertEqual(sorted(p.name for p in shipped.glob("*.wit")), names)
        for name in names:
            self.assertEqual((shipped / name).read_text(), (source / name).read_text(), name)


if __name__ == "__main__":
    unittest.main()
