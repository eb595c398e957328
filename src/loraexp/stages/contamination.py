"""contamination: does any training-side problem equal a benchmark question, or sit on both sides of the split?

Runbook step:
1. read train.jsonl + val.jsonl of a build-data run and every benchmark (`load_benchmark`);
2. exact overlap, per benchmark: rows whose problem_source is among the benchmark's checked sources (GSM8K
   test against `gsm8k` rows, MATH-500 against `math` rows), compared with every benchmark question after
   NFKC, casefold, punctuation and whitespace removal;
3. near duplicates: shared word `contamination.ngram`-grams (13) on the same canonical words, reported beside;
4. train/validation overlap by row id and by canonical problem text;
5. report.json with `status: pass|fail` (fail = any exact benchmark overlap or any train/val overlap) and the
   overlapping pairs; manifest.json last. A failed report blocks `train` (`require_contamination_pass`).
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter, defaultdict
from pathlib import Path

from tqdm import tqdm

from loraexp.artifacts import list_runs, results_root, stale_inputs
from loraexp.contracts import Benchmark, Contract
from loraexp.data.sources import load_benchmark
from loraexp.data.text import (
    canonical_for_contamination,
    canonical_problem,
    contamination_words,
)
from loraexp.errors import UserError
from loraexp.files import read_json, read_jsonl, write_json_atomic
from loraexp.session import Session, StageResult

log = logging.getLogger(__name__)

REPORT = "report.json"
FIX = (
    "reject each overlapping row in data.decisions_file "
    '({"row_id": ..., "decision": "reject", "note": "benchmark overlap"}), '
    "rerun build-data with --if-exists overwrite, then rerun contamination"
)


def run(session: Session, data_run: str | None = None, run_id: str | None = None) -> StageResult:
    """Check a build-data run against the benchmark; write report.json; a failed check is an error (it blocks train)."""
    contract, result = session.contract, StageResult("contamination")
    data_dir = session.finished_run("build-data", data_run)
    benchmarks = {benchmark.name: (benchmark, load_benchmark(contract, benchmark)) for benchmark in contract.benchmark_specs}
    fingerprint = {"benchmark_questions_sha256": {name: questions_sha256(questions) for name, (_, questions) in benchmarks.items()}}
    run = session.begin(result, run_id, inputs=[data_dir], fingerprint=fingerprint)
    if run is not None:
        report = check(contract, data_dir, benchmarks)
        write_json_atomic(run.path(REPORT), report)
        run.add_input(data_dir, ["train.jsonl", "val.jsonl"])
        split = report["train_val_overlap"]
        key_figure = {"status": report["status"], "exact": exact_count(report), "ngram": sum(b["ngram_overlap"]["count"] for b in report["benchmarks"].values()),
                      "train_val": len(split["row_ids"]) + len(split["problems"])}
        run.finish([REPORT], key_figure=key_figure, extra={"data_run": data_dir.name})
        result.done.append(run.run_id)
    report_path = require_contamination_pass(contract, data_dir.name)
    result.lines.append(f"contamination: pass for {data_dir.name}; {report_path}")
    return result


def check(contract: Contract, data_dir: Path, benchmarks: dict[str, tuple[Benchmark, list[dict]]]) -> dict:
    """The report: per benchmark, exact and n-gram overlap of its checked sources with it; train/validation overlap."""
    train, val = read_jsonl(data_dir / "train.jsonl"), read_jsonl(data_dir / "val.jsonl")
    per_benchmark = {name: check_benchmark(contract, train, val, benchmark, questions) for name, (benchmark, questions) in benchmarks.items()}
    split = train_val_overlap(train, val)
    failed = bool(any(b["exact_overlap"]["count"] for b in per_benchmark.values()) or split["row_ids"] or split["problems"])
    log.log(logging.ERROR if failed else logging.INFO, "contamination of %s: %s (%s; train/val row ids %d, problems %d)", data_dir.name,
            "fail" if failed else "pass", ", ".join(f"{name}: exact {b['exact_overlap']['count']}, {contract.contamination.ngram}-gram {b['ngram_overlap']['count']}"
                                                    for name, b in per_benchmark.items()), len(split["row_ids"]), len(split["problems"]))
    return {"status": "fail" if failed else "pass", "data_run": data_dir.name, "benchmarks": per_benchmark, "train_val_overlap": split,
            "fix": FIX if failed else None}


def check_benchmark(contract: Contract, train: list[dict], val: list[dict], benchmark: Benchmark, questions: list[dict]) -> dict:
    """Exact and n-gram overlap between one benchmark and the training rows of the sources checked against it."""
    checked_sources = set(benchmark.checked_sources)
    checked = [{**row, "split": side} for side, rows in (("train", train), ("val", val)) for row in rows if row["problem_source"] in checked_sources]
    exact = exact_overlap(checked, questions)
    near = ngram_overlap(checked, questions, contract.contamination.ngram)
    return {"source": benchmark.source, "split": benchmark.split, "format": benchmark.format, "questions": len(questions),
            "questions_sha256": questions_sha256(questions), "checked_sources": sorted(checked_sources), "rows_checked": len(checked),
            "exact_overlap": {"count": len(exact), "pairs": exact}, "ngram_overlap": {"n": contract.contamination.ngram, "count": len(near), "pairs": near}}


def exact_count(report: dict) -> int:
    """Exact benchmark overlaps in a report (one section per benchmark; reports of loraexp before 0.2 had one top-level section)."""
    if "benchmarks" in report:
        return sum(b["exact_overlap"]["count"] for b in report["benchmarks"].values())
    return report["exact_overlap"]["count"]


def exact_overlap(checked: list[dict], benchmark: list[dict]) -> list[dict]:
    """Training-side rows whose canonical problem equals a benchmark question's (all pairs)."""
    by_key: dict[str, list[dict]] = defaultdict(list)
    for question in benchmark:
        by_key[canonical_for_contamination(question["question"])].append(question)
    pairs = []
    for row in checked:
        for question in by_key.get(canonical_for_contamination(row["problem"]), ()):
            pairs.append({"row_id": row["row_id"], "split": row["split"], "benchmark_index": question["index"],
                          "problem": row["problem"], "benchmark_question": question["question"]})
    return pairs


