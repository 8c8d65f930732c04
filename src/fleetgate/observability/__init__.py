"""Metrics registry and structured logging."""
