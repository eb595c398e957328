"""The figures stage on synthetic artifacts trees: hand-checked numbers, verdicts, N conditions, several benchmarks.

Two conditions x 3 seeds + baseline, 40 questions. Per seed s: both conditions get questions 0-19 right;
attention_only also gets 20 .. 23+s (4+s questions only it answers); all_layer also gets `b_only[s]` questions
from 26 on (at most 14). The baseline gets 0-19 right. The lenient scorer additionally accepts question 39.
The wider tree adds a third condition (attention-only at rank 16) and a second benchmark of the math format.
"""

from __future__ import annotations

from math import comb
from pathlib import Path

import orjson
import pytest

from datakit import cli, dump_contract
from loraexp.analysis.stats import holm
from loraexp.artifacts import open_run
from loraexp.contracts import Contract, load_contract
from loraexp.files import write_json_atomic, write_jsonl

N = 40
SEEDS = (0, 1, 2)
EVAL_HASH = "e" * 64
FIGURES = ("fig_01_comparison", "fig_02_costs", "fig_03_accuracy", "fig_04_disagreement", "fig_05_validation_nll",
           "fig_06_lr_selection", "fig_07_disagreement_examples", "fig_08_throughput", "fig_09_size_accuracy")
DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.toml"


def exact_mcnemar(a_only: int, b_only: int) -> float:
    n, k = a_only + b_only, min(a_only, b_only)
    return min(1.0, 2 * sum(comb(n, i) for i in range(k + 1)) / 2**n)


def correct_set(condition: str, seed: int, b_only: list[int]) -> set[int]:
    if condition == "baseline":
        return set(range(20))
    if condition == "attention_only":
        return set(range(24 + seed))
    if condition == "attention_r16":
        return set(range(20)) | set(range(26, 30))
    return set(range(20)) | set(range(26, 26 + b_only[seed]))


def prediction_rows(correct: set[int]) -> list[dict]:
    rows = []
    for index in range(N):
        reference = str(10 + index)
        answer = reference if index in correct else str(11 + index)
        rows.append({
            "example_id": f"q{index:05d}", "benchmark_index": index, "question": f"Tom has {index} apples and buys 10 more. How many?",
            "reference_answer": reference, "generated_text": f"He pays $5 and $10, {index} + 10 = {answer}, i.e. \\frac{{{answer}}}{{1}}.\nThe answer is $\\boxed{{{answer}}}$.",
            "extracted": answer, "normalized_prediction": answer, "normalized_reference": reference, "correct": index in correct,
            "lenient_correct": index in correct or index == 39, "prompt_tokens": 30, "generated_tokens": 20, "stop_reason": "stop",
            "prompt_hash": f"p{index}", "target_hash": f"t{index}",
        })
    return rows


def write_eval(contract: Contract, parts: list[str], condition: str, seed: int | None, rows: list[dict]) -> None:
    run_id = "-".join(["demo-eval", *parts, "baseline" if seed is None else f"{condition}-seed{seed}"])
    run = open_run(contract, "eval", run_id)
    write_jsonl(run.path("predictions.jsonl"), rows)
    correct, lenient = sum(r["correct"] for r in rows), sum(r["lenient_correct"] for r in rows)
    write_json_atomic(run.path("summary.json"), {
        "condition": condition, "seed": seed, "checkpoint_step": None if seed is None else 30, "sampler_path": None,
        "strict_accuracy": correct / N, "lenient_accuracy": lenient / N, "correct": correct, "lenient_correct": lenient, "total": N,
        "extraction_failures": 0, "truncations": 0, "prompt_tokens": 30 * N, "generated_tokens": 20 * N, "cost_usd": (30 * N * 0.13 + 20 * N * 0.4) / 1e6,
        "generation": {"temperature": 0.0, "max_new_tokens": 64, "enable_thinking": False}, "eval_contract_sha256": EVAL_HASH + "-".join(parts),
        "eval_contract": {"scorer": {"strict": "last box", "lenient": "math-verify", "code_sha256": "c" * 64, "math_verify": "0.9.0"}},
        "determinism": {"checked": 16, "agreed": 16, "mismatches": 0, "agreement": 1.0},
    })
    run.finish(["predictions.jsonl", "summary.json"])


