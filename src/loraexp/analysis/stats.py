"""Paired statistics for two conditions scored on the same benchmark questions (pure numpy/scipy).

Conventions: `correct_a` / `correct_b` are per-question booleans in the same question order; with
several seeds they are 2-D, one row per seed, rows paired seed by seed. A gap is always A - B, as a
fraction (multiply by 100 for points).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import binomtest, norm

BOOTSTRAP_CHUNK = 1000  # resamples drawn at once: 1,000 x 1,319 indices is ~10 MB


def paired_counts(correct_a: list[bool], correct_b: list[bool]) -> dict:
    """The 2x2 paired table of one seed and the accuracy gap A - B it implies."""
    a, b = _paired_rows(correct_a, correct_b)
    if a.ndim != 1:
        raise ValueError("paired_counts takes one seed: two 1-D lists")
    a_only, b_only = int(np.sum(a & ~b)), int(np.sum(~a & b))
    return {
        "a_only": a_only,
        "b_only": b_only,
        "both_correct": int(np.sum(a & b)),
        "both_wrong": int(np.sum(~a & ~b)),
        "delta": (a_only - b_only) / a.size,
    }


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p: a binomial test of a_only out of the discordant pairs against 1/2.

    Pooled over seeds, pass the summed discordant counts (sum a_only, sum b_only over seeds). That
    treats every (question, seed) pair as one paired trial, which ignores that one question appears
    once per seed; it is what the reference experiment reports (p = 0.31 for 149 vs 131).
    """
    discordant = a_only + b_only
    if discordant == 0:
        return 1.0
    return float(binomtest(a_only, discordant, 0.5, alternative="two-sided").pvalue)


def paired_bootstrap_ci(correct_a, correct_b, samples: int, seed: int, alpha: float) -> dict:
    """Percentile interval of the gap A - B, resampling questions (jointly across seeds) with replacement.

    Each resample draws one set of question indices, takes every seed's gap on it and averages over
    seeds: the interval covers question sampling, the seeds stay fixed.
    """
    per_question_gap = _per_question_gap(correct_a, correct_b)
    rng = np.random.default_rng(seed)
    size = per_question_gap.size
    gaps = []
    for start in range(0, samples, BOOTSTRAP_CHUNK):
        indices = rng.integers(0, size, size=(min(BOOTSTRAP_CHUNK, samples - start), size))
        gaps.append(per_question_gap[indices].mean(axis=1))
    resampled = np.concatenate(gaps)
    low, high = np.quantile(resampled, [alpha / 2, 1 - alpha / 2])
    return {"gap": float(per_question_gap.mean()), "low": float(low), "high": float(high),
            "samples": samples, "seed": seed, "alpha": alpha}


def item_standard_error(correct_a, correct_b) -> float:
    """Standard error of the (seed-averaged) gap from question sampling: sd of per-question gaps / sqrt(N)."""
    per_question_gap = _per_question_gap(correct_a, correct_b)
    return float(per_question_gap.std(ddof=1) / np.sqrt(per_question_gap.size))


def seed_sd(values: list[float]) -> float | None:
    """Sample standard deviation over seeds (ddof=1); None with fewer than two seeds."""
    return float(np.std(values, ddof=1)) if len(values) >= 2 else None


def minimum_detectable_effect(n: int, baseline_accuracy: float, alpha: float, power: float, discordance: float | None = None) -> float:
    """Smallest accuracy gap a two-sided paired test at `alpha` detects with probability `power` on n questions.

    MDE = (z_{1-alpha/2} + z_{power}) * sqrt(d / n), the normal approximation of McNemar's test with
    discordant rate d (the delta^2 term next to d is dropped). With `discordance` unknown (before
    training) d = 2 p (1 - p) for the baseline accuracy p: the discordance if the two conditions erred
    independently, which makes the formula the unpaired two-proportion MDE. Fine-tunes of one base
    model share most errors, so the observed d is lower and the planned MDE is an upper bound.
    """
    rate = 2 * baseline_accuracy * (1 - baseline_accuracy) if discordance is None else discordance
    z_total = norm.ppf(1 - alpha / 2) + norm.ppf(power)
    return float(z_total * np.sqrt(rate / n))


def decide(mean_a: float, mean_b: float, min_gap: float, name_a: str = "a", name_b: str = "b") -> str:
    """The contract's rule: |mean gap| < min_gap => "inconclusive", else "winner: <higher condition>"."""
    gap = round(mean_a - mean_b, 12)  # 0.51 - 0.50 must count as 0.01, not 0.0099999...
    if abs(gap) < min_gap or gap == 0:
        return "inconclusive"
    return f"winner: {name_a if gap > 0 else name_b}"


def _paired_rows(correct_a, correct_b) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"paired results need the same non-empty shape, got {a.shape} and {b.shape}")
    return a, b


def _per_question_gap(correct_a, correct_b) -> np.ndarray:
    """Per question: correct_a - correct_b, averaged over seeds when the inputs are seeds x questions."""
    a, b = _paired_rows(correct_a, correct_b)
    gap = a.astype(float) - b.astype(float)
    return gap if gap.ndim == 1 else gap.mean(axis=0)
