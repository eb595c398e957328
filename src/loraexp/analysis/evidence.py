"""What an analysis reads: per benchmark, every model's scored predictions; beside them what is known of the setting.

Two sources fill the same `Evidence`: the finished eval, train, lr-select and export runs of an experiment
(`load_run_evidence`, for the figures stage), and prediction files made anywhere (`analysis/predictions.py`,
for `loraexp compare`), where training runs, LR selection and adapter sizes are unknown.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from loraexp.contracts import Contract, DecisionSection
from loraexp.errors import UserError
from loraexp.files import read_json, read_jsonl
from loraexp.session import Session


@dataclass
class ModelScores:
    """One model's scored predictions on one benchmark, in benchmark order."""

    label: str  # the eval run id, or the prediction file
    condition: str  # "baseline" or a condition name
    seed: int | None
    rows: list[dict]  # benchmark_index, question, reference_answer, generated_text, extracted, correct, lenient_correct, ...
    summary: dict = field(default_factory=dict)  # the eval run's summary.json (partial for files made elsewhere)

    @property
    def strict(self) -> np.ndarray:
        return np.array([row["correct"] for row in self.rows], dtype=bool)

    @property
    def lenient(self) -> np.ndarray:
        return np.array([row["lenient_correct"] for row in self.rows], dtype=bool)


@dataclass
class BenchmarkEvidence:
    name: str
    primary: bool
    description: dict  # source, split, format
    baseline: ModelScores
    runs: dict[str, dict[int, ModelScores]]  # condition -> seed -> scores

    def scores(self, condition: str, scorer: str = "strict") -> np.ndarray:
        """seeds x questions booleans of one condition."""
        return np.stack([getattr(self.runs[condition][seed], scorer) for seed in sorted(self.runs[condition])])

    def all_models(self) -> list[ModelScores]:
        return [self.baseline] + [scores for by_seed in self.runs.values() for _, scores in sorted(by_seed.items())]


@dataclass
class TrainRun:
    run_id: str
    dir: Path
    summary: dict
    metrics: list[dict]
    checkpoints: list[dict]


@dataclass
class Evidence:
    experiment: str
    conditions: list[str]
    comparisons: list[tuple[str, str]]
    decision: DecisionSection
    benchmarks: list[BenchmarkEvidence]  # the primary first
    setting: dict  # base model, backend, ranks, learning rates and their source, decoding, scorers, selection rule: what is known
    contract: Contract | None = None
    trains: dict[str, dict[int, TrainRun]] = field(default_factory=dict)  # empty for predictions made elsewhere
    selection: dict | None = None
    throughput: dict | None = None
    exports: dict | None = None
    lr_select_dir: Path | None = None
    export_dir: Path | None = None
    inputs: list[Path] = field(default_factory=list)  # every file read, in reading order (provenance)
    notes: list[str] = field(default_factory=list)  # what was dropped or disagreed while reading, for the report

    @property
    def from_runs(self) -> bool:
        return bool(self.trains)

    @property
    def files_read(self) -> dict[str, list[str]]:
        """Run dir name -> the names of the files read from it."""
        grouped: dict[str, list[str]] = {}
        for path in self.inputs:
            grouped.setdefault(path.parent.name, []).append(path.name)
        return grouped

    def file(self, run_dir: Path, name: str) -> Path:
        """`run_dir / name`, recorded as read."""
        path = run_dir / name
        if path not in self.inputs:
            self.inputs.append(path)
        return path


