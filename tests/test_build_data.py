"""build-data through the real CLI: every rejection reason, stable row ids, the grouped split, decisions, sources."""

from __future__ import annotations

from collections import Counter

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datakit import cli, error_line, make_config, omi, read_rows, results, write_rows
from loraexp.files import file_sha256
from loraexp.demo.data import PLANTED_KINDS, generate_omi2_rows
from loraexp.data.text import canonical_problem

OUTPUT_KEYS = ["row_id", "problem_source", "problem", "generated_solution", "expected_answer", "canonical_problem_sha"]
GATE_REASONS = {"boxed_mismatch", "no_boxed", "suspicious_phrase", "prompt_debris", "missing_field", "empty_field", "non_string_field", "exact_duplicate"}


def good(index: int, source: str = "gsm8k") -> dict:
    return omi(f"Tom has {index} apples and buys 2 more. How many apples?", f"{index} + 2 = {index + 2}. \\boxed{{{index + 2}}}", str(index + 2), source)


# (line as written to rows.jsonl, expected reason or None when kept); the line index is the row id suffix
CASES: list[tuple[bytes, str | None]] = [
    (orjson.dumps(good(1)), None),
    (orjson.dumps(good(2, "math")), None),
    (orjson.dumps(omi("Half of 1?", "It is \\boxed{\\frac{1}{2}}", "\\dfrac{1}{2}", "math")), None),  # nested braces, normalized
    (orjson.dumps(omi("Q3?", "first \\boxed{7}, then \\boxed{5}", "5")), None),  # the last box counts
    (orjson.dumps(omi("Q4?", "first \\boxed{5}, then \\boxed{7}", "5")), "boxed_mismatch"),
    (orjson.dumps(omi("Q5?", "so 5 + 1 = 6. \\boxed{7}", "6")), "boxed_mismatch"),
    (orjson.dumps(omi("Q6?", "the answer is \\boxed 6", "6")), "no_boxed"),  # no braces: no fallback
    (orjson.dumps(omi("Q7?", "so it is \\boxed{6", "6")), "no_boxed"),  # unclosed box
    (orjson.dumps(omi("Q8?", "THERE SEEMS TO BE A MISTAKE here. \\boxed{6}", "6")), "suspicious_phrase"),  # case-insensitive
    (orjson.dumps(omi("Write a New Problem: how many?", "\\boxed{6}", "6")), "prompt_debris"),
    (orjson.dumps({"problem": "Q10?", "generated_solution": "\\boxed{6}", "problem_source": "gsm8k"}), "missing_field"),
    (orjson.dumps({"problem": "Q11?", "generated_solution": "\\boxed{6}", "expected_answer": "6"}), "missing_field"),
    (orjson.dumps(omi("   ", "\\boxed{6}", "6")), "empty_field"),
    (orjson.dumps(omi("Q13?", "\\boxed{6}", 6)), "non_string_field"),
    (orjson.dumps(omi("Q14?", ["\\boxed{6}"], "6")), "non_string_field"),
    (orjson.dumps(good(1)), "exact_duplicate"),
    (b'{"problem": "Q16?", "generated_solution": ', "malformed_json"),
    (b'{"problem": "caf\xe9 \\boxed{6}"}', "not_utf8"),
    (b'["not", "an", "object"]', "not_an_object"),
    (orjson.dumps(good(19, "augmented_math")), "filtered"),  # not an original source: dropped before the gate
    (orjson.dumps(omi("Q20?", "\\boxed{6}", "6", None)), "missing_field"),  # null problem_source
]


def write_cases(path):
    path.write_bytes(b"\n".join(line for line, _ in CASES) + b"\n")
    return path


