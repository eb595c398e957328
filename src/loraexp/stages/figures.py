"""figures: read the eval, train, lr-select and export runs; write comparison.json, fig_01..fig_08 and report.md.

Runbook step: after every eval run has finished, `loraexp figures --config <file>`. Refuses to mix
runs scored under different evaluation contracts; a missing input run names the stage to run.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from loraexp.analysis.comparison import (
    Inputs,
    all_evals,
    compare,
    disagreement_examples,
    load_inputs,
)
from loraexp.analysis.plots import FIGURES, save_figure
from loraexp.analysis.report import render_report
from loraexp.artifacts import Run, git_state
from loraexp.contracts import Contract
from loraexp.files import file_sha256, now_utc, write_json_atomic, write_text_atomic
from loraexp.session import Session, StageResult

log = logging.getLogger(__name__)

# Which input runs each figure is drawn from (its provenance.json hashes their files).
FIGURE_SOURCES = {
    "fig_01_comparison": ("eval",), "fig_02_costs": ("train", "eval", "export"), "fig_03_accuracy": ("eval",),
    "fig_04_disagreement": ("eval",), "fig_05_validation_nll": ("train",), "fig_06_lr_selection": ("lr-select",),
    "fig_07_disagreement_examples": ("eval",), "fig_08_throughput": ("lr-select",),
}


def run(session: Session, run_id: str | None = None) -> StageResult:
    """Load the finished input runs, compute every number, draw the eight figures, write the report."""
    result = StageResult("figures")
    inputs = load_inputs(session)
    run = session.begin(result, run_id, inputs=[session.results / name for name in inputs.files_read])
    if run is None:
        return result
    paired = draw_all(session.contract, run, inputs)["comparison"]
    result.finished(run.run_id, f"{run.run_id}: {paired['decision']} (gap {paired['gap_points']:+.2f} points, pooled McNemar p={paired['pooled']['mcnemar_p']:.3g}); "
                                f"report at {run.path('report.md')}")
    return result


def draw_all(contract: Contract, run: Run, inputs: Inputs) -> dict:
    """comparison.json, fig_01..fig_08 and report.md in the run dir, then the manifest; returns the comparison."""
    for run_name, files in inputs.files_read.items():
        run.add_input(run.dir.parent / run_name, files)
    comparison = compare(contract, inputs)
    write_json_atomic(run.path("comparison.json"), comparison)
    outputs = ["comparison.json"]
    stamp = {"contract_sha256": contract.sha256, "git": git_state()}
    for name, draw in FIGURES:
        outputs += write_figure(run.dir / name, *draw(comparison, inputs), source_files(inputs, FIGURE_SOURCES[name]), stamp)
    report = render_report(comparison, contract, [name for name, _ in FIGURES], disagreement_examples(inputs))
    write_text_atomic(run.path("report.md"), report)
    outputs.append("report.md")
    paired = comparison["comparison"]
    log.info("%s: %s (gap %+.2f points, pooled McNemar p=%.3g)", run.run_id, paired["decision"], paired["gap_points"], paired["pooled"]["mcnemar_p"])
    run.finish(outputs, key_figure={"decision": paired["decision"], "gap_points": paired["gap_points"], "pooled_p": paired["pooled"]["mcnemar_p"]})
    return comparison


def source_files(inputs: Inputs, kinds: tuple[str, ...]) -> list[Path]:
    """The files read from the input runs of the given stages."""
    dirs: list[Path] = []
    if "eval" in kinds:
        dirs += [evaluation.dir for evaluation in all_evals(inputs)]
    if "train" in kinds:
        dirs += [train.dir for by_seed in inputs.trains.values() for train in by_seed.values()]
    if "lr-select" in kinds:
        dirs.append(inputs.lr_select_dir)
    if "export" in kinds:
        dirs.append(inputs.export_dir)
    return [run_dir / name for run_dir in dirs for name in inputs.files_read.get(run_dir.name, [])]


def write_figure(folder: Path, figure: Figure, data: pd.DataFrame, inputs: list[Path], stamp: dict) -> list[str]:
    """PNG + PDF + data.csv + provenance.json (input SHA-256s, git commit) in `folder`; returns their run-relative names."""
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"{folder.name}.png", f"{folder.name}.pdf", "data.csv", "provenance.json"]
    save_figure(figure, folder / names[0], folder / names[1])
    data.to_csv(folder / "data.csv", index=False)
    provenance = {"figure": folder.name, **stamp, "created_at": now_utc(),
                  "inputs": {f"{path.parent.name}/{path.name}": file_sha256(path) for path in inputs}}
    write_json_atomic(folder / "provenance.json", provenance)
    return [f"{folder.name}/{name}" for name in names]
