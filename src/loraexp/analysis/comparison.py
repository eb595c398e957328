"""What the figures stage reads (eval, train, lr-select, export runs) and every number it reports.

`load_inputs` finds the finished runs by their default ids and checks they can be compared (same
evaluation contract, same questions); `compare` turns them into the dict written as
comparison.json, from which every figure, table and sentence of the report is made.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from loraexp.analysis.stats import (
    decide,
    item_standard_error,
    mcnemar_exact,
    minimum_detectable_effect,
    paired_bootstrap_ci,
    paired_counts,
    seed_sd,
)
from loraexp.contracts import Contract
from loraexp.errors import UserError
from loraexp.files import read_json, read_jsonl
from loraexp.session import Session


@dataclass
class EvalRun:
    run_id: str
    dir: Path
    summary: dict
    rows: list[dict]  # predictions in benchmark order

    @property
    def strict(self) -> np.ndarray:
        return np.array([row["correct"] for row in self.rows], dtype=bool)

    @property
    def lenient(self) -> np.ndarray:
        return np.array([row["lenient_correct"] for row in self.rows], dtype=bool)


@dataclass
class TrainRun:
    run_id: str
    dir: Path
    summary: dict
    metrics: list[dict]
    checkpoints: list[dict]


@dataclass
class Inputs:
    conditions: list[str]
    seeds: list[int]
    baseline: EvalRun
    evals: dict[str, dict[int, EvalRun]]
    trains: dict[str, dict[int, TrainRun]]
    lr_select_dir: Path
    export_dir: Path
    selection: dict
    throughput: dict
    exports: dict
    files_read: dict[str, list[str]] = field(default_factory=dict)  # run dir name -> file names read

    def file(self, run_dir: Path, name: str) -> Path:
        self.files_read.setdefault(run_dir.name, [])
        if name not in self.files_read[run_dir.name]:
            self.files_read[run_dir.name].append(name)
        return run_dir / name


def load_inputs(session: Session) -> Inputs:
    """Every input run of the figures stage; a missing one is a UserError naming the stage to run."""
    contract = session.contract
    conditions = [condition.name for condition in contract.lora.conditions]
    if len(conditions) != 2:
        raise UserError(f"figures compares exactly two conditions; this contract has {len(conditions)}: {', '.join(conditions)}")
    seeds = list(contract.train.seeds)
    lr_select_dir = session.finished_run("lr-select")
    export_dir = session.finished_run("export")
    inputs = Inputs(conditions, seeds, None, {}, {}, lr_select_dir, export_dir, {}, {}, {})  # type: ignore[arg-type]
    inputs.baseline = _load_eval(inputs, session.finished_run("eval", None, "baseline"))
    for name in conditions:
        inputs.evals[name] = {seed: _load_eval(inputs, session.finished_run("eval", None, name, f"seed{seed}")) for seed in seeds}
        inputs.trains[name] = {seed: _load_train(inputs, session.finished_run("train", None, name, f"seed{seed}")) for seed in seeds}
    inputs.selection = read_json(inputs.file(lr_select_dir, "selection.json"))
    inputs.throughput = read_json(inputs.file(lr_select_dir, "throughput.json"))
    inputs.exports = read_json(inputs.file(export_dir, "exports.json"))
    check_comparable(inputs)
    return inputs


def _load_eval(inputs: Inputs, run_dir: Path) -> EvalRun:
    rows = sorted(read_jsonl(inputs.file(run_dir, "predictions.jsonl")), key=lambda row: row["benchmark_index"])
    return EvalRun(run_dir.name, run_dir, read_json(inputs.file(run_dir, "summary.json")), rows)


def _load_train(inputs: Inputs, run_dir: Path) -> TrainRun:
    return TrainRun(run_dir.name, run_dir, read_json(inputs.file(run_dir, "summary.json")),
                    read_jsonl(inputs.file(run_dir, "metrics.jsonl")), read_jsonl(inputs.file(run_dir, "checkpoints.jsonl")))


def all_evals(inputs: Inputs) -> list[EvalRun]:
    return [inputs.baseline] + [inputs.evals[name][seed] for name in inputs.conditions for seed in inputs.seeds]


def check_comparable(inputs: Inputs) -> None:
    """Refuse to compare runs scored under different evaluation contracts or on different questions."""
    baseline = inputs.baseline
    for run in all_evals(inputs)[1:]:
        if run.summary.get("eval_contract_sha256") != baseline.summary.get("eval_contract_sha256"):
            raise UserError(
                f"eval run {run.run_id} was scored under evaluation contract {str(run.summary.get('eval_contract_sha256'))[:12]}, "
                f"the baseline {baseline.run_id} under {str(baseline.summary.get('eval_contract_sha256'))[:12]}; rerun `loraexp eval` for both under one contract"
            )
        if [row["example_id"] for row in run.rows] != [row["example_id"] for row in baseline.rows]:
            raise UserError(f"eval run {run.run_id} scored other questions than {baseline.run_id}; rerun `loraexp eval` with the same benchmark and limit")
        recorded = run.summary.get("strict_accuracy")
        if recorded is None or abs(recorded - float(run.strict.mean())) > 1e-9:
            raise UserError(f"eval run {run.run_id}: summary.json strict_accuracy {recorded} disagrees with predictions.jsonl; rerun `loraexp eval` for it")


def accuracy_spread(values: list[float]) -> dict:
    """Mean, min, max, range and seed SD of one condition's accuracies over seeds."""
    return {"mean": float(np.mean(values)), "min": float(min(values)), "max": float(max(values)),
            "range": float(max(values) - min(values)), "seed_sd": seed_sd(values)}


