"""train: conditions x seeds, warmup + cosine, pipelined requests, validation + save_state on the cadence,
and the selected checkpoint (lowest validation NLL; tie -> later step) in summary.json.

RUNBOOK: requires a passing contamination report for the data run and, unless the contract pins the
learning rate, a finished lr-select run whose per-condition choice it inherits (and says so).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from loraexp.artifacts import Run, read_json, write_json_atomic
from loraexp.contracts import Contract, LoraCondition
from loraexp.errors import UserError
from loraexp.training import CHECKPOINTS, METRICS, load_datums, select_checkpoint, train_with_resume
from loraexp.schedule import make_plan

log = logging.getLogger(__name__)


def learning_rate_for(contract: Contract, condition: LoraCondition, lr_select_dir: Path | None) -> tuple[float, int, str]:
    """(peak LR, batch size, where they came from): pinned in the contract, or inherited from lr-select."""
    if contract.train.learning_rate is not None:
        return contract.train.learning_rate, contract.train.batch_size, "pinned in the contract (train.learning_rate)"
    if lr_select_dir is None:
        raise UserError("train.learning_rate is not pinned and there is no lr-select run: run `loraexp lr-select` first or pin train.learning_rate")
    choice = read_json(lr_select_dir / "selection.json")["conditions"][condition.name]
    return choice["selected_lr"], choice["selected_batch_size"], f"lr-select run {lr_select_dir.name}"


def run(contract: Contract, service: Any, run: Run, render_dir: Path, condition: LoraCondition, seed: int, lr_select_dir: Path | None, progress: bool = True) -> dict:
    """Train one condition x seed (resuming from its last checkpoint record) and write its summary."""
    peak_lr, batch_size, lr_source = learning_rate_for(contract, condition, lr_select_dir)
    log.info("%s: learning_rate=%g batch_size=%d from %s", run.run_id, peak_lr, batch_size, lr_source)
    run.add_input(render_dir, ["train.jsonl", "val.jsonl", "manifest.json"])
    if lr_select_dir is not None:
        run.add_input(lr_select_dir, ["selection.json"])
    train_datums = load_datums(render_dir / "train.jsonl")
    val_datums = load_datums(render_dir / "val.jsonl")
    plan = make_plan(contract, peak_lr, batch_size, len(train_datums), seed)
    records = train_with_resume(service, contract, condition, plan, train_datums, val_datums, run.dir, run.run_id, progress)
    best = select_checkpoint(records)
    summary = {
        "condition": condition.name, "seed": seed, "learning_rate": peak_lr, "lr_source": lr_source,
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
