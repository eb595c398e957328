"""`loraexp compare`: prediction files made anywhere, read by content, re-scored, matched by benchmark index.

Three formats, recognised from the rows themselves:
- loraexp `predictions.jsonl` (`example_id`, `benchmark_index`, `generated_text`, `reference_answer`, ...);
- the reference experiment's released generations (`benchmark_index`, `generated_text`, `reference_answer`,
  `correct`, `stop_reason`; one object per line);
- lm-evaluation-harness `samples_*.jsonl` (`doc_id`, `resps` / `filtered_resps`, `target`, `doc`).
Every generation is scored again with both loraexp scorers (a file's own verdict is never trusted; where it
disagrees with the strict scorer the count and the first examples are reported). Only questions present,
with the same reference, in every file are compared; the rest are counted with the reason they were dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import orjson

from loraexp.analysis.evidence import BenchmarkEvidence, Evidence, ModelScores
from loraexp.contracts import Contract, DecisionSection
from loraexp.errors import UserError
from loraexp.scoring.answers import gsm8k_reference
from loraexp.scoring.scorers import scorer_identity, score_lenient, score_strict

DISAGREEMENT_EXAMPLES = 5


@dataclass
class PredictionFile:
    condition: str  # "baseline" or a condition name
    seed: int | None
    path: Path
    format: str = ""
    rows: dict[int, dict] | None = None  # benchmark index -> normalised row
    own_verdicts: dict[int, bool] | None = None  # the file's own `correct` (or lm-eval exact_match), where it has one


def parse_run(spec: str) -> tuple[str, int, Path]:
    """CONDITION:SEED:PATH -> (condition, seed, path)."""
    parts = spec.split(":", 2)
    if len(parts) != 3 or not parts[0] or not parts[1].lstrip("-").isdigit():
        raise UserError(f"--run {spec!r} must be CONDITION:SEED:PATH, e.g. --run all_layer:0:preds/all_layer_seed0.jsonl")
    return parts[0], int(parts[1]), Path(parts[2])


def read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        raise UserError(f"prediction file not found: {path}")
    rows = []
    for number, line in enumerate(path.read_bytes().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise UserError(f"{path}:{number} is not valid JSON; compare reads JSON Lines (one object per line)") from None
        if not isinstance(row, dict):
            raise UserError(f"{path}:{number} is not a JSON object")
        rows.append(row)
    if not rows:
        raise UserError(f"{path} has no rows")
    return rows


def detect_format(rows: list[dict], path: Path) -> str:
    """Which of the three formats a file is, from its first row's fields."""
    first = rows[0]
    if "doc_id" in first and ("resps" in first or "filtered_resps" in first):
        return "lm-eval samples"
    if {"benchmark_index", "generated_text", "reference_answer"} <= first.keys():
        return "loraexp predictions" if "example_id" in first else "released generations"
    raise UserError(f"{path}: unknown prediction format (fields {sorted(first)[:8]}); compare reads loraexp predictions.jsonl, "
                    "released generations (benchmark_index, generated_text, reference_answer, correct, stop_reason) or lm-eval samples_*.jsonl")


def _reference(value: object, benchmark_format: str) -> str:
    text = str(value[0] if isinstance(value, list) and value else value).strip()
    if benchmark_format == "gsm8k" and "####" in text:
        return gsm8k_reference(text) or text
    return text


