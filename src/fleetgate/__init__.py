"""fleetgate: one server for Tesla vehicles, Teltonika trackers and CAN-bus gateways."""

from fleetgate import lean_imports

__version__ = "0.1.0"

# Before anything imports prometheus_client (see fleetgate.lean_imports).
lean_imports.install()
