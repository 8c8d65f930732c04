"""fleetgate: one server for Tesla vehicles, Teltonika trackers and CAN-bus gateways."""

__version__ = "0.1.0"
