"""audit: automatic checks over a build-data run, plus two review packs a person reads before training.

Runbook step:
1. read train.jsonl + val.jsonl (the rows that passed the gate) and rejects.jsonl;
2. flag every row: no box, box != expected answer, several boxes, suspicious phrase, prompt debris,
   fractional or negative count in a gsm8k "how many" problem, text after the last box, ending mid-sentence;
3. write audit_report.json (counts, shares and example row ids per check, per source);
4. write the suspicious pack (flagged rows, most flags first) and a seeded random pack, `render.audit_review_rows`
   rows each, as JSONL and Markdown; a reviewer turns findings into lines of `data.decisions_file`;
5. manifest.json last.
"""

from __future__ import annotations

import logging
import random
import re
from collections import Counter, defaultdict

from loraexp.artifacts import Run
from loraexp.contracts import DataSection
from loraexp.data.text import first_phrase
from loraexp.files import read_jsonl, write_json_atomic, write_jsonl, write_text_atomic
from loraexp.scoring.answers import as_decimal, find_boxed, normalize, strict_equal
from loraexp.session import Session, StageResult

log = logging.getLogger(__name__)

CHECKS = (
    "no_boxed", "boxed_mismatch", "several_boxes", "suspicious_phrase", "prompt_debris",
    "fractional_count", "negative_count", "text_after_box", "ends_mid_sentence",
)
EXAMPLES_PER_CHECK = 5
HOW_MANY = re.compile(r"\bhow many\b", re.IGNORECASE)
# closing math delimiters and environments are not text; a unit or a short phrase after the box is normal
CLOSING_MARKUP = re.compile(r"\\end\{[^}]*\}|\\[\])]")
WORD = re.compile(r"[^\W\d_]+")
MAX_WORDS_AFTER_BOX = 8  # MATH: "$\boxed{5}$ square inches." is fine; a whole sentence after the answer is not
FINISHED_ENDING = re.compile(r"([.!?:)\]}$]|\\\]|\\\))\s*$")
OUTPUTS = ("audit_report.json", "review_suspicious.jsonl", "review_suspicious.md", "review_random.jsonl", "review_random.md")


def run(session: Session, data_run: str | None = None, run_id: str | None = None) -> StageResult:
    """Check every kept row of a build-data run; write the report and both review packs."""
    contract, result = session.contract, StageResult("audit")
    data_dir = session.finished_run("build-data", data_run)
    run = session.begin(result, run_id, inputs=[data_dir])
    if run is None:
        return result
    rows = [{**row, "split": "train"} for row in read_jsonl(data_dir / "train.jsonl")]
    rows += [{**row, "split": "val"} for row in read_jsonl(data_dir / "val.jsonl")]
    rejects = read_jsonl(data_dir / "rejects.jsonl")
    flags = {row["row_id"]: row_flags(row, contract.data) for row in rows}
    report = summarize(rows, flags, rejects, data_dir.name)
    write_json_atomic(run.path("audit_report.json"), report)
    size = contract.render.audit_review_rows
    decisions_file = contract.data.decisions_file or "data.decisions_file"
    write_pack(run, "review_suspicious", suspicious_pack(rows, flags, size), "Suspicious review pack", "rows flagged by the automatic checks, most flags first", decisions_file)
    write_pack(run, "review_random", random_sample(rows, flags, size, contract.data.split_seed), "Random review pack",
               f"a seeded random sample (seed {contract.data.split_seed}) of the kept rows", decisions_file)
    run.add_input(data_dir, ["train.jsonl", "val.jsonl", "rejects.jsonl"])
    flagged = sum(1 for row_flags_ in flags.values() if row_flags_)
    log.info("audit of %s: %d rows, %d flagged (%s)", data_dir.name, len(rows), flagged,
             ", ".join(f"{name} {check['count']}" for name, check in report["checks"].items() if check["count"]) or "nothing")
    run.finish(OUTPUTS, key_figure={"rows": len(rows), "flagged": flagged, "rejects": len(rejects)}, extra={"data_run": data_dir.name})
    result.finished(run.run_id, f"{run.run_id}: {flagged} of {len(rows)} rows flagged; review {run.path('review_suspicious.md')} and {run.path('review_random.md')}")
    return result


def row_flags(row: dict, data: DataSection) -> list[str]:
    """Names of the automatic checks this row fails (empty when it looks clean)."""
    solution, expected = row["generated_solution"], row["expected_answer"]
    boxes = find_boxed(solution)
    flags = []
    if not boxes:
        flags.append("no_boxed")
    elif not strict_equal(boxes[-1], expected):
        flags.append("boxed_mismatch")
    if len(boxes) > 1:
        flags.append("several_boxes")
    text = row["problem"] + "\n" + solution
    if first_phrase(text, data.suspicious_phrases):
        flags.append("suspicious_phrase")
    if first_phrase(text, data.debris_phrases):
        flags.append("prompt_debris")
    flags += impossible_count(row)
    if boxes and words_after_last_box(solution) > MAX_WORDS_AFTER_BOX:
        flags.append("text_after_box")
    if not FINISHED_ENDING.search(solution):
        flags.append("ends_mid_sentence")
    return flags