def test_every_rejection_reason_is_recorded_with_the_raw_row(tmp_path):
    source = write_cases(tmp_path / "rows.jsonl")
    config = make_config(tmp_path, data={"source": str(source), "val_fraction": 0.3})
    cli("build-data", "-c", config)
    run_dir = results(tmp_path) / "demo-build-data"

    rejects = {row["row_id"]: row for row in read_rows(run_dir / "rejects.jsonl")}
    expected_rejects = {f"rows:{i}": reason for i, (_, reason) in enumerate(CASES) if reason not in (None, "filtered")}
    assert {row_id: row["reason"] for row_id, row in rejects.items()} == expected_rejects
    assert rejects["rows:10"]["detail"] == "expected_answer" and rejects["rows:11"]["detail"] == "problem_source"
    assert rejects["rows:17"]["raw"] == '{"problem": "caf\\xe9 \\boxed{6}"}'  # undecodable byte kept visible
    assert rejects["rows:16"]["raw"].startswith('{"problem": "Q16?"')
    assert rejects["rows:13"]["raw"]["expected_answer"] == 6 and rejects["rows:13"]["source"] == "gsm8k"
    assert rejects["rows:20"]["source"] == "unknown" and rejects["rows:16"]["source"] == "unknown"

    kept = read_rows(run_dir / "train.jsonl") + read_rows(run_dir / "val.jsonl")
    assert sorted(row["row_id"] for row in kept) == ["rows:0", "rows:1", "rows:2", "rows:3"]
    assert all(list(row) == OUTPUT_KEYS for row in kept)

    manifest = orjson.loads((run_dir / "manifest.json").read_bytes())
    assert manifest["status"] == "pass"
    assert manifest["key_figure"] == {"rows_in": 20, "kept": 4, "train": len(kept) - manifest["key_figure"]["val"], "val": manifest["key_figure"]["val"], "rejected": 16}
    assert manifest["reject_counts"]["gsm8k"] == {"boxed_mismatch": 2, "no_boxed": 2, "suspicious_phrase": 1, "prompt_debris": 1, "missing_field": 1, "empty_field": 1, "non_string_field": 2, "exact_duplicate": 1}
    assert manifest["reject_counts"]["unknown"] == {"missing_field": 2, "malformed_json": 1, "not_utf8": 1, "not_an_object": 1}
    assert manifest["source"]["problem_source_counts"]["augmented_math"] == 1
    assert manifest["decisions_sha256"] == file_sha256(tmp_path / "decisions.jsonl")


def test_parquet_source_matches_jsonl_and_reads_row_groups(tmp_path):
    rows = [good(3 * i + k, source) for i in range(60) for k, source in enumerate(("gsm8k", "augmented_gsm8k", "math"))]
    rows[5] = omi("Q?", "no box", "3", "math")
    rows[7] = {**good(7), "problem_source": None}
    (tmp_path / "j").mkdir()
    (tmp_path / "p").mkdir()
    write_rows(tmp_path / "j" / "rows.jsonl", [{k: v for k, v in row.items() if v is not None} for row in rows])
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p" / "rows.parquet", row_group_size=7)
    outputs = {}
    for kind, path in (("j", tmp_path / "j" / "rows.jsonl"), ("p", tmp_path / "p" / "rows.parquet")):
        config = make_config(tmp_path, data={"source": str(path)}, name=f"{kind}.toml")
        cli("build-data", "-c", config, "--run-id", kind)
        outputs[kind] = {name: (results(tmp_path) / kind / name).read_bytes() for name in ("train.jsonl", "val.jsonl", "rejects.jsonl")}
    assert outputs["j"] == outputs["p"]
    rejects = read_rows(results(tmp_path) / "p" / "rejects.jsonl")
    assert {(r["row_id"], r["reason"]) for r in rejects} == {("rows:5", "no_boxed"), ("rows:7", "missing_field")}
    manifest = orjson.loads((results(tmp_path) / "p" / "manifest.json").read_bytes())
    assert manifest["key_figure"]["rows_in"] == 121 and manifest["source"]["rows_total"] == 180


def test_demo_source_plants_every_reason_and_rebuilds_identically(tmp_path):
    config = make_config(tmp_path, data={"demo_rows": 600})
    cli("build-data", "-c", config)
    run_dir = results(tmp_path) / "demo-build-data"
    reasons = Counter(row["reason"] for row in read_rows(run_dir / "rejects.jsonl"))
    assert set(reasons) == GATE_REASONS
    first = {name: file_sha256(run_dir / name) for name in ("train.jsonl", "val.jsonl", "rejects.jsonl")}
    cli("build-data", "-c", config, "--if-exists", "overwrite")
    assert {name: file_sha256(run_dir / name) for name in first} == first
    assert len(PLANTED_KINDS) * 25 <= 600 and generate_omi2_rows(600, 0) == generate_omi2_rows(600, 0)


def grouping_rows() -> list[dict]:
    """120 problems in two sources, each solved 1-3 times, some repeats differing only in case/whitespace/width."""
    rows = []
    for index in range(120):
        source = "gsm8k" if index % 3 else "math"
        problem = f"Ana has {index} pens and finds 4 more. How many pens?"
        variants = [problem, problem.upper(), problem.replace(" ", "  \n"), problem.replace(str(index), str(index).translate(str.maketrans("0123456789", "０１２３４５６７８９")))]
        for solution_number in range(1 + index % 3):
            rows.append(omi(variants[solution_number % 4 if index % 2 else 0], f"Way {solution_number}: {index} + 4 = {index + 4}. \\boxed{{{index + 4}}}", str(index + 4), source))
    return rows