def load_run_evidence(session: Session) -> Evidence:
    """Every input run of the figures stage; a missing one is a UserError naming the stage to run."""
    contract = session.contract
    conditions, seeds = [c.name for c in contract.lora.conditions], list(contract.train.seeds)
    evidence = Evidence(contract.experiment.name, conditions, list(contract.comparisons), contract.decision, [], {}, contract,
                        lr_select_dir=session.finished_run("lr-select"), export_dir=session.finished_run("export"))
    for spec in contract.benchmark_specs:
        parts = contract.benchmark_parts(spec)
        baseline = _load_eval(evidence, session.finished_run("eval", None, *parts, "baseline"), "baseline", None)
        runs = {name: {seed: _load_eval(evidence, session.finished_run("eval", None, *parts, name, f"seed{seed}"), name, seed) for seed in seeds}
                for name in conditions}
        evidence.benchmarks.append(BenchmarkEvidence(spec.name, spec.primary, {"source": spec.source, "split": spec.split, "format": spec.format},
                                                     baseline, runs))
    for name in conditions:
        evidence.trains[name] = {seed: _load_train(evidence, session.finished_run("train", None, name, f"seed{seed}")) for seed in seeds}
    evidence.selection = read_json(evidence.file(evidence.lr_select_dir, "selection.json"))
    evidence.throughput = read_json(evidence.file(evidence.lr_select_dir, "throughput.json"))
    evidence.exports = read_json(evidence.file(evidence.export_dir, "exports.json"))
    for benchmark in evidence.benchmarks:
        check_comparable(benchmark)
    evidence.setting = run_setting(contract, evidence)
    return evidence


def _load_eval(evidence: Evidence, run_dir: Path, condition: str, seed: int | None) -> ModelScores:
    rows = sorted(read_jsonl(evidence.file(run_dir, "predictions.jsonl")), key=lambda row: row["benchmark_index"])
    return ModelScores(run_dir.name, condition, seed, rows, read_json(evidence.file(run_dir, "summary.json")))


def _load_train(evidence: Evidence, run_dir: Path) -> TrainRun:
    return TrainRun(run_dir.name, run_dir, read_json(evidence.file(run_dir, "summary.json")),
                    read_jsonl(evidence.file(run_dir, "metrics.jsonl")), read_jsonl(evidence.file(run_dir, "checkpoints.jsonl")))


def check_comparable(benchmark: BenchmarkEvidence) -> None:
    """Refuse to compare runs scored under different evaluation contracts or on different questions."""
    baseline = benchmark.baseline
    for scores in benchmark.all_models()[1:]:
        if scores.summary.get("eval_contract_sha256") != baseline.summary.get("eval_contract_sha256"):
            raise UserError(
                f"eval run {scores.label} was scored under evaluation contract {str(scores.summary.get('eval_contract_sha256'))[:12]}, "
                f"the baseline {baseline.label} under {str(baseline.summary.get('eval_contract_sha256'))[:12]}; rerun `loraexp eval` for both under one contract"
            )
        if [row["example_id"] for row in scores.rows] != [row["example_id"] for row in baseline.rows]:
            raise UserError(f"eval run {scores.label} scored other questions than {baseline.label}; rerun `loraexp eval` with the same benchmark and limit")
        recorded = scores.summary.get("strict_accuracy")
        if recorded is None or abs(recorded - float(scores.strict.mean())) > 1e-9:
            raise UserError(f"eval run {scores.label}: summary.json strict_accuracy {recorded} disagrees with predictions.jsonl; rerun `loraexp eval` for it")


def run_setting(contract: Contract, evidence: Evidence) -> dict:
    """What the report must name: model, backend, ranks, LRs and where each came from, decoding, scorers, selection rule."""
    first = next(iter(next(iter(evidence.trains.values())).values())).summary
    generation = evidence.benchmarks[0].baseline.summary.get("generation", {})
    return {
        "base_model": contract.experiment.base_model, "backend": contract.experiment.backend,
        "ranks": {c.name: contract.rank_of(c) for c in contract.lora.conditions},
        "learning_rates": {name: {"learning_rate": by_seed[min(by_seed)].summary["learning_rate"], "source": by_seed[min(by_seed)].summary.get("lr_source"),
                                  "batch_size": by_seed[min(by_seed)].summary.get("batch_size")} for name, by_seed in evidence.trains.items()},
        "seeds": {name: sorted(by_seed) for name, by_seed in evidence.trains.items()},
        "decoding": {"temperature": generation.get("temperature"), "max_new_tokens": generation.get("max_new_tokens"),
                     "enable_thinking": generation.get("enable_thinking")},
        "scorers": evidence.benchmarks[0].baseline.summary.get("eval_contract", {}).get("scorer"),
        "checkpoint_selection_rule": first.get("selection_rule", "lowest validation NLL; exact tie -> later step"),
        "train_batch_size": contract.train.batch_size,
    }