def impossible_count(row: dict) -> list[str]:
    """A gsm8k-source "how many" question counts discrete things: its answer must be a whole number >= 0."""
    if not row["problem_source"].endswith("gsm8k") or not HOW_MANY.search(row["problem"]):
        return []
    answer = normalize(row["expected_answer"]).replace(",", "")
    value = as_decimal(answer)
    if value is None:
        return ["fractional_count"] if ("/" in answer or "\\frac" in answer) else []
    if value != value.to_integral_value():
        return ["fractional_count"]
    return ["negative_count"] if value < 0 else []


def words_after_last_box(solution: str) -> int:
    """Words of text after the closing brace of the last well-formed box (markup ignored)."""
    marker = "\\boxed{" + find_boxed(solution)[-1] + "}"
    tail = solution[solution.rfind(marker) + len(marker):]
    return len(WORD.findall(CLOSING_MARKUP.sub(" ", tail)))


def summarize(rows: list[dict], flags: dict[str, list[str]], rejects: list[dict], data_run: str) -> dict:
    """Counts, shares and example row ids per check, overall and per source, plus the gate's reject counts."""
    checks = {name: {"count": 0, "share": 0.0, "examples": []} for name in CHECKS}
    by_source: dict[str, Counter] = defaultdict(Counter)
    for row in rows:
        by_source[row["problem_source"]]["rows"] += 1
        for name in flags[row["row_id"]]:
            checks[name]["count"] += 1
            by_source[row["problem_source"]][name] += 1
            if len(checks[name]["examples"]) < EXAMPLES_PER_CHECK:
                checks[name]["examples"].append(row["row_id"])
    for check in checks.values():
        check["share"] = round(check["count"] / len(rows), 6) if rows else 0.0
    boxed_present = len(rows) - checks["no_boxed"]["count"]
    return {
        "data_run": data_run,
        "rows": len(rows),
        "boxed_present": boxed_present,
        "boxed_equals_expected": boxed_present - checks["boxed_mismatch"]["count"],
        "flagged_rows": sum(1 for row in rows if flags[row["row_id"]]),
        "checks": checks,
        "by_source": {source: dict(counts) for source, counts in sorted(by_source.items())},
        "gate_rejects": dict(Counter(reject["reason"] for reject in rejects).most_common()),
    }


def suspicious_pack(rows: list[dict], flags: dict[str, list[str]], size: int) -> list[dict]:
    """Flagged rows: most flags first, then rows with the rarest flag (so a common flag cannot crowd out the rest)."""
    flag_counts = Counter(name for row_flags_ in flags.values() for name in row_flags_)
    flagged = [row for row in rows if flags[row["row_id"]]]
    flagged.sort(key=lambda row: (-len(flags[row["row_id"]]), min(flag_counts[name] for name in flags[row["row_id"]])))
    return [{**row, "flags": flags[row["row_id"]]} for row in flagged[:size]]


def random_sample(rows: list[dict], flags: dict[str, list[str]], size: int, seed: int) -> list[dict]:
    picked = random.Random(f"audit:{seed}").sample(rows, min(size, len(rows)))
    return [{**row, "flags": flags[row["row_id"]]} for row in picked]


def write_pack(run: Run, name: str, rows: list[dict], title: str, what: str, decisions_file: str) -> None:
    """`<name>.jsonl` (machine) and `<name>.md` (a person reads it) with the same rows."""
    write_jsonl(run.path(f"{name}.jsonl"), rows)
    lines = [
        f"# {title} ({len(rows)} rows)",
        "",
        f"{what.capitalize()}. To drop a row, add a line",
        f'`{{"row_id": "<row_id>", "decision": "reject", "note": "<why>"}}` to `{decisions_file}`',
        "and rerun build-data; `\"decision\": \"keep\"` overrules a content rejection.",
        "",
    ]
    for number, row in enumerate(rows, start=1):
        lines += [
            f"## {number}. `{row['row_id']}` ({row['problem_source']}, {row['split']})",
            "",
            f"- flags: {', '.join(row['flags']) or 'none'}",
            f"- expected answer: `{row['expected_answer']}`",
            "",
            "**Problem**",
            "",
            "```text",
            row["problem"],
            "```",
            "",
            "**Solution**",
            "",
            "```text",
            row["generated_solution"],
            "```",
            "",
        ]
    write_text_atomic(run.path(f"{name}.md"), "\n".join(lines))
