"""Every number of a report, from `Evidence` to the dict written as comparison.json.

Per benchmark: accuracy per condition (strict primary, lenient beside it, each against the untouched
baseline), and per declared comparison (a, b): the declared rule's outcome (primary benchmark only), the
per-seed exact McNemar, the item-level pooled test (sign-flip permutation, paired t beside it), the pooled
McNemar as a labelled secondary line, item-only and two-level bootstrap intervals, TOST equivalence against
the band, the MDE of the test run, item SE beside the seed noise of the same mean, and a verdict. The item-
level p-values are Holm-adjusted across every declared comparison x benchmark.
"""

from __future__ import annotations

import math

import numpy as np

from loraexp.analysis.evidence import BenchmarkEvidence, Evidence
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
    statistics_identity,
    tost,
    two_level_bootstrap_ci,
)
from loraexp.errors import UserError
from loraexp.scoring.scorers import _THOUSANDS_COMMA as THOUSANDS_COMMA  # the lenient scorer's own rule (a rename there would change its code hash)

FORMAT_SHARE = 0.5  # lenient delta-vs-baseline below half the strict one: most of the strict gain is answer format


def accuracy_spread(values: list[float]) -> dict:
    """Mean, min, max, range and seed SD of one condition's accuracies over seeds."""
    return {"mean": float(np.mean(values)), "min": float(min(values)), "max": float(max(values)),
            "range": float(max(values) - min(values)), "seed_sd": seed_sd(values)}


def accuracy_table(benchmark: BenchmarkEvidence) -> dict:
    """Per condition and seed: strict and lenient accuracy, their spread, and the gap to the baseline in points."""
    baseline = benchmark.baseline
    table = {"baseline": {"strict": float(baseline.strict.mean()), "lenient": float(baseline.lenient.mean()),
                          "correct": int(baseline.strict.sum()), "total": len(baseline.rows)}}
    for name, by_seed in benchmark.runs.items():
        entry: dict = {}
        for scorer in ("strict", "lenient"):
            per_seed = {str(seed): float(getattr(scores, scorer).mean()) for seed, scores in sorted(by_seed.items())}
            entry[scorer] = {"per_seed": per_seed, **accuracy_spread(list(per_seed.values()))}
            entry[f"{scorer}_delta_vs_baseline_points"] = 100 * (entry[scorer]["mean"] - table["baseline"][scorer])
        for key in ("extraction_failures", "truncations"):
            entry[key] = {str(seed): scores.summary.get(key, _count(scores.rows, key)) for seed, scores in sorted(by_seed.items())}
        table[name] = entry
    return table


def _count(rows: list[dict], key: str) -> int:
    if key == "extraction_failures":
        return sum(row.get("extracted") is None for row in rows)
    return sum(row.get("stop_reason") == "length" for row in rows)


def format_vs_skill(accuracy: dict, conditions: list[str]) -> dict:
    """Per condition: strict and lenient gain over the baseline, and whether most of the strict gain is answer format."""
    out = {}
    for name in conditions:
        strict, lenient = accuracy[name]["strict_delta_vs_baseline_points"], accuracy[name]["lenient_delta_vs_baseline_points"]
        out[name] = {"strict_delta_points": strict, "lenient_delta_points": lenient,
                     "mostly_format": bool(strict > 0 and lenient < FORMAT_SHARE * strict)}
    return out


