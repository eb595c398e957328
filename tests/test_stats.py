"""Paired statistics against independent computations (scipy, closed forms, brute force) and the reference experiment's counts."""

from __future__ import annotations

import itertools
import math
from math import comb

import numpy as np
import pytest
from scipy import stats as scipy_stats

from loraexp.analysis.stats import (
    decide,
    holm,
    item_bootstrap_ci,
    item_differences,
    item_level_mde,
    item_standard_error,
    mcnemar_exact,
    paired_counts,
    paired_t,
    planned_mde,
    rule_identity,
    seed_sd,
    seed_standard_error,
    sign_flip_test,
    tost,
    two_level_bootstrap_ci,
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
    first = item_bootstrap_ci(a, b, samples=2000, seed=3, alpha=0.05)
    assert first == item_bootstrap_ci(a, b, samples=2000, seed=3, alpha=0.05)
    assert first["gap"] == pytest.approx(7 / 1319)
    assert first["low"] < first["gap"] < first["high"]
    normal_half_width = 1.96 * item_standard_error(item_differences(a, b))
    assert (first["high"] - first["low"]) / 2 == pytest.approx(normal_half_width, rel=0.1)


def test_item_bootstrap_resamples_questions_jointly_across_seeds():
    # Every question's gap averaged over the two seeds is exactly 0.5, so a joint resample of
    # questions cannot move the mean; resampling each seed on its own would.
    a = [[1, 0, 1, 0, 1, 0], [0, 1, 0, 1, 0, 1]]
    b = [[0] * 6, [0] * 6]
    interval = item_bootstrap_ci(a, b, samples=500, seed=0, alpha=0.05)
    assert interval["low"] == interval["high"] == pytest.approx(0.5)
    assert "seeds stay fixed" in interval["covers"]


def test_two_level_bootstrap_also_covers_the_seeds():
    # Same data: resampling the seeds too moves the per-question mean (1, 0 or 0.5), so the interval opens up.
    a = [[1, 0, 1, 0, 1, 0], [0, 1, 0, 1, 0, 1]]
    b = [[0] * 6, [0] * 6]
    interval = two_level_bootstrap_ci(a, b, samples=2000, seed=0, alpha=0.05)
    assert interval["gap"] == pytest.approx(0.5) and interval["low"] < 0.5 < interval["high"]
    assert "training seeds" in interval["covers"]
    # seeds that agree exactly: resampling them changes nothing, the two intervals coincide
    rng = np.random.default_rng(1)
    row_a, row_b = rng.random(300) < 0.6, rng.random(300) < 0.5
    same_a, same_b = np.stack([row_a] * 3), np.stack([row_b] * 3)
    two = two_level_bootstrap_ci(same_a, same_b, samples=1000, seed=4, alpha=0.05)
    one = item_bootstrap_ci(same_a, same_b, samples=1000, seed=4, alpha=0.05)
    assert two["low"] == pytest.approx(one["low"], abs=0.02) and two["high"] == pytest.approx(one["high"], abs=0.02)


def test_identical_conditions_have_a_zero_interval_and_equivalence():
    a = [True, False, True, True]
    interval = item_bootstrap_ci(a, a, samples=100, seed=0, alpha=0.05)
    assert interval["low"] == interval["high"] == interval["gap"] == 0.0
    assert item_standard_error(item_differences(a, a)) == 0.0
    assert tost(item_differences(a, a), band=0.01, alpha=0.05)["equivalent"]
    assert sign_flip_test(item_differences(a, a), lattice=1)["p"] == 1.0


def test_item_differences_average_each_condition_over_its_own_seeds():
    a = [[1, 1, 0], [1, 0, 0], [1, 0, 0]]  # 3 seeds
    b = [[0, 1, 1], [0, 1, 0]]  # 2 seeds
    assert item_differences(a, b).tolist() == pytest.approx([1.0, 1 / 3 - 1.0, -0.5])


def test_sign_flip_with_one_seed_is_exactly_mcnemar():
    """With one seed each d_i is -1, 0 or +1: flipping signs is the binomial test on the discordant questions."""
    for a_only, b_only, both_correct, both_wrong in REFERENCE_COUNTS.values():
        a, b = lists_from_counts(a_only, b_only, both_correct, both_wrong)
        result = sign_flip_test(item_differences(a, b), lattice=1)
        assert result["method"].startswith("exact") and result["p"] == pytest.approx(exact_two_sided(a_only, b_only), rel=1e-9)


def test_exact_sign_flip_equals_brute_force_and_monte_carlo():
    rng = np.random.default_rng(7)
    a, b = rng.random((3, 15)) < 0.5, rng.random((2, 15)) < 0.5
    d = item_differences(a, b)
    nonzero = np.abs(d[d != 0])
    brute = np.mean([abs(np.dot(signs, nonzero)) >= abs(d.sum()) - 1e-12 for signs in itertools.product((-1, 1), repeat=nonzero.size)])
    exact = sign_flip_test(d, lattice=6)
    assert exact["p"] == pytest.approx(brute, rel=1e-9)
    monte_carlo = sign_flip_test(d, lattice=None, draws=100_000, seed=3)
    assert monte_carlo["draws"] == 100_000 and monte_carlo["p"] == pytest.approx(brute, abs=0.01)
    assert monte_carlo == sign_flip_test(d, lattice=None, draws=100_000, seed=3)  # seeded


def test_exact_sign_flip_agrees_with_scipy_permutation_test_at_scale():
    rng = np.random.default_rng(0)
    a, b = rng.random((3, 400)) < 0.55, rng.random((3, 400)) < 0.5
    d = item_differences(a, b)
    ours = sign_flip_test(d, lattice=3)["p"]
    theirs = scipy_stats.permutation_test((d,), np.sum, permutation_type="samples", n_resamples=200_000, random_state=0).pvalue
    assert ours == pytest.approx(theirs, abs=0.01)


def test_aligned_items_make_the_item_level_test_more_conservative_than_pooled_mcnemar():
    """Three seeds that flip the same 20 questions: pooled McNemar counts them three times as independent evidence."""
    n = 300
    a, b = np.zeros((3, n), bool), np.zeros((3, n), bool)
    a[:, :150] = b[:, :150] = True  # both right
    b[:, 150:170] = True  # the same 20 questions only b gets right, in every seed
    a[:, 170:178] = True  # the same 8 questions only a gets right, in every seed
    per_seed = [paired_counts(a[s], b[s]) for s in range(3)]
    pooled = mcnemar_exact(sum(c["a_only"] for c in per_seed), sum(c["b_only"] for c in per_seed))
    item_level = sign_flip_test(item_differences(a, b), lattice=3)["p"]
    assert pooled == pytest.approx(exact_two_sided(24, 60), rel=1e-9) and pooled < 0.001
    assert item_level == pytest.approx(exact_two_sided(8, 20), rel=1e-9)  # one vote per question: McNemar on 8 vs 20
    assert item_level > 0.03 > pooled  # more conservative


def test_paired_t_is_the_closed_form():
    d = np.array([0.0, 1.0, -1 / 3, 2 / 3, 0.0, 1.0, -1.0, 1 / 3])
    result = paired_t(d)
    t = d.mean() / (d.std(ddof=1) / math.sqrt(d.size))
    assert result["t"] == pytest.approx(t) and result["df"] == 7
    assert result["p"] == pytest.approx(2 * scipy_stats.t.sf(abs(t), 7))


def test_tost_against_the_closed_form_and_its_interval():
    rng = np.random.default_rng(2)
    d = rng.normal(0.002, 0.3, 1319)
    band, alpha = 0.03, 0.05
    result = tost(d, band, alpha)
    se = d.std(ddof=1) / math.sqrt(d.size)
    lower = scipy_stats.t.sf((d.mean() + band) / se, d.size - 1)
    upper = scipy_stats.t.cdf((d.mean() - band) / se, d.size - 1)
    assert result["p"] == pytest.approx(max(lower, upper))
    half = scipy_stats.t.ppf(0.95, d.size - 1) * se
    assert (result["ci_low"], result["ci_high"]) == pytest.approx((d.mean() - half, d.mean() + half)) and result["level"] == 0.9
    # equivalent at alpha exactly when the 90% interval lies inside the band
    for width in (0.005, 0.01, 0.02, 0.03, 0.05):
        verdict = tost(d, width, alpha)
        assert verdict["equivalent"] == (-width < verdict["ci_low"] and verdict["ci_high"] < width)


def test_holm_on_known_p_values():
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> running max 0.02, 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5]) == [0.5] and holm([0.9, 0.8]) == [1.0, 1.0]


