"""Teltonika TCP and UDP listeners and the device authority they apply."""