def normalise(row: dict, file_format: str, benchmark_format: str) -> tuple[int, dict, bool | None]:
    """(benchmark index, {question, reference_answer, generated_text, stop_reason}, the file's own verdict or None)."""
    if file_format == "lm-eval samples":
        responses = row.get("resps") or []
        text = responses[0][0] if responses and isinstance(responses[0], list) and responses[0] else (responses[0] if responses else None)
        if text is None:
            filtered = row.get("filtered_resps") or [""]
            text = filtered[0] if not isinstance(filtered[0], list) else filtered[0][0]
        doc = row.get("doc") or {}
        own = row.get("exact_match", row.get("acc"))
        return int(row["doc_id"]), {"question": str(doc.get("question") or doc.get("problem") or ""), "reference_answer": _reference(row.get("target", ""), benchmark_format),
                                    "generated_text": str(text), "stop_reason": None}, (None if own is None else bool(own))
    own = row.get("correct")
    return int(row["benchmark_index"]), {"question": str(row.get("question", "")), "reference_answer": _reference(row["reference_answer"], benchmark_format),
                                         "generated_text": str(row["generated_text"]), "stop_reason": row.get("stop_reason")}, (None if own is None else bool(own))


def load_file(prediction: PredictionFile, benchmark_format: str) -> None:
    rows = read_rows(prediction.path)
    prediction.format = detect_format(rows, prediction.path)
    prediction.rows, prediction.own_verdicts = {}, {}
    for row in rows:
        try:
            index, normalised, own = normalise(row, prediction.format, benchmark_format)
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{prediction.path}: a {prediction.format} row lacks {exc}; every row needs its index, generation and reference") from None
        if index in prediction.rows:
            raise UserError(f"{prediction.path}: benchmark index {index} appears twice; one generation per question and file")
        prediction.rows[index] = normalised
        if own is not None:
            prediction.own_verdicts[index] = own


def scored(prediction: PredictionFile, indices: list[int]) -> ModelScores:
    """The file's generations on `indices`, scored by loraexp's strict and lenient scorers."""
    rows = []
    for position, index in enumerate(indices):
        row = prediction.rows[index]
        strict = score_strict(row["generated_text"], row["reference_answer"])
        rows.append({"example_id": f"q{index:05d}", "benchmark_index": index, "position": position, "question": row["question"],
                     "reference_answer": row["reference_answer"], "generated_text": row["generated_text"], "extracted": strict["extracted"],
                     "correct": strict["correct"], "lenient_correct": score_lenient(row["generated_text"], row["reference_answer"]),
                     "stop_reason": row["stop_reason"]})
    label = str(prediction.path)
    return ModelScores(label, prediction.condition, prediction.seed, rows, {"source_format": prediction.format})


def common_items(files: list[PredictionFile]) -> tuple[list[int], list[str]]:
    """Indices present in every file with one reference; and a note per reason anything was dropped."""
    every = sorted(set.union(*(set(f.rows) for f in files)))
    present = [index for index in every if all(index in f.rows for f in files)]
    missing = len(every) - len(present)
    agreeing = [index for index in present if len({f.rows[index]["reference_answer"] for f in files}) == 1]
    notes = [f"{len(agreeing)} questions are compared: present, with one reference answer, in all {len(files)} files."]
    if missing:
        counts = {str(f.path): len(set(every) - set(f.rows)) for f in files if len(set(every) - set(f.rows))}
        notes.append(f"{missing} questions dropped: missing from at least one file ({'; '.join(f'{path} lacks {n}' for path, n in counts.items())}).")
    if len(present) != len(agreeing):
        notes.append(f"{len(present) - len(agreeing)} questions dropped: the files give different reference answers for them.")
    if not agreeing:
        raise UserError("no question is present with the same reference answer in every prediction file; are they from one benchmark?")
    return agreeing, notes


def verdict_disagreements(prediction: PredictionFile, scores: ModelScores) -> str | None:
    """Where the file's own `correct` disagrees with loraexp's strict verdict: the count and the first examples."""
    differing = [row for row in scores.rows if row["benchmark_index"] in prediction.own_verdicts
                 and prediction.own_verdicts[row["benchmark_index"]] != row["correct"]]
    if not prediction.own_verdicts:
        return None
    examples = "; ".join(f"index {row['benchmark_index']}: file says {prediction.own_verdicts[row['benchmark_index']]}, strict says {row['correct']} "
                         f"(extracted {row['extracted']!r}, reference {row['reference_answer']!r})" for row in differing[:DISAGREEMENT_EXAMPLES])
    checked = sum(row["benchmark_index"] in prediction.own_verdicts for row in scores.rows)
    return (f"{prediction.path} ({prediction.format}): its own verdict disagrees with the strict re-score on {len(differing)} of {checked} questions"
            + (f" (first: {examples})." if differing else "."))


