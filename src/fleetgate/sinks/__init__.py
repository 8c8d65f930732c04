"""Sinks: one module per backend behind the one :class:`~fleetgate.sinks.base.Sink` interface.

:mod:`fleetgate.sinks.registry` finds them by name.
"""
