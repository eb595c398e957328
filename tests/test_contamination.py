"""contamination through the real CLI: planted GSM8K test questions fail (and block train), clean data passes.

Real data (tests/fixtures): GSM8K train as `gsm8k` rows, MATH train as `math` rows and real
OpenMathInstruct-2 rows, checked against real GSM8K test questions.
"""

from __future__ import annotations

import orjson
import pytest

from datakit import FIXTURES, cli, error_line, gsm8k_as_omi, make_config, math_as_omi, omi, read_rows, results, write_rows
from loraexp.contracts import load_contract
from loraexp.demo.data import clean_examples, generate_benchmark_rows, generate_omi2_rows
from loraexp.errors import UserError
from loraexp.stages.contamination import require_contamination_pass
from loraexp.data.text import canonical_for_contamination, canonical_problem

GSM8K_TEST = FIXTURES / "gsm8k_test.jsonl"


def jsonl(path):
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def gsm8k_test():
    return jsonl(GSM8K_TEST)


@pytest.fixture(scope="module")
def gsm8k_train_rows():
    return [gsm8k_as_omi(row) for row in jsonl(FIXTURES / "gsm8k_train.jsonl")]


def fullwidth(text: str) -> str:
    """ASCII letters and digits as their full-width forms (NFKC maps them back)."""
    return "".join(chr(ord(char) + 0xFEE0) if char.isascii() and char.isalnum() else char for char in text)


VARIANTS = {
    "case": str.upper,
    "whitespace": lambda q: "  " + q.replace(" ", " \n\t ") + "\n",
    "punctuation": lambda q: q.replace("?", " ?!").replace(".", ",").replace("'", "’") + " ...",
    "unicode": fullwidth,
}


def test_canonical_forms():
    question = "Janet’s ducks lay 16 eggs per day. How many?"
    for variant in VARIANTS.values():
        assert canonical_for_contamination(variant(question)) == canonical_for_contamination(question)
    assert canonical_problem("Tom  has\n３ apples") == canonical_problem("tom has 3 APPLES")
    assert canonical_problem("Tom has 3 apples.") != canonical_problem("Tom has 3 apples")  # the split keeps punctuation


def test_real_data_builds_audits_and_passes(tmp_path, gsm8k_train_rows):
    math_rows = [math_as_omi(row) for row in jsonl(FIXTURES / "math_train.jsonl")]
    omi2_rows = jsonl(FIXTURES / "omi2_sample.jsonl")
    write_rows(tmp_path / "real.jsonl", gsm8k_train_rows + math_rows + omi2_rows)
    config = make_config(tmp_path, data={"source": str(tmp_path / "real.jsonl")}, benchmark={"source": str(GSM8K_TEST)})
    cli("build-data", "-c", config)
    cli("audit", "-c", config)
    cli("contamination", "-c", config)

    manifest = orjson.loads((results(tmp_path) / "demo-build-data" / "manifest.json").read_bytes())
    assert manifest["key_figure"]["rows_in"] == 300 + 57 + 1  # the omi2 fixture has 1 gsm8k row, 0 math rows
    rejects = read_rows(results(tmp_path) / "demo-build-data" / "rejects.jsonl")
    no_box = [r["raw"]["generated_solution"] for r in rejects if r["reason"] == "no_boxed"]
    assert len(no_box) == 2 and all("\\boxed " in solution for solution in no_box)  # `\boxed 2` and `\boxed 9`
    assert manifest["key_figure"]["kept"] >= 350

    audit = orjson.loads((results(tmp_path) / "demo-audit" / "audit_report.json").read_bytes())
    assert audit["checks"]["several_boxes"]["count"] >= 29  # the fixture keeps 30 MATH solutions with more than one box

    report = orjson.loads((results(tmp_path) / "demo-contamination" / "report.json").read_bytes())
    gsm8k = report["benchmarks"]["benchmark"]  # a [benchmark] contract's one benchmark
    assert report["status"] == "pass" and gsm8k["exact_overlap"]["count"] == 0  # shared/data README check (a): 0 of 1,319
    assert gsm8k["questions"] == 250 and gsm8k["rows_checked"] == 301 and gsm8k["checked_sources"] == ["gsm8k"]
    assert all(pair["shared_ngrams"] >= 1 for pair in gsm8k["ngram_overlap"]["pairs"])
    assert require_contamination_pass(load_contract(config), "demo-build-data") == results(tmp_path) / "demo-contamination" / "report.json"