def load_prediction_evidence(baseline: Path, runs: list[str], contract: Contract | None, benchmark_name: str | None = None) -> Evidence:
    """Evidence for `loraexp compare`: one benchmark, the baseline and every CONDITION:SEED:PATH, re-scored and matched."""
    spec = contract.benchmark_specs[0] if contract else None
    benchmark_format = spec.format if spec else "gsm8k"
    files = [PredictionFile("baseline", None, baseline)] + [PredictionFile(*parse_run(run)) for run in runs]
    seen = [(f.condition, f.seed) for f in files[1:]]
    if len(set(seen)) != len(seen):
        raise UserError("each --run CONDITION:SEED must appear once")
    conditions = list(dict.fromkeys(condition for condition, _ in seen))
    if not conditions:
        raise UserError("give at least one --run CONDITION:SEED:PATH beside --baseline")
    if "baseline" in conditions:
        raise UserError("'baseline' is the --baseline file's name; call the runs' conditions something else")
    for prediction in files:
        load_file(prediction, benchmark_format)
    indices, notes = common_items(files)
    all_scores = [scored(prediction, indices) for prediction in files]
    notes += [line for prediction, scores in zip(files, all_scores) if (line := verdict_disagreements(prediction, scores))]
    runs_by_condition: dict[str, dict[int, ModelScores]] = {name: {} for name in conditions}
    for scores in all_scores[1:]:
        runs_by_condition[scores.condition][scores.seed] = scores
    name = benchmark_name or (spec.name if spec else "benchmark")
    benchmark = BenchmarkEvidence(name, True, {"source": "prediction files", "split": None, "format": benchmark_format}, all_scores[0], runs_by_condition)
    comparisons = [pair for pair in (contract.comparisons if contract else []) if set(pair) <= set(conditions)]
    comparisons = comparisons or [(a, b) for i, a in enumerate(conditions) for b in conditions[i + 1:]]
    if not comparisons:
        raise UserError("compare needs at least two conditions among the --run files (the baseline is compared against, not with)")
    setting = prediction_setting(contract, conditions, runs_by_condition)
    evidence = Evidence(contract.experiment.name if contract else "compare", conditions, comparisons,
                        contract.decision if contract else DecisionSection(), [benchmark], setting, contract, notes=notes)
    evidence.inputs = [prediction.path for prediction in files]
    return evidence


def prediction_setting(contract: Contract | None, conditions: list[str], runs: dict[str, dict[int, ModelScores]]) -> dict:
    """What is known of predictions made elsewhere: the contract's declared model, ranks and pinned LRs, or nothing."""
    setting: dict = {"seeds": {name: sorted(runs[name]) for name in conditions}, "scorers": scorer_identity(),
                     "decoding": {}, "checkpoint_selection_rule": None}
    if contract is None:
        return setting
    known = {c.name: c for c in contract.lora.conditions}
    setting.update(base_model=contract.experiment.base_model, backend=contract.experiment.backend,
                   ranks={name: contract.rank_of(known[name]) for name in conditions if name in known} or None,
                   decoding={"temperature": contract.eval.temperature, "max_new_tokens": contract.eval.max_new_tokens,
                             "enable_thinking": contract.render.enable_thinking})
    rates = {name: known[name].learning_rate or contract.train.learning_rate for name in conditions if name in known}
    if rates and all(rates.values()):
        setting["learning_rates"] = {name: {"learning_rate": lr, "batch_size": contract.train.batch_size, "source": "pinned in the contract"}
                                     for name, lr in rates.items()}
    return setting
