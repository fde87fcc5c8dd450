"""A Modbus TCP device for ferrule's tests and examples: pymodbus's server
with a datastore loaded from a JSON file, on a loopback port.

    python3 modbus_sim.py --port 5020 --datastore store.json
    python3 modbus_sim.py --port 5020 --port 5021 ... --datastore store.json

Each --port is a device of its own (its own copy of the datastore), all
served by one process on one asyncio loop.

The JSON file holds lists of values starting at address 0:
    {"holding": [1, 2, ...], "input": [...], "coil": [0, 1, ...], "discrete": [...]}
Addresses are 0-based on the wire. Runs until killed.
"""

import argparse
import asyncio
import json
import logging

from pymodbus.datastore import (
    ModbusSequentialDataBlock,
    ModbusServerContext,
    ModbusSlaveContext,
)
from pymodbus.server import ModbusTcpServer


def block(values, size):
    values = list(values) + [0] * max(0, size - len(values))
    # pymodbus adds 1 to every wire address, so wire address 0 is block
    # address 1: values[0] answers a read of address 0.
    return ModbusSequentialDataBlock(1, values)


def context(store, size):
    device = ModbusSlaveContext(
        hr=block(store.get("holding", []), size),
        ir=block(store.get("input", []), size),
        co=block(store.get("coil", []), size),
        di=block(store.get("discrete", []), size),
    )
    return ModbusServerContext(slaves=device, single=True)


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, action="append", required=True)
    parser.add_argument("--datastore", required=True)
    parser.add_argument("--size", type=int, default=2000)
    args = parser.parse_args()
    with open(args.datastore, encoding="utf-8") as f:
        store = json.load(f)
    logging.basicConfig(level=logging.WARNING)
    servers = [
        ModbusTcpServer(context(store, args.size), address=("127.0.0.1", port))
        for port in args.port
    ]
    for port in args.port:
        print(f"modbus simulator listening on 127.0.0.1:{port}", flush=True)
    await asyncio.gather(*(server.serve_forever() for server in servers))


if __name__ == "__main__":
    asyncio.run(main())