def compare_pair(benchmark: BenchmarkEvidence, a: str, b: str, evidence: Evidence) -> dict:
    """Everything about a - b on one benchmark except the multiplicity-adjusted p and the verdict (set later)."""
    decision = evidence.decision
    correct_a, correct_b = benchmark.scores(a), benchmark.scores(b)
    d = item_differences(correct_a, correct_b)
    lattice = math.lcm(correct_a.shape[0], correct_b.shape[0])
    per_seed = []
    for seed in sorted(set(benchmark.runs[a]) & set(benchmark.runs[b])):  # paired seed by seed where both have it
        counts = paired_counts(benchmark.runs[a][seed].strict, benchmark.runs[b][seed].strict)
        per_seed.append({"seed": seed, **counts, "mcnemar_p": mcnemar_exact(counts["a_only"], counts["b_only"])})
    pooled_a, pooled_b = sum(s["a_only"] for s in per_seed), sum(s["b_only"] for s in per_seed)
    mean_a, mean_b = float(correct_a.mean()), float(correct_b.mean())
    lenient_gap = float(benchmark.scores(a, "lenient").mean() - benchmark.scores(b, "lenient").mean())
    item_sd = float(d.std(ddof=1)) if d.size > 1 else float("nan")
    n, alpha = d.size, decision.alpha
    return {
        "a": a, "b": b, "gap": mean_a - mean_b, "gap_points": 100 * (mean_a - mean_b), "lenient_gap_points": 100 * lenient_gap,
        "rule": {"outcome": decide(mean_a, mean_b, decision.min_gap, a, b), "min_gap": decision.min_gap, "applies": benchmark.primary},
        "item_level": {"n": n, "seeds": {a: int(correct_a.shape[0]), b: int(correct_b.shape[0])}, "mean": float(d.mean()), "sd": item_sd,
                       "sign_flip": sign_flip_test(d, lattice, decision.permutation_draws, decision.bootstrap_seed), "paired_t": paired_t(d),
                       "covers": "questions; each question's difference is averaged over the seeds of each condition first"},
        "per_seed": per_seed,
        "pooled_mcnemar": {"a_only": pooled_a, "b_only": pooled_b, "p": mcnemar_exact(pooled_a, pooled_b),
                           "assumption": "discordant (question, seed) pairs summed over seeds and treated as independent; seeds that flip the "
                                         "same questions make this p too small, so it is secondary"},
        "intervals": {"item_only": item_bootstrap_ci(correct_a, correct_b, decision.bootstrap_samples, decision.bootstrap_seed, alpha),
                      "two_level": two_level_bootstrap_ci(correct_a, correct_b, decision.bootstrap_samples, decision.bootstrap_seed, alpha)},
        "equivalence": tost(d, decision.min_gap, alpha),
        "item_se": item_standard_error(d),
        "seed_sd_gap": seed_sd([s["delta"] for s in per_seed]),
        "seed_se": seed_standard_error([s["delta"] for s in per_seed]),
        "mde": {"n": n, "alpha": alpha, "power": decision.power, "item_sd": item_sd,
                "item_level": item_level_mde(item_sd, n, alpha, decision.power) if n > 1 else None,
                "planned": planned_mde(n, float(benchmark.baseline.strict.mean()), alpha, decision.power),
                "baseline_accuracy": float(benchmark.baseline.strict.mean())},
    }


def verdict(pair: dict, alpha: float) -> str:
    """difference (adjusted item-level p < alpha and the two-level interval excludes 0), equivalent (TOST within the band),
    or inconclusive. A significant difference inside the band is still a difference (flagged `within_band`)."""
    interval = pair["intervals"]["two_level"]
    if pair["p_adjusted"] < alpha and (interval["low"] > 0 or interval["high"] < 0):
        return "difference"
    return "equivalent" if pair["equivalence"]["equivalent"] else "inconclusive"


def compare(evidence: Evidence) -> dict:
    """Every number of the report, as written to comparison.json."""
    benchmarks = {}
    for benchmark in evidence.benchmarks:
        accuracy = accuracy_table(benchmark)
        benchmarks[benchmark.name] = {
            "primary": benchmark.primary, **benchmark.description, "size": len(benchmark.baseline.rows),
            "eval_contract_sha256": benchmark.baseline.summary.get("eval_contract_sha256"),
            "reference_commas": reference_commas(benchmark),
            "accuracy": accuracy, "format_vs_skill": format_vs_skill(accuracy, evidence.conditions),
            "comparisons": [compare_pair(benchmark, a, b, evidence) for a, b in evidence.comparisons],
            "determinism": {scores.label: scores.summary.get("determinism") for scores in benchmark.all_models()},
            "disagreement_example_ids": [{k: e[k] for k in ("seed", "correct_condition", "wrong_condition", "example_id")}
                                         for e in disagreement_examples(benchmark, evidence.comparisons)],
        }
    family = [pair for entry in benchmarks.values() for pair in entry["comparisons"]]
    for pair, adjusted in zip(family, holm([pair["item_level"]["sign_flip"]["p"] for pair in family])):
        pair["p_adjusted"] = adjusted
        pair["verdict"] = verdict(pair, evidence.decision.alpha)
        pair["within_band"] = pair["verdict"] == "difference" and pair["equivalence"]["equivalent"]
    comparison = {
        "experiment": evidence.experiment, "contract_sha256": evidence.contract.sha256 if evidence.contract else None,
        "conditions": evidence.conditions, "comparisons": [list(pair) for pair in evidence.comparisons],
        "primary_benchmark": evidence.benchmarks[0].name, "setting": evidence.setting,
        "rule": rule_identity(evidence.decision.min_gap), "statistics_code_sha256": statistics_identity(),
        "decision": evidence.decision.model_dump(mode="json"),
        "multiplicity": {"method": "Holm", "family": "every declared comparison x benchmark (item-level sign-flip p)", "size": len(family)},
        "benchmarks": benchmarks, "notes": evidence.notes,
    }
    if evidence.from_runs:
        comparison.update(run_facts(evidence))
    return comparison