def planted_source(tmp_path, gsm8k_train_rows, gsm8k_test) -> dict[str, int]:
    """300 GSM8K train rows + test questions planted in four disguises; returns planted row id -> test index."""
    rows = gsm8k_train_rows[:300]
    planted = {}
    for test_index, variant in enumerate(VARIANTS.values()):
        test = gsm8k_test[test_index]
        planted[f"rows:{len(rows)}"] = test_index
        rows.append(omi(variant(test["question"]), f"\\boxed{{{test['answer'].rsplit('####', 1)[1].strip()}}}", test["answer"].rsplit("####", 1)[1].strip()))
    rows.append(omi(gsm8k_test[4]["question"], "\\boxed{1}", "1", "math"))  # not a checked source
    near = gsm8k_test[5]["question"].split()
    rows.append(omi(" ".join(near[:-1] + ["tomorrow?"]), "\\boxed{1}", "1"))  # one word changed: 13-gram only
    write_rows(tmp_path / "rows.jsonl", rows)
    return planted


def test_planted_test_questions_fail_and_block_train_until_rejected(tmp_path, gsm8k_train_rows, gsm8k_test):
    planted = planted_source(tmp_path, gsm8k_train_rows, gsm8k_test)
    config = make_config(tmp_path, data={"source": str(tmp_path / "rows.jsonl")}, benchmark={"source": str(GSM8K_TEST)})
    cli("build-data", "-c", config)
    failed = cli("contamination", "-c", config, expect=2)
    report_path = results(tmp_path) / "demo-contamination" / "report.json"
    assert "contamination check failed (4 exact benchmark overlaps" in error_line(failed) and str(report_path) in error_line(failed)

    report = orjson.loads(report_path.read_bytes())
    assert report["status"] == "fail"
    gsm8k = report["benchmarks"]["benchmark"]
    assert {(pair["row_id"], pair["benchmark_index"]) for pair in gsm8k["exact_overlap"]["pairs"]} == set(planted.items())
    near_pairs = {(pair["row_id"], pair["benchmark_index"]) for pair in gsm8k["ngram_overlap"]["pairs"]}
    assert ("rows:305", 5) in near_pairs and set(planted.items()) <= near_pairs
    assert (results(tmp_path) / "demo-contamination" / "manifest.json").exists()  # the check ran; its verdict is fail

    with pytest.raises(UserError, match="training is refused"):
        require_contamination_pass(load_contract(config), "demo-build-data")
    cli("render", "-c", config)
    assert "contamination check failed" in error_line(cli("train", "-c", config, expect=2))

    # the fix the error names: reject the rows, rebuild, recheck
    (tmp_path / "decisions.jsonl").write_text("".join(f'{{"row_id": "{row_id}", "decision": "reject", "note": "GSM8K test"}}\n' for row_id in planted))
    cli("build-data", "-c", config)
    with pytest.raises(UserError, match="checked an older build"):
        require_contamination_pass(load_contract(config), "demo-build-data")
    cli("contamination", "-c", config)
    assert orjson.loads(report_path.read_bytes())["status"] == "pass"


def tampered_build(tmp_path, gsm8k_train_rows, leak) -> dict:
    """A clean build whose val.jsonl then gets `leak(train)` appended; contamination reruns on the changed input."""
    write_rows(tmp_path / "rows.jsonl", gsm8k_train_rows[:200])
    config = make_config(tmp_path, data={"source": str(tmp_path / "rows.jsonl")}, benchmark={"source": str(GSM8K_TEST)})
    cli("build-data", "-c", config)
    cli("contamination", "-c", config)
    data_dir = results(tmp_path) / "demo-build-data"
    train, val = read_rows(data_dir / "train.jsonl"), read_rows(data_dir / "val.jsonl")
    write_rows(data_dir / "val.jsonl", val + leak(train))
    cli("contamination", "-c", config, expect=2)
    report = orjson.loads((results(tmp_path) / "demo-contamination" / "report.json").read_bytes())
    assert report["status"] == "fail" and report["benchmarks"]["benchmark"]["exact_overlap"]["count"] == 0
    return {"train": train, "report": report}


