#!/usr/bin/env python3
"""Signs a ferrule command with an operator key, the way `ferrule fleet
command` does, and prints the message to publish (QoS 1) on
`{prefix}/{gateway}/cmd/{driver}/write`. The gateway answers on
`{prefix}/{gateway}/cmd/{driver}/result`.

    python3 sign_command.py --key op.key --key-id 8e554ccefb4b3cb83463d4fc \
        --gateway gw-01 --driver plc-1 --channel speed_setpoint --value 1200

Needs the `cryptography` package. The key is the secret key file of
`ferrule plugin keygen`; its key id is what keygen printed.
"""

import argparse
import base64
import json
import time
import uuid

from cryptography.hazmat.primitives.serialization import load_pem_private_key


def sign_command(key_pem, key_id, gateway, driver, channel, value, command_id=None):
    """The signed command as the JSON text to publish."""
    document = json.dumps(
        {
            "schema": 1,
            "kind": "command",
            "gateway": gateway,
            "driver": driver,
            "channel": channel,
            "value": value,
            "id": command_id or str(uuid.uuid4()),
            "issued_ms": int(time.time() * 1000),
        }
    ).encode()
    key = load_pem_private_key(key_pem, password=None)
    # Ed25519 over the document's bytes exactly as sent (base64 keeps them).
    return json.dumps(
        {
            "document": base64.b64encode(document).decode(),
            "key_id": key_id,
            "signature": base64.b64encode(key.sign(document)).decode(),
        }
    )


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--key", required=True, help="the operator's secret key file")
    p.add_argument("--key-id", required=True, help="its key id")
    p.add_argument("--gateway", required=True)
    p.add_argument("--driver", required=True)
    p.add_argument("--channel", required=True)
    p.add_argument("--value", required=True, help="JSON: 1200, 21.5, true, \"auto\"")
    p.add_argument("--id", help="unique per gateway; a new UUID when absent")
    a = p.parse_args()
    with open(a.key, "rb") as f:
        key_pem = f.read()
    value = json.loads(a.value)
    print(sign_command(key_pem, a.key_id, a.gateway, a.driver, a.channel, value, a.id))


if __name__ == "__main__":
    main()
