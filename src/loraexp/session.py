"""What every stage runs with (`Session`) and what it hands back (`StageResult`).

A session is one command's view of an experiment: the frozen contract, the policy for run dirs that
already exist (`--if-exists`, `--override`), and how to reach the Tinker-shaped service. Stages take
it as their first argument, so `loraexp <stage>`, `loraexp run` and a test all call the same
`stages.<stage>.run(session, ...)`; a test hands in its own service through `connect`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from loraexp.artifacts import (
    IfExists,
    Run,
    find_finished_run,
    open_run,
    results_root,
    run_id_for,
)
from loraexp.contracts import Contract

if TYPE_CHECKING:
    from loraexp.service import Service


def connect_to_contract_service(contract: Contract) -> "Service":
    from loraexp.service import connect

    return connect(contract)


@dataclass(frozen=True)
class Session:
    contract: Contract
    config: Path | None = None  # the contract's file, for the rerun commands in error messages
    if_exists: IfExists = "resume"
    override: bool = False  # mix runs made under another contract (recorded as protocol_mode: override)
    connect: Callable[[Contract], "Service"] = connect_to_contract_service
    progress: bool = True  # tqdm bars on long loops

    @functools.cached_property
    def service(self) -> "Service":
        """The service, connected on first use: a stage with nothing left to do never connects."""
        return self.connect(self.contract)

    @property
    def results(self) -> Path:
        return results_root(self.contract)

    def run_id(self, stage: str, *parts: str | int) -> str:
        return run_id_for(self.contract, stage, *parts)

    def open_run(self, stage: str, run_id: str, inputs: Iterable[Path] = (), fingerprint: dict[str, Any] | None = None) -> Run | None:
        """A run dir to write, or None when its finished run stands (see `artifacts.open_run`: the one rule)."""
        return open_run(self.contract, stage, run_id, self.if_exists, self.override, inputs, fingerprint)

    def begin(self, result: "StageResult", run_id: str | None = None, inputs: Iterable[Path] = (), fingerprint: dict[str, Any] | None = None) -> Run | None:
        """Open the stage's run (default id `<experiment>-<stage>`); None, recorded in `result` as reused, when it stands."""
        run_id = run_id or self.run_id(result.stage)
        run = self.open_run(result.stage, run_id, inputs, fingerprint)
        if run is None:
            result.skipped(run_id)
        return run

    def finished_run(self, stage: str, run_id: str | None = None, *parts: str | int) -> Path:
        """A finished input run: `run_id`, or the stage's default id (`<experiment>-<stage>[-<part>...]`)."""
        return find_finished_run(self.contract, run_id or self.run_id(stage, *parts), stage, self.override)


@dataclass
class StageResult:
    """The runs a stage call finished or found finished, and the lines its command prints."""

    stage: str
    done: list[str] = field(default_factory=list)  # runs this call wrote to the end
    reused: list[str] = field(default_factory=list)  # runs already finished with unchanged inputs
    lines: list[str] = field(default_factory=list)

    @property
    def did_work(self) -> bool:
        return bool(self.done)

    def finished(self, run_id: str, line: str) -> None:
        self.done.append(run_id)
        self.lines.append(line)

    def skipped(self, run_id: str) -> None:
        self.reused.append(run_id)