def write_train(contract: Contract, condition: str, seed: int, index: int) -> None:
    run = open_run(contract, "train", f"demo-train-{condition}-seed{seed}")
    offset = 0.1 * index + 0.01 * seed
    write_jsonl(run.path("metrics.jsonl"), [
        {"step": step, "epoch": 0, "progress": step / 30, "learning_rate": 3e-3, "train_nll": 2.0 - step / 30, "tokens": 1000, "loss_tokens": 400,
         "cumulative_tokens": 1000 * step, "cost_usd": 1000 * step * 0.4e-6, "seconds": 0.1} for step in range(1, 31)])
    nll = {10: 1.5 + offset, 20: 1.2 + offset, 30: 1.3 + offset}  # step 20 is the lowest
    write_jsonl(run.path("checkpoints.jsonl"), [
        {"step": step, "next_step": step + 1, "name": f"step-{step:06d}", "state_path": f"tinker://x/{step}", "val_nll": value,
         "val_tokens": 500, "expires_at": "2099-01-01T00:00:00+00:00"} for step, value in nll.items()])
    write_json_atomic(run.path("summary.json"), {
        "condition": condition, "seed": seed, "learning_rate": 3e-3, "lr_source": "lr-select run demo-lr-select", "batch_size": 8, "selected_step": 20,
        "val_nll": nll[20], "train_tokens": 30_000, "val_tokens": 500, "cost_usd": 30_000 * 0.4e-6 + 3 * 2_000 * 0.4e-6,
        "checkpoint_name": "step-000020", "state_path": "tinker://x/20", "ttl_seconds": 604800, "expires_at": "2099-01-01T00:00:00+00:00",
        "selection_rule": "lowest validation NLL; exact tie -> later step",
    })
    run.finish(["metrics.jsonl", "checkpoints.jsonl", "summary.json"])


def write_lr_select_and_export(contract: Contract) -> None:
    names = [c.name for c in contract.lora.conditions]
    run = open_run(contract, "lr-select", "demo-lr-select")
    conditions = {}
    for index, condition in enumerate(names):
        grid = [{"learning_rate": lr, "batch_size": 8, "val_nll": {"20": nll + 0.2, "40": nll}, "final_val_nll": nll,
                 "child_run": f"demo-lr-select-{condition}-bs8-lr{lr:g}"} for lr, nll in ((1e-3, 1.6), (3e-3, 1.4 + 0.05 * index), (1e-2, 1.9))]
        grid.append({"learning_rate": 3e-3, "batch_size": 16, "val_nll": {"20": 1.7, "40": 1.5}, "final_val_nll": 1.5, "child_run": "x"})
        conditions[condition] = {"selected_lr": 3e-3, "selected_batch_size": 8, "grid": grid}
    write_json_atomic(run.path("selection.json"), {"conditions": conditions})
    write_json_atomic(run.path("throughput.json"), {"shapes": [
        {"request_shape": shape, "seconds_per_step": seconds, "tokens_per_second": 8000 / seconds, "steps": 3}
        for shape, seconds in (("single_datum_calls", 0.9), ("batched_datums", 0.4), ("batched_datums_pipelined", 0.25))]})
    run.finish(["selection.json", "throughput.json"])
    export = open_run(contract, "export", "demo-export")
    write_json_atomic(export.path("exports.json"), {"checkpoints": [
        {"condition": c, "seed": s, "step": 20, "state_path": "tinker://x/20", "sampler_path": f"tinker://x/sampler_weights/{c}-{s}",
         "adapter_dir": f"checkpoints/best-checkpoints/{c}/seed-{s}/step-20", "adapter_bytes": 1_500_000 * (1 + names.index(c)),
         "lora_r": contract.rank_of(contract.condition(c)), "lora_parameters": 100_000 * (1 + names.index(c)),
         "expires_at": "2099-01-01T00:00:00+00:00"} for c in names for s in SEEDS]})
    export.finish(["exports.json"])


def build_tree(tmp_path: Path, b_only: list[int], min_gap: float = 0.01, wide: bool = False) -> Path:
    """Write the synthetic runs under tmp_path/artifacts and return the config that points there."""
    raw = load_contract(DEMO_CONFIG).model_dump(mode="json", exclude_none=True)
    raw["experiment"]["artifacts_dir"] = str(tmp_path / "artifacts")
    raw["decision"]["min_gap"] = min_gap
    if wide:  # a third condition and a second benchmark (math format, not primary)
        raw["lora"]["conditions"].append({"name": "attention_r16", "train_attn": True, "train_mlp": False, "train_unembed": False, "rank": 16})
        raw["benchmarks"] = [{"name": "words", "source": "demo", "format": "gsm8k", "primary": True},
                             {"name": "symbols", "source": "demo", "format": "math"}]
        del raw["benchmark"]
    contract = Contract.model_validate(raw)
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = tmp_path / "demo.toml"
    config.write_text(dump_contract(raw))
    contract = load_contract(config)
    for benchmark in contract.benchmark_specs:
        parts = contract.benchmark_parts(benchmark)
        write_eval(contract, parts, "baseline", None, prediction_rows(correct_set("baseline", 0, b_only)))
        for condition in contract.lora.conditions:
            for seed in SEEDS:
                write_eval(contract, parts, condition.name, seed, prediction_rows(correct_set(condition.name, seed, b_only)))
    for index, condition in enumerate(contract.lora.conditions):
        for seed in SEEDS:
            write_train(contract, condition.name, seed, index)
    write_lr_select_and_export(contract)
    return config


