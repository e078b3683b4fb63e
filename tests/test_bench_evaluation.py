"""Seed arguments of the benchmarks (``--seeds``): counts, ranges and lists, and a seed typed as a
count refused before anything runs."""
import pytest

from mirage_ros.bench.evaluation import MAX_SEEDS, parse_seeds


def test_counts_ranges_and_lists():
    assert parse_seeds(3, 900000) == [900000, 900001, 900002]
    assert parse_seeds("2", 900000) == [900000, 900001]
    assert parse_seeds("900700-900702", 900000) == [900700, 900701, 900702]
    assert parse_seeds("800002,", 900000) == [800002]
    assert parse_seeds("800002-800002", 900000) == [800002]
    assert parse_seeds("5,900700-900701", 900000) == [5, 900700, 900701]


def test_a_seed_typed_as_a_count_is_refused_with_the_way_to_write_it():
    with pytest.raises(ValueError, match="800002-800002"):
        parse_seeds("800002", 900000)
    with pytest.raises(ValueError, match="at most"):
        parse_seeds(f"0-{MAX_SEEDS}", 900000)
    for bad in ("0", "900719-900700", ","):
        with pytest.raises(ValueError):
            parse_seeds(bad, 900000)