def test_train_val_overlap_by_row_id_alone_fails(tmp_path, gsm8k_train_rows):
    # the same row id on both sides, with another problem text: only the row-id branch can catch it
    found = tampered_build(tmp_path, gsm8k_train_rows, lambda train: [{**train[0], "problem": "An unrelated question about 7 kites?"}])
    assert found["report"]["train_val_overlap"]["row_ids"] == [found["train"][0]["row_id"]]
    assert found["report"]["train_val_overlap"]["problems"] == []


def test_train_val_overlap_by_problem_text_alone_fails(tmp_path, gsm8k_train_rows):
    # a variant of a training problem under its own row id (what the reference experiment hit): only the problem branch catches it
    found = tampered_build(tmp_path, gsm8k_train_rows, lambda train: [{**train[1], "row_id": "other:1", "problem": "  " + train[1]["problem"].upper()}])
    assert found["report"]["train_val_overlap"]["row_ids"] == []
    assert [(pair["train_row_id"], pair["val_row_id"]) for pair in found["report"]["train_val_overlap"]["problems"]] == [(found["train"][1]["row_id"], "other:1")]


def test_demo_data_passes_and_the_demo_benchmark_is_disjoint(tmp_path):
    config = make_config(tmp_path, data={"demo_rows": 800})
    cli("build-data", "-c", config)
    cli("contamination", "-c", config)
    assert require_contamination_pass(load_contract(config), "demo-build-data").exists()
    for seed in (0, 1):
        benchmark = {canonical_for_contamination(row["question"]) for row in generate_benchmark_rows(1000, seed)}
        assert len(benchmark) == 1000
        for row in generate_benchmark_rows(50, seed):  # "a - b = <<a-b=c>>c\n#### c"
            a, op, b = row["answer"].split(" = ")[0].split()
            assert row["answer"].endswith(f"#### {int(a) + int(b) if op == '+' else int(a) - int(b)}")
        assert not any(canonical_for_contamination(question) in benchmark for question, _ in clean_examples(3000, seed))
        assert not any(canonical_for_contamination(row["problem"]) in benchmark for row in generate_omi2_rows(3000, seed) if isinstance(row.get("problem"), str))


def test_no_check_or_bad_benchmark_is_one_line(tmp_path):
    config = make_config(tmp_path, data={"demo_rows": 300})
    cli("build-data", "-c", config)
    with pytest.raises(UserError, match="no finished contamination check of data run demo-build-data"):
        require_contamination_pass(load_contract(config), "demo-build-data")
    write_rows(tmp_path / "bench.jsonl", [{"question": "Q?", "answer": "2 + 2 = 4\n#### 4"}, {"question": "Q2?", "answer": "no reference"}])
    bad = make_config(tmp_path, data={"demo_rows": 300}, benchmark={"source": str(tmp_path / "bench.jsonl")}, name="bad.toml")
    cli("build-data", "-c", bad, "--if-exists", "overwrite")
    assert "row 1: answer has no '#### N' line" in error_line(cli("contamination", "-c", bad, expect=2))


def test_train_gates_the_data_run_its_render_run_was_made_from(tmp_path):
    """A passing check of the default data run does not clear rows rendered from another data run."""
    config = make_config(tmp_path, data={"demo_rows": 400})
    cli("build-data", "-c", config)
    cli("contamination", "-c", config)  # the default data run passes
    cli("build-data", "-c", config, "--run-id", "other-data")
    cli("render", "-c", config, "--data-run", "other-data")
    line = error_line(cli("train", "-c", config, expect=2))
    assert "no finished contamination check of data run other-data" in line
    cli("contamination", "-c", config, "--data-run", "other-data", "--run-id", "other-contamination")
    line = error_line(cli("train", "-c", config, expect=2))  # the gate passes; what stops train now is the missing lr-select run
    assert "contamination" not in line and "lr-select run demo-lr-select is missing" in line
