"""Paired statistics for conditions scored on the same benchmark questions, over items and training seeds (numpy/scipy).

Conventions: `correct_a` / `correct_b` are seeds x questions boolean arrays (one row per training seed of that
condition, the same question order); the two conditions may have different seeds. A gap is always A - B, as
a fraction (x100 for points). What each quantity covers:

- per-seed exact McNemar: one seed's adapters, question sampling only;
- the item-level pooled test (primary): per question d_i = mean over A's seeds - mean over B's seeds, then a
  paired sign-flip permutation test on the d_i (exact, by convolving the null distribution of the sum on its
  lattice) with the paired t beside it. A question that several seeds flip counts once, so seeds that err
  on the same borderline questions do not pass for independent evidence;
- the pooled McNemar (secondary): discordant pairs summed over seeds and tested as if every (question, seed)
  pair were independent; fine-tunes of one base flip the same questions, so this p is too small;
- item bootstrap: questions resampled, the adapters fixed; two-level bootstrap: questions resampled and, within
  each condition, its training seeds too, so the interval also covers the seed-to-seed variation;
- TOST: two one-sided t tests on the d_i against the equivalence band +-min_gap, with the (1 - 2 alpha) interval.
"""

from __future__ import annotations

import hashlib
import inspect
import math

import numpy as np
from scipy.stats import binom, binomtest, norm, t as student_t, ttest_1samp

BOOTSTRAP_CHUNK = 500  # resamples drawn at once: 500 x 1,319 indices is ~5 MB
PERMUTATION_CHUNK = 10_000  # sign-flip draws at once (Monte Carlo path)
LATTICE_TOLERANCE = 1e-9


def as_matrix(correct) -> np.ndarray:
    """seeds x questions booleans (a 1-D list is one seed)."""
    matrix = np.asarray(correct, dtype=bool)
    return matrix[None, :] if matrix.ndim == 1 else matrix


def _pair(correct_a, correct_b) -> tuple[np.ndarray, np.ndarray]:
    a, b = as_matrix(correct_a), as_matrix(correct_b)
    if a.shape[1] != b.shape[1] or a.size == 0 or b.size == 0:
        raise ValueError(f"paired results need the same non-empty questions, got {a.shape} and {b.shape}")
    return a, b