def ngram_overlap(checked: list[dict], benchmark: list[dict], n: int) -> list[dict]:
    """(row, benchmark question) pairs sharing at least one word n-gram; texts shorter than n words have none."""
    owners: dict[tuple[str, ...], set[int]] = defaultdict(set)
    for question in benchmark:
        for gram in word_ngrams(question["question"], n):
            owners[gram].add(question["index"])
    pairs = []
    for row in tqdm(checked, desc=f"{n}-gram overlap", unit="row", disable=None):
        shared: Counter = Counter()
        for gram in word_ngrams(row["problem"], n):
            for index in owners.get(gram, ()):
                shared[index] += 1
        pairs += [{"row_id": row["row_id"], "split": row["split"], "benchmark_index": index, "shared_ngrams": count}
                  for index, count in sorted(shared.items())]
    return pairs


def word_ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    words = contamination_words(text)
    return {tuple(words[start:start + n]) for start in range(len(words) - n + 1)}


def train_val_overlap(train: list[dict], val: list[dict]) -> dict:
    """Row ids and canonical problems (NFKC, casefold, whitespace) present on both sides of the split."""
    row_ids = sorted({row["row_id"] for row in train} & {row["row_id"] for row in val})
    train_problems: dict[str, str] = {}
    for row in train:
        train_problems.setdefault(canonical_problem(row["problem"]), row["row_id"])
    problems = []
    for row in val:
        train_row_id = train_problems.get(canonical_problem(row["problem"]))
        if train_row_id is not None:
            problems.append({"train_row_id": train_row_id, "val_row_id": row["row_id"], "problem": row["problem"]})
    return {"row_ids": row_ids, "problems": problems}


def questions_sha256(benchmark: list[dict]) -> str:
    """Hash of the benchmark questions in order: says which benchmark the report checked."""
    digest = hashlib.sha256()
    for question in benchmark:
        digest.update(question["question"].encode("utf-8") + b"\n")
    return digest.hexdigest()


def require_contamination_pass(contract: Contract, data_run_id: str) -> Path:
    """The report.json of a passing, up-to-date contamination check of `data_run_id`; UserError otherwise.

    `train` calls this first: a failed, missing or stale check blocks training.
    """
    candidates = [info for info in list_runs(Path(contract.experiment.artifacts_dir))
                  if info.get("stage") == "contamination" and info.get("status") == "pass"
                  and data_run_id in (info.get("inputs") or {}) and info.get("contract_sha256") == contract.sha256]
    if not candidates:
        raise UserError(f"no finished contamination check of data run {data_run_id} under this contract; "
                        f"run `loraexp contamination --config <config> --data-run {data_run_id}` before train")
    latest = max(candidates, key=lambda info: info.get("finished_at", ""))
    run_dir = results_root(contract) / latest["run_id"]
    stale = stale_inputs(run_dir)
    if stale:
        raise UserError(f"contamination run {latest['run_id']} checked an older build of {data_run_id} ({stale[0]} changed); "
                        f"rerun `loraexp contamination --config <config> --data-run {data_run_id}`")
    report_path = run_dir / REPORT
    report = read_json(report_path)
    if report.get("status") != "pass":
        split = report["train_val_overlap"]
        raise UserError(f"contamination check failed ({exact_count(report)} exact benchmark overlaps, "
                        f"{len(split['row_ids']) + len(split['problems'])} train/val overlaps; see {report_path}): training is refused; {FIX}")
    return report_path