def figures_dir(tmp_path: Path) -> Path:
    return tmp_path / "artifacts" / "results" / "demo-figures"


def test_figures_writes_every_figure_and_hand_checked_numbers(tmp_path):
    config = build_tree(tmp_path, b_only=[8, 8, 8])
    cli("figures", "--config", config)
    out = figures_dir(tmp_path)
    for name in FIGURES:
        for file in (f"{name}.png", f"{name}.pdf", "data.csv", "provenance.json"):
            assert (out / name / file).stat().st_size > 0, f"{name}/{file}"
        provenance = orjson.loads((out / name / "provenance.json").read_bytes())
        assert provenance["inputs"] and all(len(sha) == 64 for sha in provenance["inputs"].values())
        assert "commit" in provenance["git"]
    comparison = orjson.loads((out / "comparison.json").read_bytes())
    entry = comparison["benchmarks"]["benchmark"]
    accuracy = entry["accuracy"]
    assert entry["size"] == N and comparison["primary_benchmark"] == "benchmark"
    assert accuracy["baseline"]["strict"] == 0.5 and accuracy["baseline"]["lenient"] == 21 / 40
    a = accuracy["attention_only"]["strict"]
    assert a["per_seed"] == {"0": 0.6, "1": 0.625, "2": 0.65}
    assert (a["mean"], a["min"], a["max"]) == pytest.approx((0.625, 0.6, 0.65))
    assert a["range"] == pytest.approx(0.05) and a["seed_sd"] == pytest.approx(0.025)
    assert accuracy["attention_only"]["strict_delta_vs_baseline_points"] == pytest.approx(12.5)
    assert accuracy["all_layer"]["strict"]["mean"] == pytest.approx(0.7)
    assert accuracy["all_layer"]["lenient"]["mean"] == pytest.approx(29 / 40)
    pair = entry["comparisons"][0]
    assert [(s["a_only"], s["b_only"], s["both_correct"], s["both_wrong"]) for s in pair["per_seed"]] == [(4, 8, 20, 8), (5, 8, 20, 7), (6, 8, 20, 6)]
    assert [s["mcnemar_p"] for s in pair["per_seed"]] == pytest.approx([exact_mcnemar(4, 8), exact_mcnemar(5, 8), exact_mcnemar(6, 8)])
    assert (pair["pooled_mcnemar"]["a_only"], pair["pooled_mcnemar"]["b_only"]) == (15, 24)
    assert pair["pooled_mcnemar"]["p"] == pytest.approx(exact_mcnemar(15, 24))
    assert pair["gap_points"] == pytest.approx(-7.5)
    assert pair["intervals"]["item_only"]["low"] < -0.075 < pair["intervals"]["item_only"]["high"]
    assert pair["rule"] == {"outcome": "winner: all_layer", "min_gap": 0.01, "applies": True}
    assert pair["verdict"] == "inconclusive" and pair["p_adjusted"] == pair["item_level"]["sign_flip"]["p"]
    assert comparison["costs"][0]["adapter_mb"] == 1.5 and comparison["costs"][0]["val_tokens"] == 1500
    assert comparison["costs"][0]["val_usd"] == pytest.approx(3 * 2_000 * 0.4e-6)
    report = (out / "report.md").read_text()
    decision = report.split("## Setting")[0]
    assert decision.index("Declared rule") < decision.index("Verdict: **inconclusive**")
    assert "all_layer ahead by 7.50 points (the rule reads the point estimate only)" in decision
    assert "winner" not in report.lower() and "p = 0.000" not in report
    assert all(f"]({name}/{name}.png)" in report for name in FIGURES)
    for words in ("Base model: `loraexp/tiny-qwen3-demo`", "LoRA rank: attention_only r8, all_layer r8",
                  "attention_only 0.003 (batch 8, lr-select run demo-lr-select)", "Strict scorer (primary", "Lenient scorer",
                  "two-level bootstrap", "covers questions and, within each condition, its training seeds", "TOST against ±1.00 points",
                  "Secondary: pooled McNemar", "treated as independent", "not evidence of no difference"):
        assert words in report, words