def paired_counts(correct_a, correct_b) -> dict:
    """The 2x2 paired table of one seed and the accuracy gap A - B it implies."""
    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if a.ndim != 1 or a.shape != b.shape or a.size == 0:
        raise ValueError("paired_counts takes one seed: two 1-D lists of the same non-zero length")
    a_only, b_only = int(np.sum(a & ~b)), int(np.sum(~a & b))
    return {"a_only": a_only, "b_only": b_only, "both_correct": int(np.sum(a & b)), "both_wrong": int(np.sum(~a & ~b)),
            "delta": (a_only - b_only) / a.size}


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p: a binomial test of a_only out of the discordant pairs against 1/2.

    Pooled over seeds (summed discordant counts) it treats every (question, seed) pair as an independent
    trial; it is what the reference experiment reports (p = 0.31 for 149 vs 131), kept as a secondary line.
    """
    discordant = a_only + b_only
    if discordant == 0:
        return 1.0
    return float(binomtest(a_only, discordant, 0.5, alternative="two-sided").pvalue)


def item_differences(correct_a, correct_b) -> np.ndarray:
    """Per question d_i = (mean over A's seeds) - (mean over B's seeds)."""
    a, b = _pair(correct_a, correct_b)
    return a.mean(axis=0) - b.mean(axis=0)


def sign_flip_test(d: np.ndarray, lattice: int | None = None, draws: int = 100_000, seed: int = 0) -> dict:
    """Two-sided paired sign-flip permutation test of sum(d_i) = 0: under the null each d_i keeps or flips its sign
    with probability 1/2. p = P(|S| >= |s_observed|).

    Exact when every d_i is a multiple of 1/`lattice` (with k_a and k_b seeds, lattice = lcm(k_a, k_b)): the null
    distribution of the sum is the convolution of one scaled binomial per magnitude. Otherwise `draws` seeded
    random sign patterns (Monte Carlo, p = (1 + hits) / (1 + draws)).
    """
    d = np.asarray(d, dtype=float)
    observed = float(d.sum())
    if lattice is not None:
        scaled = d * lattice
        integers = np.rint(scaled)
        if np.all(np.abs(scaled - integers) < LATTICE_TOLERANCE):
            return {"p": _exact_sign_flip_p(integers.astype(np.int64)), "method": "exact (lattice convolution)", "draws": None,
                    "statistic": observed, "nonzero": int(np.count_nonzero(integers))}
    magnitudes = np.abs(d[d != 0])
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, draws, PERMUTATION_CHUNK):
        signs = rng.choice(np.array([-1.0, 1.0]), size=(min(PERMUTATION_CHUNK, draws - start), magnitudes.size))
        hits += int(np.sum(np.abs(signs @ magnitudes) >= abs(observed) - LATTICE_TOLERANCE))
    return {"p": (1 + hits) / (1 + draws), "method": f"Monte Carlo ({draws} seeded sign patterns, seed {seed})", "draws": draws,
            "statistic": observed, "nonzero": int(magnitudes.size)}


def _exact_sign_flip_p(integers: np.ndarray) -> float:
    """P(|sum e_i x_i| >= |sum x_i|) for independent fair signs e_i, x_i integers: convolve per magnitude."""
    magnitudes, counts = np.unique(np.abs(integers[integers != 0]), return_counts=True)
    total = int(np.sum(magnitudes * counts))
    distribution = np.zeros(2 * total + 1)  # index = sum + total
    distribution[total] = 1.0
    for magnitude, count in zip(magnitudes.tolist(), counts.tolist()):
        kernel = np.zeros(2 * magnitude * count + 1)  # sum of `count` signs times magnitude: magnitude * (2j - count)
        kernel[:: 2 * magnitude] = binom.pmf(np.arange(count + 1), count, 0.5)
        distribution = np.convolve(distribution, kernel)[magnitude * count: magnitude * count + 2 * total + 1]
    support = np.arange(-total, total + 1)
    observed = abs(int(integers.sum()))
    return float(min(1.0, distribution[np.abs(support) >= observed].sum()))


def paired_t(d: np.ndarray) -> dict:
    """One-sample t test of mean(d_i) = 0 (scipy), with the mean, its standard error and the degrees of freedom."""
    d = np.asarray(d, dtype=float)
    se = item_standard_error(d)
    if not se > 0:
        return {"mean": float(d.mean()), "se": se, "t": None, "df": d.size - 1, "p": 1.0 if d.size and not np.any(d) else None}
    result = ttest_1samp(d, 0.0)
    return {"mean": float(d.mean()), "se": se, "t": float(result.statistic), "df": int(d.size - 1), "p": float(result.pvalue)}


def item_bootstrap_ci(correct_a, correct_b, samples: int, seed: int, alpha: float) -> dict:
    """Percentile interval of the mean gap, resampling questions with replacement; the trained adapters stay fixed."""
    d = item_differences(correct_a, correct_b)
    rng = np.random.default_rng(seed)
    gaps = np.concatenate([d[rng.integers(0, d.size, size=(min(BOOTSTRAP_CHUNK, samples - start), d.size))].mean(axis=1)
                           for start in range(0, samples, BOOTSTRAP_CHUNK)])
    return _interval(float(d.mean()), gaps, samples, seed, alpha, "questions (the training seeds stay fixed)")


def two_level_bootstrap_ci(correct_a, correct_b, samples: int, seed: int, alpha: float) -> dict:
    """Percentile interval of the mean gap resampling questions and, within each condition, its training seeds."""
    a, b = _pair(correct_a, correct_b)
    rng = np.random.default_rng(seed)
    n, gaps = a.shape[1], []
    a_float, b_float = a.astype(float), b.astype(float)
    for start in range(0, samples, BOOTSTRAP_CHUNK):
        size = min(BOOTSTRAP_CHUNK, samples - start)
        items = rng.integers(0, n, size=(size, n))
        seeds_a = rng.integers(0, a.shape[0], size=(size, a.shape[0]))
        seeds_b = rng.integers(0, b.shape[0], size=(size, b.shape[0]))
        # per resample: mean over the drawn questions of (mean over A's drawn seeds - mean over B's drawn seeds)
        per_question = a_float[seeds_a].mean(axis=1) - b_float[seeds_b].mean(axis=1)
        gaps.append(np.take_along_axis(per_question, items, axis=1).mean(axis=1))
    return _interval(float(item_differences(a, b).mean()), np.concatenate(gaps), samples, seed, alpha,
                     "questions and, within each condition, its training seeds")


def _interval(gap: float, resampled: np.ndarray, samples: int, seed: int, alpha: float, covers: str) -> dict:
    low, high = np.quantile(resampled, [alpha / 2, 1 - alpha / 2])
    return {"gap": gap, "low": float(low), "high": float(high), "samples": samples, "seed": seed, "alpha": alpha, "covers": covers}


def tost(d: np.ndarray, band: float, alpha: float) -> dict:
    """Equivalence of mean(d_i) to 0 within +-band: two one-sided t tests; p = the larger one-sided p.

    Equivalent at level alpha exactly when the (1 - 2 alpha) t interval lies inside (-band, band).
    """
    d = np.asarray(d, dtype=float)
    mean, df = float(d.mean()), d.size - 1
    se = item_standard_error(d)
    if not se > 0:  # every d_i equal: the mean is known exactly
        inside = abs(mean) < band
        return {"band": band, "p": 0.0 if inside else 1.0, "p_lower": None, "p_upper": None, "ci_low": mean, "ci_high": mean,
                "level": 1 - 2 * alpha, "equivalent": inside}
    p_lower = float(student_t.sf((mean + band) / se, df))  # H0: mean <= -band
    p_upper = float(student_t.cdf((mean - band) / se, df))  # H0: mean >= +band
    half = float(student_t.ppf(1 - alpha, df)) * se
    p = max(p_lower, p_upper)
    return {"band": band, "p": p, "p_lower": p_lower, "p_upper": p_upper, "ci_low": mean - half, "ci_high": mean + half,
            "level": 1 - 2 * alpha, "equivalent": bool(p < alpha)}


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjustment (strong family-wise error control), returned in the input order."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted, running = [0.0] * len(pvalues), 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[index]))
        adjusted[index] = running
    return adjusted


def item_standard_error(d: np.ndarray) -> float:
    """Standard error of the mean gap from question sampling: sd of the d_i / sqrt(N)."""
    d = np.asarray(d, dtype=float)
    return float(d.std(ddof=1) / math.sqrt(d.size)) if d.size > 1 else float("nan")


def seed_sd(values: list[float]) -> float | None:
    """Sample standard deviation over seeds (ddof=1); None with fewer than two seeds."""
    return float(np.std(values, ddof=1)) if len(values) >= 2 else None


def seed_standard_error(per_seed_gaps: list[float]) -> float | None:
    """The seed SD of one seed's gap divided by sqrt(k): the seed noise of a k-seed mean, on the scale of the item SE."""
    sd = seed_sd(per_seed_gaps)
    return None if sd is None else sd / math.sqrt(len(per_seed_gaps))


