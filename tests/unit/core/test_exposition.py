"""fleetgate.observability.exposition.generate_latest writes what prometheus_client's
``generate_latest`` writes, for any registry (it replaces it on /metrics, issue 11)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Enum,
    Gauge,
    Histogram,
    Info,
    Summary,
)
from prometheus_client import generate_latest as reference
from prometheus_client.metrics_core import (
    GaugeHistogramMetricFamily,
    Metric,
    StateSetMetricFamily,
    UnknownMetricFamily,
)

from fleetgate.observability import metrics
from fleetgate.observability.exposition import generate_latest

# Metric and label names: legacy names, never a reserved "__" prefix or a suffix
# prometheus_client appends itself.
NAMES = st.builds(lambda rest: "n" + rest, st.text("abxyzAZ09_:", max_size=8)).filter(
    lambda n: not n.endswith(("_total", "_created", "_info", "_"))
)
LABEL_NAMES = st.builds(lambda rest: "l" + rest, st.text("abxyzAZ09_", max_size=6))
# Names outside the legacy character set (dots, dashes, UTF-8): escaped to underscores.
ANY_NAMES = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12
)
TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=20)
VALUES = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(2**60), 2**60)


class Collected:
    """A collector yielding given metric families (custom collectors, OpenMetrics types)."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


@st.composite
def registries(draw: st.DrawFn) -> CollectorRegistry:
    registry = CollectorRegistry()
    for index in range(draw(st.integers(0, 6))):
        name = f"m{index}_{draw(NAMES)}"  # distinct, whatever the suffixes
        doc = draw(TEXT)
        labels = sorted(draw(st.sets(LABEL_NAMES, max_size=2)))
        kind = draw(st.sampled_from(["counter", "gauge", "histogram", "summary", "info",
                                     "enum"]))
        if kind == "info":
            metric: object = Info(name, doc, labels, registry=registry)
        elif kind == "enum":
            metric = Enum(name, doc, labels, states=["a", "b"], registry=registry)
        else:
            cls = {"counter": Counter, "gauge": Gauge, "histogram": Histogram,
                   "summary": Summary}[kind]
            metric = cls(name, doc, labels, registry=registry)
        for _ in range(draw(st.integers(0, 3))):
            child = metric.labels(*(draw(TEXT) for _ in labels)) if labels else metric
            if kind == "counter":
                child.inc(draw(st.floats(0, 1e12)))
            elif kind == "gauge":
                child.set(draw(VALUES))
            elif kind in ("histogram", "summary"):
                child.observe(draw(st.floats(-1e6, 1e6)))
            elif kind == "info":
                keys = st.builds(lambda rest: "k" + rest, st.text("abc", max_size=3))
                child.info(draw(st.dictionaries(keys, TEXT, max_size=2)))
            else:
                child.state(draw(st.sampled_from(["a", "b"])))
            if not labels:
                break
    families: list[Metric] = []
    for _ in range(draw(st.integers(0, 3))):
        name = draw(ANY_NAMES)
        kind = draw(st.sampled_from(["gaugehistogram", "stateset", "unknown"]))
        doc = draw(TEXT)
        timestamp = draw(st.none() | st.floats(0, 2e9))
        if kind == "gaugehistogram":
            gh = GaugeHistogramMetricFamily(name, doc, labels=["k"])
            gh.add_metric([draw(TEXT)], [("1.0", 2.0), ("+Inf", 3.0)], draw(VALUES),
                          timestamp=timestamp)
            families.append(gh)
        elif kind == "stateset":
            ss = StateSetMetricFamily(name, doc, labels=["k"])
            ss.add_metric([draw(TEXT)], {"x": draw(st.booleans())}, timestamp=timestamp)
            families.append(ss)
        else:
            unknown = UnknownMetricFamily(name, doc, labels=["k"])
            unknown.add_metric([draw(TEXT)], draw(VALUES), timestamp=timestamp)
            families.append(unknown)
    if families:
        registry.register(Collected(families))  # type: ignore[arg-type]
    return registry


@settings(max_examples=150, deadline=None)
@given(registries())
def test_same_bytes_as_prometheus_client(registry: CollectorRegistry) -> None:
    assert generate_latest(registry) == reference(registry)


def test_fleetgate_registry() -> None:
    # The process-wide registry as it is (other tests' values included; none added here:
    # other tests read it).
    assert metrics.render() == reference(metrics.REGISTRY)