def accuracy_table(inputs: Inputs) -> dict:
    """Per condition and seed: strict and lenient accuracy, their spread, and the gap to the baseline in points."""
    baseline = {"strict": inputs.baseline.summary["strict_accuracy"], "lenient": inputs.baseline.summary["lenient_accuracy"],
                "correct": inputs.baseline.summary["correct"], "total": inputs.baseline.summary["total"]}
    table = {"baseline": baseline}
    for name in inputs.conditions:
        entry: dict = {}
        for scorer, key in (("strict", "strict_accuracy"), ("lenient", "lenient_accuracy")):
            per_seed = {str(seed): inputs.evals[name][seed].summary[key] for seed in inputs.seeds}
            entry[scorer] = {"per_seed": per_seed, **accuracy_spread(list(per_seed.values()))}
            entry[f"{scorer}_delta_vs_baseline_points"] = 100 * (entry[scorer]["mean"] - baseline[scorer])
        for key in ("extraction_failures", "truncations"):
            entry[key] = {str(seed): inputs.evals[name][seed].summary.get(key) for seed in inputs.seeds}
        table[name] = entry
    return table


def paired_comparison(contract: Contract, inputs: Inputs, accuracy: dict) -> dict:
    """A vs B on the same questions: per-seed tables + McNemar, pooled McNemar, bootstrap CI, SEs, MDE, decision."""
    name_a, name_b = inputs.conditions
    decision = contract.decision
    correct_a = np.stack([inputs.evals[name_a][seed].strict for seed in inputs.seeds])
    correct_b = np.stack([inputs.evals[name_b][seed].strict for seed in inputs.seeds])
    per_seed = []
    for index, seed in enumerate(inputs.seeds):
        counts = paired_counts(correct_a[index], correct_b[index])
        per_seed.append({"seed": seed, **counts, "mcnemar_p": mcnemar_exact(counts["a_only"], counts["b_only"])})
    pooled_a, pooled_b = sum(s["a_only"] for s in per_seed), sum(s["b_only"] for s in per_seed)
    pooled = {"a_only": pooled_a, "b_only": pooled_b, "both_correct": sum(s["both_correct"] for s in per_seed),
              "both_wrong": sum(s["both_wrong"] for s in per_seed), "mcnemar_p": mcnemar_exact(pooled_a, pooled_b),
              "pooling": "discordant counts summed over seeds, one exact binomial test"}
    interval = paired_bootstrap_ci(correct_a, correct_b, decision.bootstrap_samples, decision.bootstrap_seed, decision.alpha)
    mean_a, mean_b = accuracy[name_a]["strict"]["mean"], accuracy[name_b]["strict"]["mean"]
    seed_gaps = [s["delta"] for s in per_seed]
    significant = pooled["mcnemar_p"] < decision.alpha and (interval["low"] > 0 or interval["high"] < 0)
    return {
        "a": name_a, "b": name_b, "gap": mean_a - mean_b, "gap_points": 100 * (mean_a - mean_b),
        "lenient_gap_points": 100 * (accuracy[name_a]["lenient"]["mean"] - accuracy[name_b]["lenient"]["mean"]),
        "min_gap": decision.min_gap, "decision": decide(mean_a, mean_b, decision.min_gap, name_a, name_b),
        "per_seed": per_seed, "pooled": pooled, "bootstrap": interval,
        "item_se": item_standard_error(correct_a, correct_b), "seed_sd_gap": seed_sd(seed_gaps),
        "significant": bool(significant), "alpha": decision.alpha,
        "mde": mde_table(contract, inputs, per_seed),
    }


