"""The Prometheus text format (0.0.4) of a registry: ``prometheus_client.generate_latest``,
without importing ``prometheus_client.exposition``.

That module also holds prometheus_client's HTTP servers, push-gateway client and WSGI/ASGI
apps, and imports http.server, urllib.request, wsgiref and gzip for them (about 1.5 MiB of
an idle server, see :mod:`fleetgate.lean_imports`). :func:`generate_latest` here writes the
same bytes for every registry (tests/unit/core/test_exposition.py compares the two), with
the same name escaping (``underscores``, prometheus_client's default).
"""

from __future__ import annotations

from prometheus_client.openmetrics.exposition import (
    UNDERSCORES,
    escape_label_name,
    escape_metric_name,
)
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

# Samples of the OpenMetrics model that the 0.0.4 text format shows as gauges of their own.
_OPENMETRICS_SUFFIXES = ("_created", "_gsum", "_gcount")
# How the text format names the OpenMetrics types it lacks.
_TEXT_TYPES = {
    "info": "gauge",
    "stateset": "gauge",
    "gaugehistogram": "histogram",
    "unknown": "untyped",
}


def _sample_line(sample: Sample) -> str:
    labels = ",".join(
        f'{escape_label_name(k, UNDERSCORES)}="{_escape_value(v)}"'
        for k, v in sorted(sample.labels.items())
    )
    timestamp = ""
    if sample.timestamp is not None:
        timestamp = f" {int(float(sample.timestamp) * 1000):d}"  # milliseconds
    name = escape_metric_name(sample.name, UNDERSCORES)
    if labels:
        name = f"{name}{{{labels}}}"
    return f"{name} {floatToGoString(sample.value)}{timestamp}\n"  # type: ignore[no-untyped-call]


def _escape_value(value: str) -> str:
    """A label value: UTF-8 as it is, backslash, newline and quote escaped."""
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _help(name: str, documentation: str) -> str:
    text = documentation.replace("\\", r"\\").replace("\n", r"\n")
    return f"# HELP {escape_metric_name(name, UNDERSCORES)} {text}\n"


def generate_latest(registry: Collector) -> bytes:
    """The text exposition of ``registry``, UTF-8 encoded."""
    output: list[str] = []
    for metric in registry.collect():
        try:
            name = metric.name
            kind = metric.type
            if kind == "counter":
                name += "_total"
            elif kind == "info":
                name += "_info"
            kind = _TEXT_TYPES.get(kind, kind)
            output.append(_help(name, metric.documentation))
            output.append(f"# TYPE {escape_metric_name(name, UNDERSCORES)} {kind}\n")
            extra: dict[str, list[str]] = {}
            for sample in metric.samples:
                for suffix in _OPENMETRICS_SUFFIXES:
                    if sample.name == metric.name + suffix:
                        extra.setdefault(suffix, []).append(_sample_line(sample))
                        break
                else:
                    output.append(_sample_line(sample))
        except Exception as exception:
            exception.args = (exception.args or ("",)) + (metric,)
            raise
        for suffix, lines in sorted(extra.items()):
            output.append(_help(metric.name + suffix, metric.documentation))
            output.append(f"# TYPE {escape_metric_name(metric.name + suffix, UNDERSCORES)} gauge\n")
            output.extend(lines)
    return "".join(output).encode("utf-8")
