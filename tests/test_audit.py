"""audit through the real CLI: each automatic check, the two review packs (JSONL + Markdown), seeding."""

from __future__ import annotations

from collections import Counter

import orjson

from datakit import cli, error_line, make_config, omi, read_rows, results, write_rows
from loraexp.demo.data import PLANT_EVERY, PLANTED_KINDS

# (row, flags the audit must raise); row i gets row id "rows:i"
ROWS = [
    (omi("Tom has 3 apples and buys 2. How many apples?", "3 + 2 = 5. \\boxed{5}", "5"), []),
    (omi("How many pens are left?", "First \\boxed{4}, no: 7 - 2 = 5. \\boxed{5}", "5"), ["several_boxes"]),
    (omi("How many pizzas does each child get?", "5 / 2 = 2.5. \\boxed{2.5}", "2.5"), ["fractional_count"]),
    (omi("How many cakes does each friend get?", "It is \\boxed{\\frac{5}{2}}", "\\frac{5}{2}"), ["fractional_count"]),
    (omi("How many coins does Ana have after paying?", "2 - 5 = -3. \\boxed{-3}", "-3"), ["negative_count"]),
    (omi("How many is half of 5?", "5 / 2 = 2.5. \\boxed{2.5}", "2.5", "math"), []),  # not a gsm8k count
    (omi("Q6?", "7 - 2 = 5. \\boxed{5} Then we check this result by counting every pen in the box and", "5"), ["text_after_box", "ends_mid_sentence"]),
    (omi("Q7?", "7 - 2 = 5. \\boxed{5} and", "5"), ["ends_mid_sentence"]),
    (omi("Area?", "The area is $\\boxed{5}$ square inches.", "5", "math"), []),  # a unit after the box is normal
    (omi("Sum?", "\\begin{align*} x &= \\boxed{5}.\n\\end{align*}", "5", "math"), []),
    (omi("Q10?", "There seems to be a mistake, still \\boxed{5}", "5"), ["suspicious_phrase"]),  # manual keep
    (omi("Q11?", "2 + 2 = 5. \\boxed{4}", "5"), ["boxed_mismatch"]),  # manual keep
    (omi("Q12?", "The answer is 5.", "5"), ["no_boxed"]),  # manual keep
    (omi("New problem: Q13?", "\\boxed{5}", "5"), ["prompt_debris"]),  # manual keep
] + [(omi(f"Clean {i}?", f"{i} + 1 = {i + 1}. \\boxed{{{i + 1}}}", str(i + 1)), []) for i in range(14, 30)]
KEEPS = ("rows:10", "rows:11", "rows:12", "rows:13")


def build(tmp_path, review_rows: int = 4, seed: int = 0, name: str = "c.toml"):
    write_rows(tmp_path / "rows.jsonl", [row for row, _ in ROWS])
    (tmp_path / "decisions.jsonl").write_text("".join(f'{{"row_id": "{row_id}", "decision": "keep", "note": "audit test"}}\n' for row_id in KEEPS))
    config = make_config(tmp_path, data={"source": str(tmp_path / "rows.jsonl"), "split_seed": seed}, render={"audit_review_rows": review_rows}, name=name)
    cli("build-data", "-c", config, "--if-exists", "overwrite")
    return config


def test_each_check_flags_exactly_its_rows(tmp_path):
    config = build(tmp_path)
    cli("audit", "-c", config)
    run_dir = results(tmp_path) / "demo-audit"
    report = orjson.loads((run_dir / "audit_report.json").read_bytes())
    expected = Counter(flag for _, flags in ROWS for flag in flags)
    assert {name: check["count"] for name, check in report["checks"].items() if check["count"]} == dict(expected)
    for index, (_, flags) in enumerate(ROWS):
        for flag in flags:
            assert f"rows:{index}" in report["checks"][flag]["examples"]
    assert report["rows"] == len(ROWS)
    assert report["boxed_present"] == len(ROWS) - 1 and report["boxed_equals_expected"] == len(ROWS) - 2
    assert report["flagged_rows"] == sum(1 for _, flags in ROWS if flags)
    assert report["by_source"]["gsm8k"]["fractional_count"] == 2
    assert (results(tmp_path) / "demo-audit" / "manifest.json").exists()


def test_review_packs_are_sized_ranked_seeded_and_readable(tmp_path):
    config = build(tmp_path, review_rows=4)
    cli("audit", "-c", config)
    run_dir = results(tmp_path) / "demo-audit"
    suspicious = read_rows(run_dir / "review_suspicious.jsonl")
    assert len(suspicious) == 4 and all(row["flags"] for row in suspicious)
    assert suspicious[0]["row_id"] == "rows:6"  # two flags beat one
    markdown = (run_dir / "review_suspicious.md").read_text()
    assert all(f"`{row['row_id']}`" in markdown for row in suspicious) and str(tmp_path / "decisions.jsonl") in markdown
    assert "text_after_box, ends_mid_sentence" in markdown

    random_ids = [row["row_id"] for row in read_rows(run_dir / "review_random.jsonl")]
    assert len(random_ids) == 4 and len(set(random_ids)) == 4
    assert all(f"`{row_id}`" in (run_dir / "review_random.md").read_text() for row_id in random_ids)
    cli("audit", "-c", config, "--if-exists", "overwrite")
    assert [row["row_id"] for row in read_rows(run_dir / "review_random.jsonl")] == random_ids

    other = build(tmp_path, review_rows=4, seed=5, name="other.toml")
    cli("audit", "-c", other, "--run-id", "audit-seed5", "--if-exists", "overwrite")
    assert [row["row_id"] for row in read_rows(results(tmp_path) / "audit-seed5" / "review_random.jsonl")] != random_ids


def test_audit_of_demo_data_finds_the_planted_rows(tmp_path):
    config = make_config(tmp_path, data={"demo_rows": 600})
    cli("build-data", "-c", config)
    cli("audit", "-c", config)
    report = orjson.loads((results(tmp_path) / "demo-audit" / "audit_report.json").read_bytes())
    planted = Counter(PLANTED_KINDS[(i // PLANT_EVERY) % len(PLANTED_KINDS)] for i in range(600) if i % PLANT_EVERY == PLANT_EVERY // 2)
    for kind in ("several_boxes", "fractional_count", "text_after_box"):
        assert report["checks"][kind]["count"] == planted[kind] > 0
    assert report["checks"]["ends_mid_sentence"]["count"] == planted["text_after_box"]
    assert report["gate_rejects"]["exact_duplicate"] >= planted["exact_duplicate"] > 0


def test_audit_needs_a_finished_build(tmp_path):
    result = cli("audit", "-c", make_config(tmp_path), "--data-run", "nope", expect=2)
    assert "build-data run nope is missing or unfinished" in error_line(result)
