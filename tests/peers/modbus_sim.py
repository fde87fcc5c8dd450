"""A Modbus TCP device for ferrule's tests and examples: pymodbus's server
with a datastore loaded from a JSON file, on a loopback port.

    python3 modbus_sim.py --port 5020 --datastore store.json

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
from pymodbus.server import StartAsyncTcpServer


def block(values, size):
    values = list(values) + [0] * max(0, size - len(values))
    # pymodbus adds 1 to every wire address, so wire address 0 is block
    # address 1: values[0] answers a read of address 0.
    return ModbusSequentialDataBlock(1, values)


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--datastore", required=True)
    parser.add_argument("--size", type=int, default=2000)
    args = parser.parse_args()
    with open(args.datastore, encoding="utf-8") as f:
        store = json.load(f)
    device = ModbusSlaveContext(
        hr=block(store.get("holding", []), args.size),
        ir=block(store.get("input", []), args.size),
        co=block(store.get("coil", []), args.size),
        di=block(store.get("discrete", []), args.size),
    )
    context = ModbusServerContext(slaves=device, single=True)
    logging.basicConfig(level=logging.WARNING)
    print(f"modbus simulator listening on 127.0.0.1:{args.port}", flush=True)
    await StartAsyncTcpServer(context=context, address=("127.0.0.1", args.port))


if __name__ == "__main__":
    asyncio.run(main())
