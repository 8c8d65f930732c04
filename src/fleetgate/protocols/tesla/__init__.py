"""Tesla fleet-telemetry protocol (work in progress: see envelope, identity, transforms)."""
