"""`loraexp compare` on prediction files made elsewhere: the released-schema fixture (tests/fixtures/released, built to a
known design by build.py there), the same generations as lm-eval samples and as loraexp predictions, and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest
from scipy import stats as scipy_stats

from datakit import FIXTURES, cli, error_line

RELEASED = FIXTURES / "released"
RUNS = [f"{condition}:{seed}:{RELEASED / f'{condition}_seed{seed}.jsonl'}" for condition in ("attention_only", "all_layer") for seed in (0, 1, 2)]


def compare(tmp_path, *runs: str, baseline=RELEASED / "baseline.jsonl", extra=()):
    out = tmp_path / "out"
    args = ["compare", "--baseline", baseline, *[arg for run in runs for arg in ("--run", run)], "--out", out, *extra]
    return cli(*args), orjson.loads((out / "comparison.json").read_bytes()), out


def design_matrices():
    """The fixture's design (build.py), on the 198 questions present in every file: strict right per seed."""
    a, b = np.zeros((3, 198), bool), np.zeros((3, 198), bool)
    a[:, :120] = b[:, :140] = True
    a[:, 140:150] = True
    a[:, 146] = False  # reference 2,125: the box says 2125, strict marks it wrong
    for seed in range(3):
        a[seed, 150 + 3 * seed: 153 + 3 * seed] = True
    return a, b


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    return compare(tmp_path_factory.mktemp("released"), *RUNS)


def test_counts_and_p_values_match_the_design(released):
    result, comparison, out = released
    entry = comparison["benchmarks"]["benchmark"]
    assert entry["size"] == 198
    assert entry["accuracy"]["baseline"]["strict"] == pytest.approx(90 / 198) and entry["accuracy"]["baseline"]["lenient"] == pytest.approx(100 / 198)
    pair = entry["comparisons"][0]
    assert (pair["a"], pair["b"]) == ("attention_only", "all_layer")
    assert [(s["seed"], s["a_only"], s["b_only"]) for s in pair["per_seed"]] == [(0, 12, 20), (1, 12, 20), (2, 12, 20)]
    assert all(s["mcnemar_p"] == pytest.approx(scipy_stats.binomtest(12, 32).pvalue) for s in pair["per_seed"])
    assert (pair["pooled_mcnemar"]["a_only"], pair["pooled_mcnemar"]["b_only"]) == (36, 60)
    assert pair["pooled_mcnemar"]["p"] == pytest.approx(scipy_stats.binomtest(36, 96).pvalue)
    a, b = design_matrices()
    d = a.mean(axis=0) - b.mean(axis=0)
    assert pair["gap"] == pytest.approx(d.mean())
    assert pair["item_level"]["sign_flip"]["p"] == pytest.approx(
        scipy_stats.permutation_test((d,), np.sum, permutation_type="samples", n_resamples=200_000, random_state=1).pvalue, abs=0.01)
    assert pair["item_level"]["paired_t"]["p"] == pytest.approx(scipy_stats.ttest_1samp(d, 0).pvalue)
    # discordant questions aligned across seeds: the item-level test is the conservative one
    assert pair["pooled_mcnemar"]["p"] < 0.05 < pair["item_level"]["sign_flip"]["p"]
    assert pair["p_adjusted"] == pair["item_level"]["sign_flip"]["p"]  # one comparison x one benchmark
    assert pair["verdict"] == "inconclusive" and pair["rule"]["outcome"] == "winner: all_layer"
    assert entry["reference_commas"]["count"] == 1 and entry["reference_commas"]["examples"] == ["2,125"]


def test_dropped_questions_and_verdict_disagreements_are_reported(released):
    result, comparison, out = released
    notes = comparison["notes"]
    assert notes[0] == "198 questions are compared: present, with one reference answer, in all 7 files."
    assert any(note.startswith("2 questions dropped: missing from at least one file") and "all_layer_seed2.jsonl lacks 2" in note for note in notes)
    disagreements = {note.split(" (")[0].rsplit("/", 1)[1]: note for note in notes if "own verdict" in note}
    assert "on 10 of 198 questions" in disagreements["baseline.jsonl"] and "index 90: file says True, strict says False" in disagreements["baseline.jsonl"]
    assert "on 2 of 198" in disagreements["attention_only_seed0.jsonl"] and "index 0: file says False, strict says True" in disagreements["attention_only_seed0.jsonl"]
    assert "on 1 of 198" in disagreements["attention_only_seed1.jsonl"] and "on 0 of 198" in disagreements["all_layer_seed0.jsonl"]
    report = (out / "report.md").read_text(encoding="utf-8")
    for note in notes:
        assert note in report
    assert "Verdict: **inconclusive**" in report and "not evidence of no difference" in report
    assert "1 of 198 references carry thousands commas" in report and "winner" not in report
    assert "p = 0.000" not in report
    inputs = orjson.loads((out / "inputs.json").read_bytes())
    assert len(inputs["files"]) == 7 and set(inputs["formats"].values()) == {"released generations"}
    assert {"fig_01_comparison", "fig_03_accuracy", "fig_04_disagreement", "fig_07_disagreement_examples"} <= {p.name for p in out.iterdir()}


