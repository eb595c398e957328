"""Paired statistics against hand computations and the reference experiment's published counts."""

from __future__ import annotations

from math import comb

import numpy as np
import pytest

from loraexp.analysis.stats import (
    decide,
    item_standard_error,
    mcnemar_exact,
    minimum_detectable_effect,
    paired_bootstrap_ci,
    paired_counts,
    seed_sd,
)

# Reference experiment (GSM8K test, 1,319 questions): a_only, b_only, both_correct, both_wrong per seed.
REFERENCE_COUNTS = {0: (54, 47, 1139, 79), 1: (49, 43, 1147, 80), 2: (46, 41, 1148, 84)}


def exact_two_sided(a_only: int, b_only: int) -> float:
    """Hand McNemar: twice the smaller binomial tail of Bin(a_only + b_only, 1/2), capped at 1."""
    n, k = a_only + b_only, min(a_only, b_only)
    return min(1.0, 2 * sum(comb(n, i) for i in range(k + 1)) / 2**n)


def lists_from_counts(a_only, b_only, both_correct, both_wrong):
    a = [True] * a_only + [False] * b_only + [True] * both_correct + [False] * both_wrong
    b = [False] * a_only + [True] * b_only + [True] * both_correct + [False] * both_wrong
    return a, b


def test_paired_counts_round_trip_the_reference_tables():
    for counts in REFERENCE_COUNTS.values():
        table = paired_counts(*lists_from_counts(*counts))
        assert (table["a_only"], table["b_only"], table["both_correct"], table["both_wrong"]) == counts
        assert sum(counts) == 1319
        assert table["delta"] == pytest.approx((counts[0] - counts[1]) / 1319)


@pytest.mark.parametrize(("seed", "expected"), [(0, 0.55), (1, 0.60), (2, 0.67)])
def test_mcnemar_per_seed_matches_the_reference(seed, expected):
    a_only, b_only, _, _ = REFERENCE_COUNTS[seed]
    p = mcnemar_exact(a_only, b_only)
    assert p == pytest.approx(exact_two_sided(a_only, b_only), rel=1e-9)
    assert round(p, 2) == expected


def test_pooled_mcnemar_sums_discordant_counts_over_seeds():
    a_only = sum(counts[0] for counts in REFERENCE_COUNTS.values())
    b_only = sum(counts[1] for counts in REFERENCE_COUNTS.values())
    assert (a_only, b_only) == (149, 131)
    assert round(mcnemar_exact(a_only, b_only), 2) == 0.31
    assert mcnemar_exact(a_only, b_only) == pytest.approx(exact_two_sided(149, 131), rel=1e-9)


def test_mcnemar_edge_cases():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(5, 5) == 1.0
    assert mcnemar_exact(10, 0) == pytest.approx(2 / 2**10)


def test_bootstrap_is_seeded_and_covers_the_gap():
    a, b = lists_from_counts(*REFERENCE_COUNTS[0])
    first = paired_bootstrap_ci(a, b, samples=2000, seed=3, alpha=0.05)
    assert first == paired_bootstrap_ci(a, b, samples=2000, seed=3, alpha=0.05)
    assert first["gap"] == pytest.approx(7 / 1319)
    assert first["low"] < first["gap"] < first["high"]
    normal_half_width = 1.96 * item_standard_error(a, b)
    assert (first["high"] - first["low"]) / 2 == pytest.approx(normal_half_width, rel=0.1)


def test_bootstrap_resamples_questions_jointly_across_seeds():
    # Every question's gap averaged over the two seeds is exactly 0.5, so a joint resample of
    # questions cannot move the mean; resampling each seed on its own would.
    a = [[1, 0, 1, 0, 1, 0], [0, 1, 0, 1, 0, 1]]
    b = [[0] * 6, [0] * 6]
    interval = paired_bootstrap_ci(a, b, samples=500, seed=0, alpha=0.05)
    assert interval["low"] == interval["high"] == pytest.approx(0.5)


def test_identical_conditions_have_a_zero_interval():
    a = [True, False, True, True]
    interval = paired_bootstrap_ci(a, a, samples=100, seed=0, alpha=0.05)
    assert interval["low"] == interval["high"] == interval["gap"] == 0.0
    assert item_standard_error(a, a) == 0.0


def test_item_standard_error_by_hand():
    # gaps: +1, -1, 0, 0, +1 -> mean 0.2, sample variance ((0.8^2)*2 + 1.2^2 + 2*0.2^2)/4 = 0.7
    a = [1, 0, 1, 0, 1]
    b = [0, 1, 1, 0, 0]
    assert item_standard_error(a, b) == pytest.approx(np.sqrt(0.7 / 5))


def test_seed_sd():
    assert seed_sd([0.5, 0.6, 0.7]) == pytest.approx(0.1)
    assert seed_sd([0.5]) is None


def test_minimum_detectable_effect_by_hand():
    # z_{0.975} + z_{0.8} = 1.959964 + 0.841621 = 2.801585
    # planned, from the baseline alone (p = 0.88): 2.801585 * sqrt(2 * 0.88 * 0.12 / 1319) = 0.035451
    assert minimum_detectable_effect(1319, 0.88, 0.05, 0.8) == pytest.approx(0.035451, abs=2e-6)
    # observed seed-0 discordance 101 / 1319: 2.801585 * sqrt(101 / 1319 / 1319) = 0.021346
    assert minimum_detectable_effect(1319, 0.88, 0.05, 0.8, discordance=101 / 1319) == pytest.approx(0.021346, abs=2e-6)
    assert minimum_detectable_effect(4 * 1319, 0.88, 0.05, 0.8) == pytest.approx(0.035451 / 2, abs=2e-6)


@pytest.mark.parametrize(
    ("mean_a", "mean_b", "verdict"),
    [(0.900, 0.895, "inconclusive"), (0.895, 0.900, "inconclusive"), (0.5, 0.5, "inconclusive"),
     (0.51, 0.50, "winner: attention_only"), (0.80, 0.83, "winner: all_layer"), (0.8099, 0.80, "inconclusive")],
)
def test_decision_rule(mean_a, mean_b, verdict):
    assert decide(mean_a, mean_b, 0.01, name_a="attention_only", name_b="all_layer") == verdict


def test_mismatched_pairs_are_refused():
    with pytest.raises(ValueError):
        paired_counts([True, False], [True])