def item_level_mde(item_sd: float, n: int, alpha: float, power: float) -> float:
    """Smallest mean gap the item-level paired test (two-sided, alpha) detects with probability `power`:
    (z_{1-alpha/2} + z_power) * sd(d_i) / sqrt(N), with the observed sd of the d_i (normal approximation)."""
    return float((norm.ppf(1 - alpha / 2) + norm.ppf(power)) * item_sd / math.sqrt(n))


def planned_mde(n: int, baseline_accuracy: float, alpha: float, power: float) -> float:
    """Before any fine-tune: the MDE of one seed's paired test if the conditions erred independently, d = 2p(1-p)."""
    return float((norm.ppf(1 - alpha / 2) + norm.ppf(power)) * math.sqrt(2 * baseline_accuracy * (1 - baseline_accuracy) / n))


def decide(mean_a: float, mean_b: float, min_gap: float, name_a: str = "a", name_b: str = "b") -> str:
    """The contract's rule: |mean gap| < min_gap => "inconclusive", else "winner: <higher condition>"."""
    gap = round(mean_a - mean_b, 12)  # 0.51 - 0.50 must count as 0.01, not 0.0099999...
    if abs(gap) < min_gap or gap == 0:
        return "inconclusive"
    return f"winner: {name_a if gap > 0 else name_b}"


def rule_identity(min_gap: float) -> dict:
    """What the declared rule is: its words, its threshold and the SHA-256 of the code that computes it."""
    return {"rule": "|mean strict gap| < min_gap => inconclusive; else the condition with the higher mean (point estimate only)",
            "min_gap": min_gap, "code_sha256": hashlib.sha256(inspect.getsource(decide).encode("utf-8")).hexdigest()}


def statistics_identity() -> str:
    """SHA-256 of this module: every number in a comparison is computed here."""
    return hashlib.sha256(inspect.getsource(inspect.getmodule(decide)).encode("utf-8")).hexdigest()
