"""`loraexp compare`: the figures stage's analysis, report and figures over prediction files made anywhere.

    loraexp compare --baseline base.jsonl --run attention_only:0:a0.jsonl --run all_layer:0:b0.jsonl ... --out DIR [--config C]

Reads each file by content (loraexp predictions, the reference experiment's released generations, lm-eval
samples), re-scores every generation with both scorers, compares only the questions present in every file,
and writes comparison.json, report.md, the figures and inputs.json (each file's SHA-256 and format) into
DIR. Without --config the decision settings are the reference contract's (the [decision] defaults).
"""

from __future__ import annotations

from pathlib import Path

from loraexp.analysis.outputs import write_analysis
from loraexp.analysis.predictions import load_prediction_evidence
from loraexp.contracts import Contract
from loraexp.errors import UserError
from loraexp.files import now_utc, write_json_atomic
from loraexp.session import StageResult


def run(baseline: Path, runs: list[str], out: Path, contract: Contract | None = None, benchmark: str | None = None) -> StageResult:
    """Analyse the prediction files into `out` (a new folder, or one an earlier compare wrote)."""
    if out.exists() and any(out.iterdir()) and not (out / "comparison.json").exists():
        raise UserError(f"--out {out} already holds other files; give a new folder (compare writes comparison.json, report.md and figures there)")
    evidence = load_prediction_evidence(baseline, runs, contract, benchmark)
    out.mkdir(parents=True, exist_ok=True)
    comparison, outputs, digests = write_analysis(out, evidence)
    write_json_atomic(out / "inputs.json", {"files": {str(path): sha for path, sha in digests.items()}, "formats": {score.label: score.summary["source_format"]
                                                                                         for bench in evidence.benchmarks for score in bench.all_models()},
                                            "contract_sha256": contract.sha256 if contract else None, "created_at": now_utc(), "outputs": outputs})
    result = StageResult("compare")
    for pair in comparison["benchmarks"][comparison["primary_benchmark"]]["comparisons"]:
        result.lines.append(f"{pair['a']} - {pair['b']}: {pair['gap_points']:+.2f} points, verdict {pair['verdict']} "
                            f"(item-level p {pair['item_level']['sign_flip']['p']:.3g}, Holm {pair['p_adjusted']:.3g})")
    result.lines += comparison["notes"] + [f"report: {out / 'report.md'}"]
    return result
