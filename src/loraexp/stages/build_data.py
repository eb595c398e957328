"""build-data: original-source rows -> strict gate + manual decisions -> grouped, stratified, seeded split.

Runbook step:
1. read the source, keeping only `data.keep_sources` rows (the problem_source column is read before any text);
2. gate every kept row; each rejection has a reason (missing/non-string/empty field, no box, box != expected
   answer, suspicious phrase, prompt debris, exact duplicate, unparseable line, manual reject);
3. apply the manual decisions file (its SHA-256 goes in the manifest);
4. split by canonical problem (NFKC, casefold, whitespace), stratified by problem_source, seeded;
5. write train.jsonl, val.jsonl, rejects.jsonl, then manifest.json last.

Reference run: train_1M, 29,468 original-source rows -> 28,166 pass the gate -> 25,348 train / 2,818 val.
"""

from __future__ import annotations

import logging
import random
from collections import Counter, defaultdict
from pathlib import Path

import orjson
from tqdm import tqdm

from loraexp.contracts import Contract, DataSection
from loraexp.data.sources import (
    SourceRow,
    TrainingSource,
    training_source,
)
from loraexp.data.text import canonical_problem_sha, first_phrase
from loraexp.errors import UserError
from loraexp.files import file_sha256, write_jsonl
from loraexp.scoring.answers import last_boxed, strict_equal
from loraexp.session import Session, StageResult

log = logging.getLogger(__name__)

REQUIRED_FIELDS = ("problem", "generated_solution", "expected_answer", "problem_source")
# a manual "keep" may overrule these content checks; never a broken row or an exact duplicate
OVERRULABLE = frozenset({"no_boxed", "boxed_mismatch", "suspicious_phrase", "prompt_debris"})
OUTPUTS = ("train.jsonl", "val.jsonl", "rejects.jsonl")


def run(session: Session, run_id: str | None = None) -> StageResult:
    """Build train/val/rejects from `data.source` under the contract's gate (reused while source and decisions are unchanged)."""
    data, result = session.contract.data, StageResult("build-data")
    decisions, decisions_sha = load_decisions(session.contract)
    source_fingerprint, load_source = training_source(session.contract)
    fingerprint = {"decisions_sha256": decisions_sha, "source_fingerprint": source_fingerprint}
    run = session.begin(result, run_id, fingerprint=fingerprint)
    if run is None:
        return result
    source = load_source()
    check_decisions_known(decisions, source, data)
    kept, rejects, manual = gate(source.rows, data, decisions)
    write_jsonl(run.path("rejects.jsonl"), rejects)
    if not kept:
        raise nothing_left(source, rejects, data)
    train, val = grouped_split(kept, data.val_fraction, data.split_seed)
    write_jsonl(run.path("train.jsonl"), train)
    write_jsonl(run.path("val.jsonl"), val)
    log.info(
        "%s: %d rows, %d original-source rows in, %d kept -> %d train / %d val; %d rejected (%s)",
        source.name, source.rows_total, len(source.rows), len(kept), len(train), len(val), len(rejects),
        ", ".join(f"{reason} {n}" for reason, n in Counter(r["reason"] for r in rejects).most_common()),
    )
    run.finish(
        OUTPUTS,
        key_figure={"rows_in": len(source.rows), "kept": len(kept), "train": len(train), "val": len(val), "rejected": len(rejects)},
        extra={
            "source": {"name": source.name, "rows_total": source.rows_total, "problem_source_counts": dict(source.source_counts)},
            "reject_counts": count_by_source_and_reason(rejects),
            "decisions_file": data.decisions_file,
            "manual_decisions_applied": dict(manual),
            "split": split_summary(train, val),
        },
    )
    result.finished(run.run_id, f"{run.run_id}: {len(source.rows)} rows in -> {len(kept)} kept -> {len(train)} train / {len(val)} val "
                                f"({len(rejects)} rejected, see rejects.jsonl) in {run.dir}")
    return result


