"""Starts ThingsBoard IoT Gateway for ferrule's side-by-side benchmark.

    TB_GW_CONFIG_DIR=/path/to/config/ python tb_gateway.py

The benchmark runs on loopback only. The gateway's version checker posts to
an update service on the internet at start and every hour; it is replaced
by a no-op here before the service starts, so the gateway talks to nothing
but the broker and the Modbus devices in its config.
"""

from thingsboard_gateway.tb_utility import tb_updater


def _no_update_check(self):
    return None


tb_updater.TBUpdater.check_for_new_version = _no_update_check

from thingsboard_gateway import tb_gateway  # noqa: E402

if __name__ == "__main__":
    tb_gateway.main()
