"""The load generator's latency histogram against the exact percentiles of known samples."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from fleetgate.sim.load.histogram import (
    BUCKETS,
    EXACT_LIMIT,
    MAX_VALUE,
    SUB_COUNT,
    LatencyHistogram,
    bucket_bounds,
    bucket_index,
    nearest_rank,
)

# Latencies in µs: mostly small, some up to the histogram's range.
values = st.one_of(st.integers(0, 5_000), st.integers(0, MAX_VALUE))
samples = st.lists(values, min_size=1, max_size=400)
percentiles = st.sampled_from([0.0, 1.0, 50.0, 90.0, 99.0, 99.9, 99.99, 100.0]) | st.floats(0, 100)


def exact(sorted_samples: list[int], percentile: float) -> int:
    """The nearest-rank percentile, computed from the samples themselves."""
    return sorted_samples[nearest_rank(percentile, len(sorted_samples)) - 1]


def recorded(items: list[int]) -> LatencyHistogram:
    histogram = LatencyHistogram()
    for value in items:
        histogram.record(value)
    return histogram


@given(samples, percentiles)
def test_percentiles_are_within_one_bucket_above_the_exact_sample(
    items: list[int], percentile: float
) -> None:
    histogram = recorded(items)
    truth = exact(sorted(items), percentile)
    got = histogram.value_at(percentile)
    if truth < EXACT_LIMIT:
        assert got == truth
    else:
        # Never below the sample, at most one bucket (1/128 of it) above.
        assert truth <= got <= truth + truth // SUB_COUNT


@given(samples)
def test_count_sum_min_max_are_exact(items: list[int]) -> None:
    histogram = recorded(items)
    assert histogram.total == len(items)
    assert histogram.sum == sum(items)
    assert (histogram.min, histogram.max) == (min(items), max(items))
    assert histogram.value_at(100) == max(items)
    assert histogram.value_at(0) >= min(items)


@given(samples, samples, percentiles)
def test_merging_equals_recording_everything_in_one(
    first: list[int], second: list[int], percentile: float
) -> None:
    merged = recorded(first)
    merged.merge(recorded(second))
    together = recorded(first + second)
    assert merged.counts == together.counts
    assert (merged.total, merged.sum, merged.min, merged.max) == (
        together.total,
        together.sum,
        together.min,
        together.max,
    )
    assert merged.value_at(percentile) == together.value_at(percentile)


@given(samples)
def test_the_dict_form_round_trips(items: list[int]) -> None:
    histogram = recorded(items)
    again = LatencyHistogram.from_dict(histogram.to_dict())
    assert again.counts == histogram.counts
    assert (again.total, again.sum, again.min, again.max) == (
        histogram.total,
        histogram.sum,
        histogram.min,
        histogram.max,
    )


@given(st.integers(0, MAX_VALUE))
def test_every_value_lands_in_a_bucket_that_holds_it(value: int) -> None:
    index = bucket_index(value)
    assert 0 <= index < BUCKETS
    lower, upper = bucket_bounds(index)
    assert lower <= value <= upper
    assert upper - lower <= max(lower // SUB_COUNT, 0)


def test_buckets_tile_the_whole_range_without_gaps() -> None:
    expected_lower = 0
    for index in range(BUCKETS):
        lower, upper = bucket_bounds(index)
        assert lower == expected_lower
        assert bucket_index(lower) == index and bucket_index(upper) == index
        expected_lower = upper + 1
    assert expected_lower == MAX_VALUE + 1


def test_known_samples() -> None:
    histogram = recorded(list(range(1, 1001)))  # 1..1000 µs
    assert histogram.value_at(50) in (500, 501)  # the bucket 500-501 holds the sample 500
    assert 990 <= histogram.value_at(99) <= 990 + 990 // SUB_COUNT
    assert histogram.value_at(99.9) >= 999
    assert histogram.value_at(100) == 1000
    assert histogram.mean == 500.5


def test_out_of_range_values_are_clamped_not_lost() -> None:
    histogram = recorded([-5, MAX_VALUE * 4])
    assert histogram.total == 2
    assert histogram.counts[0] == 1 and histogram.counts[BUCKETS - 1] == 1
    assert histogram.max == MAX_VALUE * 4


def test_an_empty_histogram_reads_zero() -> None:
    histogram = LatencyHistogram()
    assert histogram.value_at(99) == 0 and histogram.mean == 0.0
    assert LatencyHistogram.merged([histogram, LatencyHistogram()]).total == 0