def split_of(tmp_path, seed: int, run_id: str) -> tuple[list[dict], list[dict]]:
    config = make_config(tmp_path, data={"source": str(tmp_path / "rows.jsonl"), "val_fraction": 0.25, "split_seed": seed}, name=f"{run_id}.toml")
    cli("build-data", "-c", config, "--run-id", run_id)
    return read_rows(results(tmp_path) / run_id / "train.jsonl"), read_rows(results(tmp_path) / run_id / "val.jsonl")


def test_split_is_grouped_by_canonical_problem_stratified_and_seeded(tmp_path):
    write_rows(tmp_path / "rows.jsonl", grouping_rows())
    train, val = split_of(tmp_path, 0, "seed0")
    train_groups = {canonical_problem(row["problem"]) for row in train}
    val_groups = {canonical_problem(row["problem"]) for row in val}
    assert train_groups.isdisjoint(val_groups)
    assert len(train_groups | val_groups) == 120  # case, whitespace and full-width digits collapse into one group
    assert {row["canonical_problem_sha"] for row in train}.isdisjoint({row["canonical_problem_sha"] for row in val})
    for source, groups in (("gsm8k", 80), ("math", 40)):  # round(0.25 * groups) of each stratum
        assert len({row["canonical_problem_sha"] for row in val if row["problem_source"] == source}) == round(0.25 * groups)
    assert split_of(tmp_path, 0, "seed0-again") == (train, val)
    other_train, other_val = split_of(tmp_path, 1, "seed1")
    assert {row["row_id"] for row in other_val} != {row["row_id"] for row in val}
    assert [row["row_id"] for row in train] == sorted((row["row_id"] for row in train), key=lambda rid: int(rid.split(":")[1]))


def test_decisions_file_is_applied_on_every_rebuild(tmp_path):
    source = write_cases(tmp_path / "rows.jsonl")
    config = make_config(tmp_path, data={"source": str(source)})
    cli("build-data", "-c", config)
    run_dir = results(tmp_path) / "demo-build-data"
    decisions = tmp_path / "decisions.jsonl"
    decisions.write_text(
        '{"row_id": "rows:1", "decision": "reject", "note": "reviewer: wrong topic"}\n'
        '{"row_id": "rows:5", "decision": "keep", "note": "reviewer: the box is right"}\n'
        '{"row_id": "rows:8", "decision": "keep", "note": "the phrase is harmless here"}\n'
    )
    cli("build-data", "-c", config)  # resume notices the decisions file changed and rebuilds
    kept = {row["row_id"] for row in read_rows(run_dir / "train.jsonl") + read_rows(run_dir / "val.jsonl")}
    assert kept == {"rows:0", "rows:2", "rows:3", "rows:5", "rows:8"}
    rejects = {row["row_id"]: row for row in read_rows(run_dir / "rejects.jsonl")}
    assert rejects["rows:1"]["reason"] == "manual_reject" and rejects["rows:1"]["detail"] == "reviewer: wrong topic"
    manifest = orjson.loads((run_dir / "manifest.json").read_bytes())
    assert manifest["decisions_sha256"] == file_sha256(decisions)
    assert manifest["manual_decisions_applied"] == {"reject": 1, "keep": 2}


@pytest.mark.parametrize(("decisions", "message"), [
    ('{"row_id": "rows:12", "decision": "keep", "note": ""}\n', "broken (empty_field"),
    ('{"row_id": "rows:999", "decision": "reject", "note": ""}\n', "rows:999"),
    ('{"row_id": "rows:1", "decision": "maybe"}\n', 'decision "keep" or "reject"'),
    ('{"row_id": "rows:1", "decision": "reject"}\n{"row_id": "rows:1", "decision": "keep"}\n', "second decision"),
    ("not json\n", "is not valid JSON"),
])
def test_bad_decisions_are_one_line_errors(tmp_path, decisions, message):
    source = write_cases(tmp_path / "rows.jsonl")
    config = make_config(tmp_path, data={"source": str(source)})
    (tmp_path / "decisions.jsonl").write_text(decisions)
    result = cli("build-data", "-c", config, expect=2)
    assert message in error_line(result)
    assert not (results(tmp_path) / "demo-build-data" / "manifest.json").exists()


def test_missing_decisions_file_names_the_fix(tmp_path):
    config = make_config(tmp_path, data={"decisions_file": str(tmp_path / "nope.jsonl")})
    result = cli("build-data", "-c", config, expect=2)
    assert "nope.jsonl not found; create it (an empty file is fine)" in error_line(result)  # absolute path: no cwd note


