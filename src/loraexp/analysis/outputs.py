"""comparison.json, the figures (each PNG + PDF + data.csv + provenance.json) and report.md, written into one folder.

Shared by the figures stage (a run dir, inputs = the experiment's runs) and `loraexp compare` (any folder,
inputs = prediction files made anywhere).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from loraexp.analysis.comparison import compare, disagreement_examples
from loraexp.analysis.evidence import Evidence
from loraexp.analysis.plots import FIGURES, FigureSpec, save_figure
from loraexp.analysis.report import captions, render_report
from loraexp.artifacts import git_state
from loraexp.files import file_sha256, now_utc, write_json_atomic, write_text_atomic


def write_analysis(folder: Path, evidence: Evidence) -> tuple[dict, list[str], dict[Path, str]]:
    """Compute every number, draw every figure the evidence allows, write the report;
    (comparison, files written (folder-relative), the SHA-256 of every input file)."""
    digests = {path: file_sha256(path) for path in evidence.inputs}  # hashed once; each figure's provenance names its share
    comparison = compare(evidence)
    write_json_atomic(folder / "comparison.json", comparison)
    outputs, drawn = ["comparison.json"], []
    stamp = {"contract_sha256": comparison.get("contract_sha256"), "git": git_state()}
    caption_for = captions(comparison)
    several = len(evidence.benchmarks) > 1
    for spec in FIGURES:
        for benchmark in ([b.name for b in evidence.benchmarks] if spec.per_benchmark else [None]):
            made = spec.draw(comparison, evidence, benchmark)
            if made is None:
                continue
            name = f"{spec.name}-{benchmark}" if benchmark and several else spec.name
            sources = {f"{path.parent.name}/{path.name}": digests[path] for path in source_files(evidence, spec, benchmark)}
            outputs += write_figure(folder / name, *made, sources, stamp)
            caption = caption_for[spec.name] + (f" Benchmark: {benchmark}." if benchmark else "")
            drawn.append((name, caption))
    examples = [example for benchmark in evidence.benchmarks for example in disagreement_examples(benchmark, evidence.comparisons)]
    write_text_atomic(folder / "report.md", render_report(comparison, drawn, examples))
    outputs.append("report.md")
    return comparison, outputs, digests


def source_files(evidence: Evidence, spec: FigureSpec, benchmark: str | None) -> list[Path]:
    """The files a figure was drawn from: the eval runs of its benchmark, the train, lr-select, export runs it reads."""
    if not evidence.from_runs:
        return list(evidence.inputs)
    runs: set[str] = set()
    if "eval" in spec.sources:
        runs |= {model.label for scores in evidence.benchmarks if benchmark in (None, scores.name) for model in scores.all_models()}
    if "train" in spec.sources:
        runs |= {train.dir.name for by_seed in evidence.trains.values() for train in by_seed.values()}
    if "lr-select" in spec.sources:
        runs.add(evidence.lr_select_dir.name)
    if "export" in spec.sources:
        runs.add(evidence.export_dir.name)
    return [path for path in evidence.inputs if path.parent.name in runs]


def write_figure(folder: Path, figure: Figure, data: pd.DataFrame, inputs: dict[str, str], stamp: dict) -> list[str]:
    """PNG + PDF + data.csv + provenance.json (`inputs`: run/file -> SHA-256, git commit) in `folder`; returns their names relative to its parent."""
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"{folder.name}.png", f"{folder.name}.pdf", "data.csv", "provenance.json"]
    save_figure(figure, folder / names[0], folder / names[1])
    data.to_csv(folder / "data.csv", index=False)
    provenance = {"figure": folder.name, **stamp, "created_at": now_utc(),
                  "inputs": inputs}
    write_json_atomic(folder / "provenance.json", provenance)
    return [f"{folder.name}/{name}" for name in names]