def reference_commas(benchmark: BenchmarkEvidence) -> dict:
    """References written with thousands commas (GSM8K test: 14 of 1,319): strict marks `\\boxed{2125}` wrong against `2,125`."""
    found = [row["reference_answer"] for row in benchmark.baseline.rows if THOUSANDS_COMMA.search(str(row["reference_answer"]))]
    return {"count": len(found), "of": len(benchmark.baseline.rows), "examples": found[:5]}


def run_facts(evidence: Evidence) -> dict:
    """What only a pipeline run knows: selected steps, LR selection, costs, adapter sizes, throughput."""
    return {
        "selected_steps": {name: {str(seed): run.summary["selected_step"] for seed, run in sorted(by_seed.items())} for name, by_seed in evidence.trains.items()},
        "learning_rates": {name: {"selected_lr": choice["selected_lr"], "selected_batch_size": choice["selected_batch_size"]}
                           for name, choice in (evidence.selection or {}).get("conditions", {}).items()},
        "costs": cost_rows(evidence),
        "adapter_sizes": adapter_sizes(evidence),
        "throughput": (evidence.throughput or {}).get("shapes", []),
    }


def adapter_sizes(evidence: Evidence) -> dict:
    """Per condition: LoRA parameters and adapter bytes, measured from the exported adapters (mean over seeds)."""
    sizes: dict[str, dict] = {}
    for export in (evidence.exports or {}).get("checkpoints", []):
        entry = sizes.setdefault(export["condition"], {"parameters": [], "bytes": [], "rank": export.get("lora_r")})
        entry["parameters"].append(export.get("lora_parameters"))
        entry["bytes"].append(export["adapter_bytes"])
    return {name: {"rank": entry["rank"], "parameters": entry["parameters"][0] if len(set(entry["parameters"])) == 1 else entry["parameters"],
                   "bytes": float(np.mean(entry["bytes"]))} for name, entry in sizes.items()}


def cost_rows(evidence: Evidence) -> list[dict]:
    """Per condition x seed: adapter size, train / validation / eval tokens and dollars (eval summed over benchmarks)."""
    contract = evidence.contract
    adapters = {(e["condition"], e["seed"]): e for e in (evidence.exports or {}).get("checkpoints", [])}
    price_per_train_token = contract.prices.train_per_million / 1e6
    rows = []
    for name, by_seed in evidence.trains.items():
        for seed, train in sorted(by_seed.items()):
            adapter = adapters.get((name, seed))
            if adapter is None:
                raise UserError(f"export run {evidence.export_dir.name} has no adapter for {name} seed {seed}; rerun `loraexp export`")
            evals = [benchmark.runs[name][seed].summary for benchmark in evidence.benchmarks]
            train_usd = train.summary["train_tokens"] * price_per_train_token
            eval_costs = [e.get("cost_usd") for e in evals]
            rows.append({
                "condition": name, "seed": seed, "adapter_mb": adapter["adapter_bytes"] / 1e6,
                "train_tokens": train.summary["train_tokens"], "train_usd": train_usd,
                "val_tokens": sum(c["val_tokens"] for c in train.checkpoints),
                "val_usd": _minus(train.summary.get("cost_usd"), train_usd),
                "eval_tokens": sum(e["prompt_tokens"] + e["generated_tokens"] for e in evals),
                "eval_usd": None if None in eval_costs else sum(eval_costs),
            })
    return rows


def _minus(total: float | None, part: float) -> float | None:
    return None if total is None else max(total - part, 0.0)


def disagreement_examples(benchmark: BenchmarkEvidence, comparisons: list[tuple[str, str]]) -> list[dict]:
    """Per declared comparison and direction, the first question (seed order, then benchmark order) one condition
    got right and the other wrong under the same seed."""
    examples = []
    for a, b in comparisons:
        seeds = sorted(set(benchmark.runs[a]) & set(benchmark.runs[b]))
        for right, wrong in ((a, b), (b, a)):
            example = next((_example(benchmark, right, wrong, seed, row_r, row_w) for seed in seeds
                            for row_r, row_w in zip(benchmark.runs[right][seed].rows, benchmark.runs[wrong][seed].rows)
                            if row_r["correct"] and not row_w["correct"]), None)
            if example:
                examples.append(example)
    return examples


def _example(benchmark: BenchmarkEvidence, right: str, wrong: str, seed: int, row_r: dict, row_w: dict) -> dict:
    return {"benchmark": benchmark.name, "seed": seed, "correct_condition": right, "wrong_condition": wrong,
            "example_id": row_r["example_id"], "benchmark_index": row_r["benchmark_index"], "question": row_r["question"],
            "reference_answer": row_r["reference_answer"], "correct_extracted": row_r["extracted"], "wrong_extracted": row_w["extracted"],
            "correct_generation": row_r["generated_text"], "wrong_generation": row_w["generated_text"]}
