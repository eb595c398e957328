"""What every stage runs with (`Session`) and what it hands back (`StageResult`).

A session is one command's view of an experiment: the frozen contract, the policy for run dirs that
already exist (`--if-exists`, `--override`), and how to reach the Tinker-shaped service. Stages take
it as their first argument, so `loraexp <stage>`, `loraexp run` and a test all call the same
`stages.<stage>.run(session, ...)`; a test hands in its own service through `connect`. A stage that
talks to the service asks `service_for(stage, run)`: the local backend's memory plan, then the
capability probe, each once per command.
"""

from __future__ import annotations

import functools
import importlib.metadata
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from loraexp.artifacts import (
    IfExists,
    Run,
    cache_root,
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

    probes: dict = field(default_factory=dict, compare=False, repr=False)  # stage -> its capability probe (once per command)
    memory_plans: dict = field(default_factory=dict, compare=False, repr=False)  # stage -> the local backend's memory plan

    @functools.cached_property
    def service(self) -> "Service":
        """The service, connected on first use: a stage with nothing left to do never connects."""
        return self.connect(self.contract)

    def service_for(self, stage: str, run: Run, render_dir: Path | None = None) -> "Service":
        """The service tagged for `run`, checked by the capability probe for every call `stage` needs (smoke probes afresh;
        later stages reuse a recent probe of the same endpoint; the local backend's memory plan first, at `render_dir`'s
        p95 row length); refuses in one line before any paid work when one is missing. Records in `run`'s manifest what
        the service was."""
        from loraexp.service.probe import probe_service, refuse_missing

        if stage not in self.probes:
            if self.contract.experiment.backend == "local":
                self.memory_plan(stage, render_dir)  # before the probe loads any model
            result = probe_service(self.service, self.contract, fresh=stage == "smoke")
            refuse_missing(result, stage)
            self.probes[stage] = result
        run.facts["service"] = self._service_facts(stage)
        return self.service.tagged(stage, run.run_id)

    @functools.cached_property
    def base_model_source(self) -> str:
        """What from_pretrained reads for experiment.base_model (the offline demo base is built once under the cache)."""
        from loraexp.service import base_model_resolver

        return base_model_resolver(cache_root(self.contract))(self.contract.experiment.base_model)

    def memory_plan(self, stage: str, render_dir: Path | None) -> dict:
        """The local backend's memory plan for `stage` (training at `render_dir`'s p95 row length); refuses a plan that does not fit."""
        from loraexp.files import read_json
        from loraexp.service import runtime_of
        from loraexp.service.memory import check_memory

        stats = render_dir / "stats.json" if render_dir else None
        p95 = int(read_json(stats)["splits"]["train"]["tokens"]["p95"]) if stats and stats.exists() else None  # None: no training plan
        plan = check_memory(self.contract, self.base_model_source, runtime_of(self.contract), stage, p95)
        self.memory_plans[stage] = plan
        return plan

    def _service_facts(self, stage: str) -> dict:
        """What every manifest of a service stage records: backend, endpoint host (never a key), SDK, what the server reported."""
        from loraexp.service.probe import endpoint_of

        probe = self.probes.get(stage)
        endpoint = endpoint_of(self.contract)
        parsed = urllib.parse.urlparse(endpoint)
        host = f"{parsed.scheme}://{parsed.hostname}" + (f":{parsed.port}" if parsed.port else "") if parsed.hostname else endpoint
        return {"backend": self.contract.experiment.backend, "endpoint": host, "sdk": {"tinker": importlib.metadata.version("tinker")},
                "server": probe.server if probe else None, "probe": {"checked_at": probe.checked_at, "warnings": probe.warnings,
                                                                     "greedy_repeats": probe.greedy_repeats} if probe else None,
                "memory_plan": self.memory_plans.get(stage), "local": self.contract.local.model_dump(mode="json") if self.contract.local else None}

    @property
    def results(self) -> Path:
        return results_root(self.contract)

    def run_id(self, stage: str, *parts: str | int) -> str:
        return run_id_for(self.contract, stage, *parts)

    def open_run(self, stage: str, run_id: str, inputs: Iterable[Path] = (), fingerprint: dict[str, Any] | None = None) -> Run | None:
        """A run dir to write, or None when its finished run stands (see `artifacts.open_run`: the one rule)."""
        return open_run(self.contract, stage, run_id, self.if_exists, self.override, inputs, fingerprint)

    def begin(self, result: "StageResult", run_id: str | None = None, inputs: Iterable[Path] = (), fingerprint: dict[str, Any] | None = None) -> Run | None:
        """Open the stage's run (default id `<experiment>-<stage>`); None when its finished run stands."""
        return self.open_run(result.stage, run_id or self.run_id(result.stage), inputs, fingerprint)

    def finished_run(self, stage: str, run_id: str | None = None, *parts: str | int) -> Path:
        """A finished input run: `run_id`, or the stage's default id (`<experiment>-<stage>[-<part>...]`)."""
        return find_finished_run(self.contract, run_id or self.run_id(stage, *parts), stage, self.override)


@dataclass
class StageResult:
    """The runs a stage call finished, and the lines its command prints."""

    stage: str
    done: list[str] = field(default_factory=list)  # runs this call wrote to the end
    lines: list[str] = field(default_factory=list)

    @property
    def did_work(self) -> bool:
        return bool(self.done)

    def finished(self, run_id: str, line: str) -> None:
        self.done.append(run_id)
        self.lines.append(line)
