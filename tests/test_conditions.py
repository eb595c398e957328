"""More than one pair: a condition's own rank and learning rate reach the backend, a math-format benchmark reads its
reference from the answer field, and contamination checks the training rows against every benchmark."""

from __future__ import annotations

import orjson
import pytest

from datakit import FIXTURES, cli, dump_contract, error_line, make_config, math_as_omi, omi, results, write_rows
from loraexp.contracts import Contract, load_contract
from loraexp.data.sources import load_benchmark
from loraexp.errors import UserError


@pytest.fixture
def workdir(rendered_copy):
    """A private copy of the rendered small contract, as the current directory."""
    return rendered_copy


def with_conditions(workdir, extra: str) -> str:
    """The contract with each condition's own rank / learning rate appended to its [[lora.conditions]] table."""
    config = workdir / "demo.toml"
    text = config.read_text()
    text = text.replace('name = "attention_only"\ntrain_attn = true\ntrain_mlp = false\ntrain_unembed = false\n',
                        'name = "attention_only"\ntrain_attn = true\ntrain_mlp = false\ntrain_unembed = false\n' + extra)
    config.write_text(text)
    return "demo.toml"


def test_a_conditions_own_rank_reaches_the_backend(workdir):
    config = with_conditions(workdir, "rank = 4\n")
    cli("smoke", "--config", config, "--override")
    report = orjson.loads((results(workdir) / "demo-smoke" / "smoke.json").read_bytes())
    assert report["lora_ranks"] == {"attention_only": 4, "all_layer": 8}
    assert report["conditions"]["attention_only"]["adapter"]["ranks"] == [4]  # read from the downloaded adapter's tensors
    assert report["conditions"]["all_layer"]["adapter"]["ranks"] == [8]
    assert report["conditions"]["attention_only"]["lora_rank_recorded_by_backend"] == 4


def test_a_conditions_own_learning_rate_is_used(workdir):
    config = with_conditions(workdir, "rank = 4\nlearning_rate = 0.0025\n")
    cli("contamination", "--config", config, "--override")
    result = cli("train", "--config", config, "--override", "--condition", "attention_only", "--seed", "0")  # no lr-select run needed
    summary = orjson.loads((results(workdir) / "demo-train-attention_only-seed0" / "summary.json").read_bytes())
    assert summary["learning_rate"] == 0.0025 and summary["rank"] == 4
    assert summary["lr_source"] == "pinned in the contract ([[lora.conditions]] attention_only learning_rate)"
    metrics = [orjson.loads(line) for line in (results(workdir) / "demo-train-attention_only-seed0" / "metrics.jsonl").read_bytes().splitlines()]
    assert max(row["learning_rate"] for row in metrics) == pytest.approx(0.0025)  # the schedule's peak
    assert "learning_rate=0.0025" in result.output
    # a condition without its own LR still inherits from lr-select, and says what is missing
    line = error_line(cli("train", "--config", config, "--override", "--condition", "all_layer", "--seed", "0", expect=2))
    assert "lr-select run demo-lr-select is missing" in line


def math_benchmark_config(tmp_path, source: str) -> Contract:
    raw = load_contract(make_config(tmp_path)).model_dump(mode="json", exclude_none=True)
    del raw["benchmark"]
    raw["contamination"].pop("benchmark_sources")
    raw["benchmarks"] = [{"name": "gsm8k", "source": str(FIXTURES / "gsm8k_test.jsonl"), "format": "gsm8k", "primary": True},
                         {"name": "math500", "source": source, "format": "math"}]
    return Contract.model_validate(raw)


def test_a_math_format_benchmark_reads_its_reference_from_the_answer_field(tmp_path):
    contract = math_benchmark_config(tmp_path, str(FIXTURES / "math_test.jsonl"))
    gsm8k, math500 = contract.benchmark_specs
    rows = load_benchmark(contract, math500)
    raw = [orjson.loads(line) for line in (FIXTURES / "math_test.jsonl").read_bytes().splitlines()]
    assert [row["reference"] for row in rows] == [row["answer"] for row in raw]  # e.g. -\dfrac{4}{25}, 47^\circ, \sqrt{15}
    assert [row["question"] for row in rows] == [row["problem"] for row in raw]
    assert "\\sqrt{15}" in [row["reference"] for row in rows]
    assert load_benchmark(contract, gsm8k)[0]["reference"] == "18"  # the text after ####
    broken = tmp_path / "broken.jsonl"
    write_rows(broken, [{"problem": "1 + 1?", "answer": " "}])
    with pytest.raises(UserError, match="row 0: empty answer"):
        load_benchmark(math_benchmark_config(tmp_path, str(broken)), math_benchmark_config(tmp_path, str(broken)).benchmark_specs[1])


def test_contamination_fails_on_a_planted_math500_problem_and_checks_every_benchmark(tmp_path):
    math_test = [orjson.loads(line) for line in (FIXTURES / "math_test.jsonl").read_bytes().splitlines()]
    train = [orjson.loads(line) for line in (FIXTURES / "math_train.jsonl").read_bytes().splitlines()]
    planted = math_as_omi(math_test[7])  # a benchmark problem among the math-source training rows
    rows = [math_as_omi(row) for row in train[:40]] + [planted] + [omi(f"Tom has {i} pens and buys 2. How many?", f"\\boxed{{{i + 2}}}", str(i + 2)) for i in range(40)]
    write_rows(tmp_path / "rows.jsonl", rows)
    config = tmp_path / "c.toml"
    contract = math_benchmark_config(tmp_path, str(FIXTURES / "math_test.jsonl"))
    raw = contract.model_dump(mode="json")
    raw["data"]["source"] = str(tmp_path / "rows.jsonl")
    config.write_text(dump_contract(raw))
    cli("build-data", "--config", config)
    line = error_line(cli("contamination", "--config", config, expect=2))
    assert "contamination check failed (1 exact benchmark overlaps" in line
    report = orjson.loads((tmp_path / "artifacts" / "results" / "demo-contamination" / "report.json").read_bytes())
    assert set(report["benchmarks"]) == {"gsm8k", "math500"}
    math500, gsm8k = report["benchmarks"]["math500"], report["benchmarks"]["gsm8k"]
    assert math500["checked_sources"] == ["math"] and gsm8k["checked_sources"] == ["gsm8k"]
    assert math500["exact_overlap"]["count"] == 1 and math500["exact_overlap"]["pairs"][0]["benchmark_index"] == 7
    assert gsm8k["exact_overlap"]["count"] == 0 and gsm8k["rows_checked"] == 40 and math500["rows_checked"] == 41