def load_decisions(contract: Contract) -> tuple[dict[str, dict], str | None]:
    """The manual decisions {row_id: {decision, note}} and the file's SHA-256 (None when not configured)."""
    data = contract.data
    if data.decisions_file is None:
        return {}, None
    path = contract.resolve_path(data.decisions_file)
    if not path.is_file():
        where = "" if path.is_absolute() else f" (looked for from the current directory {Path.cwd()} and from the contract's folder)"
        raise UserError(f"data.decisions_file {path} not found{where}; create it (an empty file is fine) or remove decisions_file from [data]")
    decisions: dict[str, dict] = {}
    for number, line in enumerate(path.read_bytes().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise UserError(f"{where} is not valid JSON; each line must be {{\"row_id\": ..., \"decision\": \"keep\"|\"reject\", \"note\": ...}}") from None
        if not isinstance(entry, dict) or not isinstance(entry.get("row_id"), str) or entry.get("decision") not in ("keep", "reject"):
            raise UserError(f"{where}: needs a string row_id and decision \"keep\" or \"reject\" (got {line[:120].decode('utf-8', 'replace')})")
        if entry["row_id"] in decisions:
            raise UserError(f"{where}: row_id {entry['row_id']} has a second decision; keep one line per row_id")
        decisions[entry["row_id"]] = entry
    return decisions, file_sha256(path)


def check_decisions_known(decisions: dict[str, dict], source: TrainingSource, data: DataSection) -> None:
    """Refuse decisions about rows this source does not have: a stale or misdirected decisions file."""
    unknown = sorted(set(decisions) - {item.row_id for item in source.rows})
    if unknown:
        raise UserError(
            f"{data.decisions_file}: {len(unknown)} decision(s) name rows that are not among the kept-source rows of "
            f"{source.name} (first: {unknown[0]}); remove those lines or check data.source / data.keep_sources"
        )


def gate_reason(row: dict, data: DataSection) -> tuple[str, str] | None:
    """(reason, detail) for the first failed check of a parsed row, or None when it passes."""
    for name in REQUIRED_FIELDS:
        if row.get(name) is None:
            return "missing_field", name
        if not isinstance(row[name], str):
            return "non_string_field", f"{name} is {type(row[name]).__name__}"
        if not row[name].strip():
            return "empty_field", name
    boxed = last_boxed(row["generated_solution"])
    if boxed is None:
        return "no_boxed", "no well-formed \\boxed{...} in generated_solution"
    if not strict_equal(boxed, row["expected_answer"]):
        return "boxed_mismatch", f"last box {boxed!r} != expected_answer {row['expected_answer']!r}"
    text = row["problem"] + "\n" + row["generated_solution"]
    phrase = first_phrase(text, data.suspicious_phrases)
    if phrase:
        return "suspicious_phrase", phrase
    phrase = first_phrase(text, data.debris_phrases)
    if phrase:
        return "prompt_debris", phrase
    return None


def gate(items: list[SourceRow], data: DataSection, decisions: dict[str, dict]) -> tuple[list[dict], list[dict], Counter]:
    """Kept rows (output schema), reject records (row + reason) and the count of manual decisions applied."""
    kept, rejects, manual = [], [], Counter()
    seen_pairs: set[tuple[str, str]] = set()
    for item in tqdm(items, desc="gate", unit="row", disable=None):
        reason = (item.error, "unparseable line") if item.error else gate_reason(item.row, data)
        reason = apply_decision(item.row_id, reason, decisions.get(item.row_id), manual)
        if reason is None:
            pair = (item.row["problem"], item.row["generated_solution"])
            if pair in seen_pairs:
                reason = ("exact_duplicate", "same problem and generated_solution as an earlier row")
            seen_pairs.add(pair)
        if reason is None:
            kept.append(output_row(item))
        else:
            rejects.append(reject_record(item, *reason))
    return kept, rejects, manual


def apply_decision(row_id: str, reason: tuple[str, str] | None, decision: dict | None, manual: Counter) -> tuple[str, str] | None:
    """A manual reject rejects; a manual keep overrules a content check only (never a broken row)."""
    if decision is None:
        return reason
    note = decision.get("note") or ""
    if decision["decision"] == "reject":
        manual["reject"] += 1
        return reason or ("manual_reject", note)
    if reason is None:
        return None
    if reason[0] not in OVERRULABLE:
        raise UserError(f"decisions file keeps {row_id}, but that row is broken ({reason[0]}: {reason[1]}); a keep can only overrule {sorted(OVERRULABLE)}; remove that line")
    manual["keep"] += 1
    return None


def output_row(item: SourceRow) -> dict:
    """The schema every later stage reads: exactly these six keys."""
    row = item.row
    return {
        "row_id": item.row_id,
        "problem_source": row["problem_source"],
        "problem": row["problem"],
        "generated_solution": row["generated_solution"],
        "expected_answer": row["expected_answer"],
        "canonical_problem_sha": canonical_problem_sha(row["problem"]),
    }


def reject_record(item: SourceRow, reason: str, detail: str) -> dict:
    source = item.row.get("problem_source") if item.row is not None else None
    return {
        "row_id": item.row_id,
        "source": source if isinstance(source, str) else "unknown",
        "reason": reason,
        "detail": detail,
        "raw": item.row if item.row is not None else item.raw,
    }


def grouped_split(rows: list[dict], val_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Split by canonical problem group, per problem_source stratum, seeded; file order is kept on each side.

    A group's stratum is the source of its first row; round(val_fraction * groups) groups of each stratum
    go to validation, so no canonical problem is ever on both sides.
    """
    strata: dict[str, list[str]] = defaultdict(list)
    seen: set[str] = set()
    for row in rows:
        if row["canonical_problem_sha"] not in seen:
            seen.add(row["canonical_problem_sha"])
            strata[row["problem_source"]].append(row["canonical_problem_sha"])
    val_groups: set[str] = set()
    for stratum, groups in sorted(strata.items()):
        shuffled = sorted(groups)
        random.Random(f"{seed}:{stratum}").shuffle(shuffled)  # one stream per stratum: adding a source moves no other
        val_groups.update(shuffled[: round(val_fraction * len(shuffled))])
    train = [row for row in rows if row["canonical_problem_sha"] not in val_groups]
    val = [row for row in rows if row["canonical_problem_sha"] in val_groups]
    return train, val


def split_summary(train: list[dict], val: list[dict]) -> dict:
    """Rows and canonical-problem groups per side and per source (for the manifest)."""
    summary = {}
    for side, rows in (("train", train), ("val", val)):
        summary[side] = {
            "rows": len(rows),
            "groups": len({row["canonical_problem_sha"] for row in rows}),
            "rows_by_source": dict(Counter(row["problem_source"] for row in rows)),
        }
    return summary


def count_by_source_and_reason(rejects: list[dict]) -> dict[str, dict[str, int]]:
    counts: dict[str, Counter] = defaultdict(Counter)
    for reject in rejects:
        counts[reject["source"]][reject["reason"]] += 1
    return {source: dict(reasons) for source, reasons in sorted(counts.items())}


def nothing_left(source: TrainingSource, rejects: list[dict], data: DataSection) -> UserError:
    """The one-line error for an empty dataset, naming the filter or gate that removed everything."""
    if not source.rows:
        found = ", ".join(f"{name} ({count})" for name, count in source.source_counts.most_common(6)) or "no rows at all"
        return UserError(f"no row of {source.name} has problem_source in data.keep_sources {list(data.keep_sources)} (found: {found}); fix data.keep_sources or data.source")
    reasons = ", ".join(f"{reason}: {count}" for reason, count in Counter(r["reason"] for r in rejects).most_common())
    return UserError(f"the gate removed all {len(rejects)} rows of {source.name} ({reasons}); see rejects.jsonl in the run dir and fix data.source, the phrase lists or the decisions file")