def as_lm_eval(path, target, rows=None):
    """The same generations as lm-evaluation-harness samples (doc_id, resps, filtered_resps, target with the #### line)."""
    lines = []
    for row in rows or [orjson.loads(line) for line in path.read_bytes().splitlines()]:
        lines.append(orjson.dumps({"doc_id": row["benchmark_index"], "doc": {"question": f"q{row['benchmark_index']}", "answer": f"... #### {row['reference_answer']}"},
                                   "target": f"... #### {row['reference_answer']}", "resps": [[row["generated_text"]]], "filtered_resps": ["[invalid]"],
                                   "exact_match": float(row["correct"])}))
    target.write_bytes(b"\n".join(lines) + b"\n")
    return target


def as_loraexp(path, target):
    lines = [orjson.dumps({"example_id": f"q{row['benchmark_index']:05d}", "question": "?", "lenient_correct": False, **row})
             for row in (orjson.loads(line) for line in path.read_bytes().splitlines())]
    target.write_bytes(b"\n".join(lines) + b"\n")
    return target


def test_every_format_gives_the_same_numbers(released, tmp_path):
    _, expected, _ = released
    files = tmp_path / "files"
    files.mkdir()
    baseline = as_lm_eval(RELEASED / "baseline.jsonl", files / "samples_gsm8k_base.jsonl")
    runs = []
    for index, run in enumerate(RUNS):
        condition, seed, path = run.split(":", 2)
        converted = (as_lm_eval if index % 2 else as_loraexp)(Path(path), files / f"{condition}{seed}.jsonl")
        runs.append(f"{condition}:{seed}:{converted}")
    _, comparison, out = compare(tmp_path, *runs, baseline=baseline)
    got, want = comparison["benchmarks"]["benchmark"], expected["benchmarks"]["benchmark"]
    assert got["accuracy"] == want["accuracy"]
    assert got["comparisons"][0]["per_seed"] == want["comparisons"][0]["per_seed"]
    assert got["comparisons"][0]["item_level"] == want["comparisons"][0]["item_level"]
    formats = set(orjson.loads((out / "inputs.json").read_bytes())["formats"].values())
    assert formats == {"lm-eval samples", "loraexp predictions"}


def test_a_contract_brings_its_decision_settings_and_setting(released, tmp_path):
    config = Path(__file__).resolve().parents[1] / "configs" / "lora-and-friends.toml"
    _, comparison, out = compare(tmp_path, *RUNS, extra=("--config", config))
    assert comparison["setting"]["base_model"] == "Qwen/Qwen3-8B" and comparison["setting"]["ranks"] == {"attention_only": 8, "all_layer": 8}
    assert comparison["setting"]["learning_rates"]["all_layer"]["learning_rate"] == 3e-4
    assert comparison["decision"]["bootstrap_samples"] == 10_000
    _, without, _ = released
    assert {k: v for k, v in without["decision"].items() if k != "comparisons"} == {k: v for k, v in comparison["decision"].items() if k != "comparisons"}
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "Qwen/Qwen3-8B" in report and "attention_only 0.0003" in report


@pytest.mark.parametrize(("args", "message"), [
    (["--run", "all_layer-0-x.jsonl"], "must be CONDITION:SEED:PATH"),
    (["--run", "all_layer:0:/no/such.jsonl"], "prediction file not found: /no/such.jsonl"),
    (["--run", f"all_layer:0:{RELEASED / 'build.py'}"], "is not valid JSON"),
    (["--run", f"all_layer:0:{FIXTURES / 'gsm8k_test.jsonl'}"], "unknown prediction format"),
    (["--run", f"all_layer:0:{RELEASED / 'all_layer_seed0.jsonl'}"], "at least two conditions"),
], ids=["bad-run-spec", "missing-file", "not-json", "unknown-format", "one-condition"])
def test_bad_input_is_one_line(tmp_path, args, message):
    result = cli("compare", "--baseline", RELEASED / "baseline.jsonl", *args, "--out", tmp_path / "o", expect=2)
    assert message in error_line(result)