def test_empty_dataset_names_the_gate_that_removed_everything(tmp_path):
    write_rows(tmp_path / "nobox.jsonl", [omi(f"Q{i}?", "no box here", "1") for i in range(5)])
    result = cli("build-data", "-c", make_config(tmp_path, data={"source": str(tmp_path / "nobox.jsonl")}), expect=2)
    assert "the gate removed all 5 rows of nobox (no_boxed: 5)" in error_line(result)
    assert len(read_rows(results(tmp_path) / "demo-build-data" / "rejects.jsonl")) == 5  # the evidence stays

    write_rows(tmp_path / "augmented.jsonl", [good(i, "augmented_math") for i in range(3)])
    result = cli("build-data", "-c", make_config(tmp_path, data={"source": str(tmp_path / "augmented.jsonl")}), "--if-exists", "overwrite", expect=2)
    assert "keep_sources" in error_line(result) and "augmented_math (3)" in error_line(result)


def test_missing_or_unsupported_source_is_one_line(tmp_path):
    result = cli("build-data", "-c", make_config(tmp_path, data={"source": str(tmp_path / "absent.parquet")}), expect=2)
    assert "data.source file not found" in error_line(result)
    (tmp_path / "rows.csv").write_text("a,b\n")
    result = cli("build-data", "-c", make_config(tmp_path, data={"source": str(tmp_path / "rows.csv")}), "--if-exists", "overwrite", expect=2)
    assert "unsupported file type '.csv'" in error_line(result)


def test_a_relative_source_resolves_from_the_contract_folder_like_every_contract_path(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    write_rows(tmp_path / "data" / "rows.jsonl", [good(i) for i in range(20)])
    config = make_config(tmp_path, data={"source": "data/rows.jsonl"})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cli("build-data", "-c", config)
    manifest = orjson.loads((results(tmp_path) / "demo-build-data" / "manifest.json").read_bytes())
    assert manifest["source_fingerprint"]["path"] == str((tmp_path / "data" / "rows.jsonl").resolve()) and manifest["key_figure"]["rows_in"] == 20


def test_hf_dataset_path_selects_problem_source_first(tmp_path, monkeypatch):
    """A local dataset directory goes through datasets.load_dataset, exactly like an HF id (no network)."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    rows = [good(2 * i + k, source) for i in range(30) for k, source in enumerate(("gsm8k", "augmented_math"))]
    rows[2]["problem"] = None
    (tmp_path / "omi_hf" / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "omi_hf" / "data" / "train-00000-of-00001.parquet")
    config = make_config(tmp_path, data={"source": str(tmp_path / "omi_hf"), "split": "train"})
    cli("build-data", "-c", config)
    run_dir = results(tmp_path) / "demo-build-data"
    assert [(r["row_id"], r["reason"], r["detail"]) for r in read_rows(run_dir / "rejects.jsonl")] == [("omi_hf-train:2", "missing_field", "problem")]
    kept = read_rows(run_dir / "train.jsonl") + read_rows(run_dir / "val.jsonl")
    assert len(kept) == 29 and {row["row_id"] for row in kept} == {f"omi_hf-train:{2 * i}" for i in range(30)} - {"omi_hf-train:2"}

    # the dataset's resolved fingerprint is recorded: unchanged files reuse the build, a new revision rebuilds it
    fingerprint = orjson.loads((run_dir / "manifest.json").read_bytes())["source_fingerprint"]
    assert fingerprint["fingerprint"] and fingerprint["revision_dir"]
    finished = orjson.loads((run_dir / "manifest.json").read_bytes())["finished_at"]
    assert "already finished" in cli("build-data", "-c", config).output
    pq.write_table(pa.Table.from_pylist(rows + [good(200, "gsm8k")]), tmp_path / "omi_hf" / "data" / "train-00000-of-00001.parquet")
    assert "redoing demo-build-data: source_fingerprint changed" in cli("build-data", "-c", config).output
    manifest = orjson.loads((run_dir / "manifest.json").read_bytes())
    assert manifest["source_fingerprint"] != fingerprint and manifest["key_figure"]["rows_in"] == 31 and manifest["finished_at"] >= finished

    (tmp_path / "empty_hf").mkdir()
    result = cli("build-data", "-c", make_config(tmp_path, data={"source": str(tmp_path / "empty_hf")}), "--if-exists", "overwrite", expect=2)
    assert "could not load HF dataset" in error_line(result)
