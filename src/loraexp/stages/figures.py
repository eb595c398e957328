"""figures: read the eval, train, lr-select and export runs; write comparison.json, the figures and report.md.

Runbook step: after every eval run has finished, `loraexp figures --config <file>`. Refuses to mix runs
scored under different evaluation contracts; a missing input run names the stage to run. The numbers are
those of `loraexp compare` (analysis/comparison.py); here the report also knows the training runs, the
LR selection, the costs and the adapter sizes.
"""

from __future__ import annotations

import logging

from loraexp.analysis.evidence import load_run_evidence
from loraexp.analysis.outputs import write_analysis
from loraexp.session import Session, StageResult

log = logging.getLogger(__name__)


def run(session: Session, run_id: str | None = None) -> StageResult:
    """Load the finished input runs, compute every number, draw the figures, write the report."""
    result = StageResult("figures")
    evidence = load_run_evidence(session)
    run = session.begin(result, run_id, inputs=[session.results / name for name in evidence.files_read])
    if run is None:
        return result
    for run_name, files in evidence.files_read.items():
        run.add_input(session.results / run_name, files)
    comparison, outputs, _ = write_analysis(run.dir, evidence)
    primary = comparison["benchmarks"][comparison["primary_benchmark"]]["comparisons"]
    key_figure = {f"{p['a']}-{p['b']}": f"{p['gap_points']:+.2f} pts, {p['verdict']}" for p in primary}
    run.finish(outputs, key_figure=key_figure)
    for pair in primary:
        leader = pair["rule"]["outcome"].removeprefix("winner: ")
        rule = "inconclusive" if leader == "inconclusive" else f"{leader} ahead (point estimate)"
        line = f"{pair['a']} - {pair['b']}: {pair['gap_points']:+.2f} points; declared rule: {rule}; verdict: {pair['verdict']}"
        log.info("%s: %s", run.run_id, line)
        result.lines.append(line)
    result.finished(run.run_id, f"report at {run.path('report.md')}")
    return result
