"""train: conditions x seeds, warmup + cosine, pipelined requests, validation + save_state on the cadence,
and the selected checkpoint (lowest validation NLL; tie -> later step) in summary.json.

RUNBOOK: requires a passing contamination report for the data run the render run was made from and,
unless the contract pins the learning rate, a finished lr-select run whose per-condition choice it
inherits (and says so).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from loraexp.artifacts import Run, input_run_of
from loraexp.contracts import Contract, LoraCondition
from loraexp.errors import UserError
from loraexp.files import read_json, write_json_atomic
from loraexp.service import Service
from loraexp.session import Session, StageResult
from loraexp.stages.contamination import require_contamination_pass
from loraexp.training.loop import (
    CHECKPOINTS,
    METRICS,
    load_datums,
    select_checkpoint,
    train_with_resume,
)
from loraexp.training.schedule import make_plan

log = logging.getLogger(__name__)


def run(session: Session, condition: str | None = None, seed: int | None = None, render_run: str | None = None,
        lr_select_run: str | None = None) -> StageResult:
    """Train conditions x seeds (or one with `condition`/`seed`); a killed run resumes from its last checkpoint record."""
    contract, result = session.contract, StageResult("train")
    render_dir = session.finished_run("render", render_run)
    data_dir = input_run_of(render_dir, "build-data")
    if data_dir is None:
        raise UserError(f"render run {render_dir.name} records no finished build-data run; rerun `loraexp render`")
    require_contamination_pass(contract, data_dir.name)  # the data these rows were rendered from, not the default data run
    pairs = selected(contract, condition, seed)
    inherits = [c.name for c, _ in pairs if c.learning_rate is None and contract.train.learning_rate is None]
    lr_dir = session.finished_run("lr-select", lr_select_run) if inherits else None
    for lora_condition, lora_seed in pairs:
        run_id = session.run_id("train", lora_condition.name, f"seed{lora_seed}")
        run = session.begin(result, run_id, inputs=[render_dir, *([lr_dir] if lr_dir else [])])
        if run is None:
            continue
        service = session.service_for("train", run, render_dir)
        summary = train_one(contract, service, run, render_dir, lora_condition, lora_seed, lr_dir, session.progress)
        result.finished(run_id, f"{run_id}: selected step {summary['selected_step']} (val NLL {summary['val_nll']:.4f})")
    return result


def selected(contract: Contract, condition: str | None, seed: int | None) -> list[tuple[LoraCondition, int]]:
    """(condition, seed) pairs to run: all of the contract's, or the one asked for."""
    conditions = [contract.condition(condition)] if condition else list(contract.lora.conditions)
    seeds = [seed] if seed is not None else list(contract.train.seeds)
    return [(c, s) for c in conditions for s in seeds]


def learning_rate_for(contract: Contract, condition: LoraCondition, lr_select_dir: Path | None) -> tuple[float, int, str]:
    """(peak LR, batch size, where they came from): the condition's own, the contract's, or lr-select's choice for the condition."""
    if condition.learning_rate is not None:
        return condition.learning_rate, contract.train.batch_size, f"pinned in the contract ([[lora.conditions]] {condition.name} learning_rate)"
    if contract.train.learning_rate is not None:
        return contract.train.learning_rate, contract.train.batch_size, "pinned in the contract (train.learning_rate)"
    if lr_select_dir is None:
        raise UserError("train.learning_rate is not pinned and there is no lr-select run: run `loraexp lr-select` first or pin train.learning_rate")
    choice = read_json(lr_select_dir / "selection.json")["conditions"][condition.name]
    return choice["selected_lr"], choice["selected_batch_size"], f"lr-select run {lr_select_dir.name}"


def train_one(contract: Contract, service: Service, run: Run, render_dir: Path, condition: LoraCondition, seed: int, lr_select_dir: Path | None,
              progress: bool = True) -> dict:
    """Train one condition x seed (resuming from its last checkpoint record) and write its summary."""
    peak_lr, batch_size, lr_source = learning_rate_for(contract, condition, lr_select_dir)
    log.info("%s: learning_rate=%g batch_size=%d from %s", run.run_id, peak_lr, batch_size, lr_source)
    run.add_input(render_dir, ["train.jsonl", "val.jsonl", "manifest.json"])
    if lr_select_dir is not None:
        run.add_input(lr_select_dir, ["selection.json"])
    train_datums = load_datums(render_dir / "train.jsonl")
    val_datums = load_datums(render_dir / "val.jsonl")
    plan = make_plan(contract, peak_lr, batch_size, len(train_datums), seed)
    records = train_with_resume(service, contract.experiment.base_model, contract.rank_of(condition), condition, plan, train_datums, val_datums,
                                run.dir, run.run_id, progress)
    best = select_checkpoint(records)
    summary = {
        "condition": condition.name, "seed": seed, "rank": contract.rank_of(condition), "learning_rate": peak_lr, "lr_source": lr_source,
        "batch_size": batch_size, "total_steps": plan.total_steps, "warmup_steps": plan.schedule.warmup_steps,
        "cadence": list(plan.cadence), "selected_step": best["step"], "val_nll": best["val_nll"],
        "train_tokens": records[-1]["cumulative_tokens"], "val_tokens": best["val_tokens"],
        "cost_usd": records[-1]["cost_usd"], "checkpoint_name": best["name"], "state_path": best["state_path"],
        "ttl_seconds": best["ttl_seconds"], "expires_at": best["expires_at"],
        "selection_rule": "lowest validation NLL; exact tie -> later step",
    }
    write_json_atomic(run.path("summary.json"), summary)
    if (render_dir / "sample_render.txt").exists():
        shutil.copyfile(render_dir / "sample_render.txt", run.path("sample_render.txt"))
    outputs = [METRICS, CHECKPOINTS, "summary.json"] + (["sample_render.txt"] if run.path("sample_render.txt").exists() else [])
    run.finish(outputs, key_figure={"val_nll": best["val_nll"], "selected_step": best["step"]})
    return summary