def mde_table(contract: Contract, inputs: Inputs, per_seed: list[dict]) -> dict:
    """Planned MDE (baseline accuracy only, computable before training) and the one implied by the observed discordance."""
    n = len(inputs.baseline.rows)
    baseline_accuracy = inputs.baseline.summary["strict_accuracy"]
    discordance = float(np.mean([(s["a_only"] + s["b_only"]) / n for s in per_seed]))
    alpha, power = contract.decision.alpha, contract.decision.power
    return {"n": n, "alpha": alpha, "power": power, "baseline_accuracy": baseline_accuracy,
            "planned": minimum_detectable_effect(n, baseline_accuracy, alpha, power),
            "observed_discordance": discordance,
            "paired": minimum_detectable_effect(n, baseline_accuracy, alpha, power, discordance=discordance)}


def cost_rows(contract: Contract, inputs: Inputs) -> list[dict]:
    """Per condition x seed: adapter size, train / validation / eval tokens and dollars."""
    adapters = {(e["condition"], e["seed"]): e for e in inputs.exports.get("checkpoints", [])}
    price_per_train_token = contract.prices.train_per_million / 1e6
    rows = []
    for name in inputs.conditions:
        for seed in inputs.seeds:
            train, evaluation = inputs.trains[name][seed].summary, inputs.evals[name][seed].summary
            adapter = adapters.get((name, seed))
            if adapter is None:
                raise UserError(f"export run {inputs.export_dir.name} has no adapter for {name} seed {seed}; rerun `loraexp export`")
            train_usd = train["train_tokens"] * price_per_train_token
            rows.append({
                "condition": name, "seed": seed, "adapter_mb": adapter["adapter_bytes"] / 1e6,
                "train_tokens": train["train_tokens"], "train_usd": train_usd,
                "val_tokens": sum(c["val_tokens"] for c in inputs.trains[name][seed].checkpoints),
                "val_usd": _minus(train.get("cost_usd"), train_usd),
                "eval_tokens": evaluation["prompt_tokens"] + evaluation["generated_tokens"], "eval_usd": evaluation.get("cost_usd"),
            })
    return rows


def _minus(total: float | None, part: float) -> float | None:
    return None if total is None else max(total - part, 0.0)


def disagreement_examples(inputs: Inputs) -> list[dict]:
    """Per seed and direction, the first question (benchmark order) one condition got right and the other wrong."""
    name_a, name_b = inputs.conditions
    examples = []
    for seed in inputs.seeds:
        run_a, run_b = inputs.evals[name_a][seed], inputs.evals[name_b][seed]
        for winner, loser, first, second in ((name_a, name_b, run_a, run_b), (name_b, name_a, run_b, run_a)):
            for row_w, row_l in zip(first.rows, second.rows):
                if row_w["correct"] and not row_l["correct"]:
                    examples.append({"seed": seed, "correct_condition": winner, "wrong_condition": loser,
                                     "example_id": row_w["example_id"], "benchmark_index": row_w["benchmark_index"],
                                     "question": row_w["question"], "reference_answer": row_w["reference_answer"],
                                     "correct_extracted": row_w["extracted"], "wrong_extracted": row_l["extracted"],
                                     "correct_generation": row_w["generated_text"], "wrong_generation": row_l["generated_text"]})
                    break
    return examples


def compare(contract: Contract, inputs: Inputs) -> dict:
    """Every number of the report, as written to comparison.json."""
    accuracy = accuracy_table(inputs)
    generation = inputs.baseline.summary.get("generation", {})
    return {
        "experiment": contract.experiment.name, "contract_sha256": contract.sha256,
        "eval_contract_sha256": inputs.baseline.summary.get("eval_contract_sha256"),
        "benchmark_size": len(inputs.baseline.rows), "seeds": inputs.seeds, "conditions": inputs.conditions,
        "decoding": {"temperature": generation.get("temperature"), "max_new_tokens": generation.get("max_new_tokens"),
                     "enable_thinking": generation.get("enable_thinking")},
        "checkpoint_selection_rule": inputs.trains[inputs.conditions[0]][inputs.seeds[0]].summary.get(
            "selection_rule", "lowest validation NLL; exact tie -> later step"),
        "accuracy": accuracy,
        "comparison": paired_comparison(contract, inputs, accuracy),
        "selected_steps": {name: {str(seed): inputs.trains[name][seed].summary["selected_step"] for seed in inputs.seeds} for name in inputs.conditions},
        "train_batch_size": contract.train.batch_size,
        "learning_rates": {name: {"selected_lr": choice["selected_lr"], "selected_batch_size": choice["selected_batch_size"]}
                           for name, choice in inputs.selection["conditions"].items()},
        "costs": cost_rows(contract, inputs),
        "throughput": inputs.throughput.get("shapes", []),
        "determinism": {run.run_id: run.summary.get("determinism") for run in all_evals(inputs)},
        "disagreement_example_ids": [{k: e[k] for k in ("seed", "correct_condition", "example_id")} for e in disagreement_examples(inputs)],
    }
