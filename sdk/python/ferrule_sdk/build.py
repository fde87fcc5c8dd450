"""``ferrule-py build``: a Python driver or processor as a WebAssembly component.

Finds the plugin class (the one subclass of ``Driver`` or ``Processor``
the module defines, or ``--class``), writes the entry module that binds it
to the ``ferrule:plugin@0.2.0`` world, and runs componentize-py with the
WIT shipped inside this package. WASI stays real (no ``--stub-wasi``, which
would fix ``random``'s seed at build time); the runtime grants a plugin
only what its config allows.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import Driver, Processor, WIT_VERSION

WIT_DIR = Path(__file__).resolve().parent / "wit"
ENTRY = "ferrule_component"


class BuildError(Exception):
    pass


def find_plugin(path: Path, class_name: str | None):
    """The plugin class in the module at ``path`` and whether it is a driver."""
    if path.suffix != ".py" or not path.is_file():
        raise BuildError(f"{path}: expected a Python module (a .py file)")
    module_name = path.stem
    if module_name in (ENTRY, "wit_world", "ferrule_sdk"):
        raise BuildError(f"{path}: rename the module; {module_name!r} is taken by the build")
    sys.path.insert(0, str(path.parent))
    try:
        module = importlib.import_module(module_name)
    except Exception as e:
        raise BuildError(f"{path}: importing it failed: {type(e).__name__}: {e}") from None
    finally:
        sys.path.pop(0)
    found = [
        c for _, c in inspect.getmembers(module, inspect.isclass)
        if c.__module__ == module.__name__ and issubclass(c, (Driver, Processor))
        and c not in (Driver, Processor) and (class_name is None or c.__name__ == class_name)
    ]
    if class_name is not None and not found:
        raise BuildError(f"{path}: no Driver or Processor subclass called {class_name!r}")
    if len(found) != 1:
        names = ", ".join(c.__name__ for c in found) or "none"
        raise BuildError(
            f"{path}: expected one subclass of ferrule_sdk.Driver or Processor, found {names}"
            + ("; pick one with --class" if found else ""))
    plugin = found[0]
    return module_name, plugin.__name__, issubclass(plugin, Driver)


def componentize_command(entry_dir: Path, module_dir: Path, world: str, output: Path) -> list:
    sdk_parent = Path(__file__).resolve().parent.parent
    run = ("import sys; from componentize_py import script; "
           "sys.argv[0] = 'componentize-py'; sys.exit(script())")
    return [sys.executable, "-c", run, "-q", "-d", str(WIT_DIR), "-w", world, "componentize", ENTRY,
            "-p", str(entry_dir), "-p", str(module_dir), "-p", str(sdk_parent), "-o", str(output)]


def build(path: Path, output: Path, class_name: str | None = None) -> Path:
    path = path.resolve()
    module_name, plugin, is_driver = find_plugin(path, class_name)
    kind = "driver" if is_driver else "processor"
    with tempfile.TemporaryDirectory(prefix="ferrule-py-") as tmp:
        entry = Path(tmp) / f"{ENTRY}.py"
        entry.write_text(
            "from ferrule_sdk import _glue\n"
            f"from {module_name} import {plugin} as _Plugin\n"
            f"{kind.capitalize()} = _glue.{kind}_export(_Plugin)\n")
        output.parent.mkdir(parents=True, exist_ok=True)
        command = componentize_command(Path(tmp), path.parent, f"{kind}-plugin", output.resolve())
        started = time.monotonic()
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            detail = (done.stderr or done.stdout).strip()
            if "No module named 'componentize_py'" in detail:
                detail = "componentize-py is not installed here: pip install componentize-py==0.25.1"
            raise BuildError(f"{path}: componentize-py failed:\n{detail}")
    size = output.stat().st_size
    print(f"built {output} ({kind} {plugin}, ferrule:plugin@{WIT_VERSION}, "
          f"{size / 1e6:.1f} MB, {time.monotonic() - started:.1f} s)")
    return output


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="ferrule-py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build a driver or processor module into a component")
    b.add_argument("module", type=Path, help="the plugin's .py file")
    b.add_argument("-o", "--output", type=Path, help="the .wasm to write (default: MODULE.wasm)")
    b.add_argument("--class", dest="class_name", help="the plugin class, when the module has several")
    args = parser.parse_args(argv)
    output = args.output or args.module.with_suffix(".wasm")
    try:
        build(args.module, output, args.class_name)
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
