"""`loraexp run`: the whole DAG in order, skipping finished stages, stopping at the first failure.

build-data -> audit -> contamination -> render -> smoke -> lr-select -> train -> export -> eval -> figures

Each stage is the same function its own CLI command calls, so `run` and the single commands can
never disagree. A stage whose runs finished under the same contract with unchanged inputs is
skipped; one whose inputs changed (an upstream stage reran) reruns.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

import orjson

from loraexp.artifacts import MANIFEST, write_crash_log
from loraexp.contracts import Contract
from loraexp.errors import UserError

log = logging.getLogger(__name__)

STAGES = ("build-data", "audit", "contamination", "render", "smoke", "lr-select", "train", "export", "eval", "figures")


class StageFailed(Exception):
    """A stage failed; carries the stage name, the reason and the command that reruns just that stage."""

    def __init__(self, stage: str, reason: str, rerun: str):
        super().__init__(f"stage {stage} failed: {reason}\n  rerun just this stage: {rerun}")
        self.stage, self.reason, self.rerun = stage, reason, rerun


def manifests_snapshot(contract: Contract) -> dict[str, str]:
    """finished_at of every manifest under the results dir (to tell a skipped stage from one that ran)."""
    results = Path(contract.experiment.artifacts_dir) / "results"
    snapshot = {}
    for path in results.glob(f"*/{MANIFEST}"):
        try:
            snapshot[path.parent.name] = orjson.loads(path.read_bytes()).get("finished_at", "")
        except orjson.JSONDecodeError:
            continue
    return snapshot


def stages_to_run(start: str | None, only: str | None) -> list[str]:
    for name in (start, only):
        if name is not None and name not in STAGES:
            raise UserError(f"unknown stage {name!r}; stages in order: {', '.join(STAGES)}")
    if only:
        return [only]
    return list(STAGES[STAGES.index(start):]) if start else list(STAGES)


def run_pipeline(contract: Contract, config: Path, commands: dict[str, Callable[..., None]], start: str | None = None, only: str | None = None, report: Callable[[str], None] = print) -> list[str]:
    """Run the selected stages in order; return the names of the stages that did work."""
    did_work = []
    for stage in stages_to_run(start, only):
        before = manifests_snapshot(contract)
        started = time.perf_counter()
        report(f"▶ {stage}")
        try:
            commands[stage](config=config)
        except UserError as exc:
            raise StageFailed(stage, str(exc), f"loraexp {stage} --config {config}") from None
        except Exception as exc:  # an unexpected failure still names the stage and the rerun command
            reason = f"unexpected {type(exc).__name__}: {exc} (traceback in {write_crash_log()})"
            raise StageFailed(stage, reason, f"loraexp {stage} --config {config}") from None
        after = manifests_snapshot(contract)
        changed = sorted(run_id for run_id, finished in after.items() if before.get(run_id) != finished)
        if changed:
            did_work.append(stage)
            report(f"  {stage}: done in {time.perf_counter() - started:.1f} s ({len(changed)} run(s): {', '.join(changed[:4])}{' ...' if len(changed) > 4 else ''})")
        else:
            report(f"  {stage}: already finished with unchanged inputs, skipped")
    if not did_work:
        report("nothing to do: every stage already finished under this contract with unchanged inputs")
    return did_work