def test_item_standard_error_by_hand():
    # gaps: +1, -1, 0, 0, +1 -> mean 0.2, sample variance ((0.8^2)*2 + 1.2^2 + 2*0.2^2)/4 = 0.7
    a = [1, 0, 1, 0, 1]
    b = [0, 1, 1, 0, 0]
    assert item_standard_error(item_differences(a, b)) == pytest.approx(np.sqrt(0.7 / 5))


def test_seed_noise_on_the_scale_of_the_item_se():
    assert seed_sd([0.5, 0.6, 0.7]) == pytest.approx(0.1)
    assert seed_sd([0.5]) is None
    assert seed_standard_error([0.5, 0.6, 0.7]) == pytest.approx(0.1 / math.sqrt(3))  # the seed noise of a 3-seed mean


def test_minimum_detectable_effects_by_hand():
    # z_{0.975} + z_{0.8} = 1.959964 + 0.841621 = 2.801585
    assert item_level_mde(0.30, 1319, 0.05, 0.8) == pytest.approx(2.801585 * 0.30 / math.sqrt(1319), abs=2e-6)
    # planned, from the baseline alone (p = 0.88): 2.801585 * sqrt(2 * 0.88 * 0.12 / 1319) = 0.035451
    assert planned_mde(1319, 0.88, 0.05, 0.8) == pytest.approx(0.035451, abs=2e-6)


def test_rule_identity_hashes_the_rule_code():
    import hashlib
    import inspect

    identity = rule_identity(0.01)
    assert identity["min_gap"] == 0.01 and identity["code_sha256"] == hashlib.sha256(inspect.getsource(decide).encode()).hexdigest()


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