def test_verdicts_difference_equivalence_and_the_rule_inside_its_band(tmp_path):
    tie = build_tree(tmp_path / "tie", b_only=[4, 5, 6])  # same accuracy every seed, still 4-6 discordant each way
    cli("figures", "--config", tie)
    pair = orjson.loads((figures_dir(tmp_path / "tie") / "comparison.json").read_bytes())["benchmarks"]["benchmark"]["comparisons"][0]
    assert pair["rule"]["outcome"] == "inconclusive" and pair["gap"] == 0 and pair["pooled_mcnemar"]["p"] == 1.0
    assert pair["verdict"] == "inconclusive"  # 40 questions cannot show equivalence within 1 point
    wide_band = build_tree(tmp_path / "band", b_only=[4, 5, 6], min_gap=0.3)
    cli("figures", "--config", wide_band)
    pair = orjson.loads((figures_dir(tmp_path / "band") / "comparison.json").read_bytes())["benchmarks"]["benchmark"]["comparisons"][0]
    assert pair["verdict"] == "equivalent" and pair["equivalence"]["ci_high"] < 0.3
    assert "**equivalent within ±30.00 points**" in (figures_dir(tmp_path / "band") / "report.md").read_text()

    wide = build_tree(tmp_path / "wide", b_only=[14, 14, 14], min_gap=0.05)
    cli("figures", "--config", wide)
    pair = orjson.loads((figures_dir(tmp_path / "wide") / "comparison.json").read_bytes())["benchmarks"]["benchmark"]["comparisons"][0]
    assert pair["rule"]["outcome"] == "winner: all_layer" and pair["verdict"] == "difference"
    assert pair["intervals"]["two_level"]["high"] < 0 and pair["p_adjusted"] < 0.05
    assert "Verdict: **a difference** — all_layer is higher by" in (figures_dir(tmp_path / "wide") / "report.md").read_text()


def test_three_conditions_two_benchmarks_holm_and_the_size_frontier(tmp_path):
    config = build_tree(tmp_path, b_only=[8, 8, 8], wide=True)
    cli("figures", "--config", config)
    out = figures_dir(tmp_path)
    comparison = orjson.loads((out / "comparison.json").read_bytes())
    assert comparison["primary_benchmark"] == "words" and list(comparison["benchmarks"]) == ["words", "symbols"]
    assert comparison["comparisons"] == [["attention_only", "all_layer"], ["attention_only", "attention_r16"], ["all_layer", "attention_r16"]]
    family = [pair for entry in comparison["benchmarks"].values() for pair in entry["comparisons"]]
    assert len(family) == 6 and comparison["multiplicity"]["size"] == 6
    assert [pair["p_adjusted"] for pair in family] == pytest.approx(holm([pair["item_level"]["sign_flip"]["p"] for pair in family]))
    assert all(pair["rule"]["applies"] == (entry_name == "words") for entry_name, entry in comparison["benchmarks"].items() for pair in entry["comparisons"])
    assert comparison["adapter_sizes"]["attention_r16"]["rank"] == 16 and comparison["adapter_sizes"]["attention_r16"]["parameters"] == 300_000
    for name in ("fig_01_comparison-words", "fig_01_comparison-symbols", "fig_04_disagreement-symbols", "fig_09_size_accuracy"):
        assert (out / name / f"{name}.png").exists(), name
    report = (out / "report.md").read_text()
    assert "## symbols (reported beside the primary, not decided)" in report and "#### all_layer − attention_r16" in report
    assert "Holm-adjusted over the 6 declared comparison × benchmark tests" in report
    assert "not the primary benchmark: reported, not decided" in report


def test_a_gap_inside_a_wider_band_is_inconclusive_by_the_rule(tmp_path):
    config = build_tree(tmp_path, b_only=[8, 8, 8], min_gap=0.1)  # |gap| 7.5 points < 10
    cli("figures", "--config", config)
    comparison = orjson.loads((figures_dir(tmp_path) / "comparison.json").read_bytes())
    assert comparison["benchmarks"]["benchmark"]["comparisons"][0]["rule"]["outcome"] == "inconclusive"


def test_refuses_runs_scored_under_another_eval_contract(tmp_path):
    config = build_tree(tmp_path, b_only=[8, 8, 8])
    summary_path = tmp_path / "artifacts" / "results" / "demo-eval-all_layer-seed1" / "summary.json"
    summary = orjson.loads(summary_path.read_bytes())
    write_json_atomic(summary_path, {**summary, "eval_contract_sha256": "f" * 64})
    result = cli("figures", "--config", config, expect=2)
    assert "evaluation contract" in result.output and "demo-eval-all_layer-seed1" in result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert not (figures_dir(tmp_path) / "manifest.json").exists()


def test_missing_input_run_names_the_stage_to_run(tmp_path):
    config = build_tree(tmp_path, b_only=[8, 8, 8])
    (tmp_path / "artifacts" / "results" / "demo-eval-attention_only-seed2" / "manifest.json").unlink()
    result = cli("figures", "--config", config, expect=2)
    assert "demo-eval-attention_only-seed2" in result.output and "`loraexp eval`" in result.output
