"""`loraexp run`: the stage modules in order, each reused when finished, resumed when interrupted, stopping at the first failure.

build-data -> audit -> contamination -> render -> smoke -> lr-select -> train -> export -> eval -> figures

Each stage is called as `stages.<stage>.run(session)`, the same function its own command calls, so `run`
and the single commands can never disagree. Whether a stage did work is read from its `StageResult`.
"""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path
from types import ModuleType
from typing import Callable

from loraexp.console import write_crash_log
from loraexp.errors import UserError
from loraexp.session import Session

STAGE_NAMES = ("build-data", "audit", "contamination", "render", "smoke", "lr-select", "train", "export", "eval", "figures")


def stage_modules() -> dict[str, ModuleType]:
    """Stage name -> its module, in pipeline order (imported here: torch, tinker and matplotlib load only for a run)."""
    from loraexp.stages import (
        audit,
        build_data,
        contamination,
        eval,
        export,
        figures,
        lr_select,
        render,
        smoke,
        train,
    )

    modules = (build_data, audit, contamination, render, smoke, lr_select, train, export, eval, figures)
    return dict(zip(STAGE_NAMES, modules))


class StageFailed(Exception):
    """A stage failed; carries the stage name, the reason and the command that reruns just that stage."""

    def __init__(self, stage: str, reason: str, rerun: str):
        super().__init__(f"stage {stage} failed: {reason}\n  rerun just this stage: {rerun}")
        self.stage, self.reason, self.rerun = stage, reason, rerun


def stages_to_run(start: str | None, only: str | None) -> list[str]:
    for name in (start, only):
        if name is not None and name not in STAGE_NAMES:
            raise UserError(f"unknown stage {name!r}; stages in order: {', '.join(STAGE_NAMES)}")
    if only:
        return [only]
    return list(STAGE_NAMES[STAGE_NAMES.index(start):]) if start else list(STAGE_NAMES)


def run_pipeline(session: Session, start: str | None = None, only: str | None = None, report: Callable[[str], None] = print) -> list[str]:
    """Run the selected stages in order; return the names of the stages that did work."""
    modules, did_work = stage_modules(), []
    for stage in stages_to_run(start, only):
        started = time.perf_counter()
        report(f"▶ {stage}")
        rerun = f"loraexp {stage} --config {session.config}"
        try:
            result = modules[stage].run(session)
        except UserError as exc:
            raise StageFailed(stage, str(exc), rerun) from None
        except Exception as exc:  # an unexpected failure still names the stage and the rerun command
            raise StageFailed(stage, f"unexpected {type(exc).__name__}: {exc} (traceback in {write_crash_log()})", rerun) from None
        for line in result.lines:
            report(f"  {line}")
        if result.did_work:
            did_work.append(stage)
            runs = ", ".join(result.done[:4]) + (" ..." if len(result.done) > 4 else "")
            report(f"  {stage}: done in {time.perf_counter() - started:.1f} s ({len(result.done)} run(s): {runs})")
        else:
            report(f"  {stage}: already finished with unchanged inputs, skipped")
    if not did_work:
        report("nothing to do: every stage already finished under this contract with unchanged inputs")
    return did_work


def packaged_demo_config() -> Path:
    """The demo contract shipped inside the package (its decisions file beside it), usable from any directory."""
    return Path(str(resources.files("loraexp.resources").joinpath("configs").joinpath("demo.toml")))
