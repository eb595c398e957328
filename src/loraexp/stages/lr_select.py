"""lr-select: LR grid x condition on a deterministic slice with the reserved selection seed.

Per condition the lowest validation NLL wins (a tie goes to the smaller LR); conditions are not
compared here. Batch-size candidates are run the same way and adopted only if they beat the
contract's batch size. A throughput probe times the three request shapes.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Sequence

import tinker

from loraexp.artifacts import Run
from loraexp.contracts import Contract, LoraCondition, RequestShape
from loraexp.files import read_json, write_json_atomic
from loraexp.service import Service
from loraexp.session import Session, StageResult
from loraexp.training.loop import (
    CHECKPOINTS,
    METRICS,
    LoopState,
    TrainingLoop,
    load_datums,
    train_with_resume,
)
from loraexp.training.schedule import LoopPlan, make_plan

log = logging.getLogger(__name__)
REQUEST_SHAPES: tuple[RequestShape, ...] = ("single_datum_calls", "batched_datums", "batched_datums_pipelined")


def grid_points(contract: Contract) -> list[tuple[LoraCondition, int, float]]:
    """(condition, batch size, LR) for the main grid and every batch-size candidate's own grid."""
    select = contract.lr_select
    batch_grids = [(contract.train.batch_size, select.lr_grid)]
    batch_grids += [(size, select.batch_size_lr_grid or select.lr_grid) for size in select.batch_size_candidates]
    return [(condition, size, lr) for condition in contract.lora.conditions for size, grid in batch_grids for lr in grid]


def run_point(session: Session, parent: Run, render_dir: Path, point: tuple[LoraCondition, int, float], train_datums: Sequence[tinker.Datum],
              val_datums: Sequence[tinker.Datum]) -> dict:
    """One grid point as its own child run (resumable like any training run); returns its grid entry."""
    contract = session.contract
    condition, batch_size, lr = point
    child_id = f"{parent.run_id}-{condition.name}-bs{batch_size}-lr{lr:g}"
    child = session.open_run("lr-select-point", child_id, inputs=[render_dir])
    if child is not None:
        child.add_input(render_dir, ["train.jsonl", "val.jsonl"])
        plan = make_plan(contract, lr, batch_size, len(train_datums), contract.lr_select.seed,
                         total_steps=contract.lr_select.steps, cadence=contract.lr_select.validate_at)
        service = session.service_for("lr-select", child, render_dir)
        records = train_with_resume(service, contract.experiment.base_model, contract.rank_of(condition), condition, plan, train_datums, val_datums,
                                    child.dir, child_id, session.progress)
        result = {"condition": condition.name, "learning_rate": lr, "batch_size": batch_size,
                  "val_nll": {str(r["step"]): r["val_nll"] for r in records},
                  "final_val_nll": records[-1]["val_nll"], "best_val_nll": min(r["val_nll"] for r in records),
                  "train_tokens": records[-1]["cumulative_tokens"], "cost_usd": records[-1]["cost_usd"], "child_run": child_id}
        write_json_atomic(child.path("result.json"), result)
        child.finish([METRICS, CHECKPOINTS, "result.json"], key_figure={"best_val_nll": result["best_val_nll"]})
    return read_json(session.results / child_id / "result.json")


def choose(entries: list[dict], batch_size: int) -> dict:
    """Lowest best validation NLL among entries of one batch size; a tie goes to the smaller LR."""
    candidates = [entry for entry in entries if entry["batch_size"] == batch_size]
    return min(candidates, key=lambda entry: (entry["best_val_nll"], entry["learning_rate"]))


def select_per_condition(contract: Contract, entries: list[dict]) -> dict:
    """Per condition: the best LR at the contract's batch size, replaced by a batch-size candidate only if strictly better."""
    conditions = {}
    for condition in contract.lora.conditions:
        mine = [entry for entry in entries if entry["condition"] == condition.name]
        best = choose(mine, contract.train.batch_size)
        for size in contract.lr_select.batch_size_candidates:
            candidate = choose(mine, size)
            if candidate["best_val_nll"] < best["best_val_nll"]:
                best = candidate
        conditions[condition.name] = {"selected_lr": best["learning_rate"], "selected_batch_size": best["batch_size"],
                                      "selected_val_nll": best["best_val_nll"], "grid": mine}
    return conditions


def timed_probe(service: Service, contract: Contract, condition: LoraCondition, plan: LoopPlan, train_datums: Sequence[tinker.Datum], shape: str) -> tuple[TrainingLoop, float]:
    """`plan.total_steps` steps on a fresh client in one request shape; (the loop, seconds)."""
    client = service.new_training_client(contract.experiment.base_model, contract.rank_of(condition), contract.lr_select.seed, condition)
    loop = TrainingLoop(service, client, plan, train_datums, [], None, LoopState(), progress=False, label=shape)
    started = time.perf_counter()
    loop.run()
    return loop, time.perf_counter() - started


def probe_throughput(contract: Contract, service: Service, train_datums: Sequence[tinker.Datum]) -> list[dict]:
    """Seconds per optimizer step and tokens/s for each request shape, on fresh clients with the same batches."""
    condition = contract.lora.conditions[0]
    steps = contract.lr_select.throughput_steps
    results = []
    for shape in REQUEST_SHAPES:
        plan = make_plan(contract, contract.lr_select.lr_grid[0], contract.train.batch_size, len(train_datums),
                         contract.lr_select.seed, total_steps=steps, cadence=())
        plan = dataclasses.replace(plan, request_shape=shape)
        # a request failing in flight restarts the probe on a fresh client: there is no checkpoint to roll back to
        loop, seconds = service.retry.call(lambda: timed_probe(service, contract, condition, plan, train_datums, shape), f"throughput probe {shape}")
        results.append({"request_shape": shape, "steps": steps, "seconds_per_step": seconds / steps,
                        "tokens_per_second": loop.tokens_this_session / seconds, "batch_size": plan.batch_size})
        log.info("throughput %s: %.3f s/step", shape, seconds / steps)
    return results


def run(session: Session, render_run: str | None = None, run_id: str | None = None) -> StageResult:
    """The whole selection: grid child runs, per-condition choice, throughput probe, selection.json."""
    contract, result = session.contract, StageResult("lr-select")
    render_dir = session.finished_run("render", render_run)
    run = session.begin(result, run_id, inputs=[render_dir])
    if run is None:
        return result
    select = contract.lr_select
    run.add_input(render_dir, ["train.jsonl", "val.jsonl", "manifest.json"])
    train_datums = load_datums(render_dir / "train.jsonl", limit=select.train_rows)
    val_datums = load_datums(render_dir / "val.jsonl", limit=select.val_rows)
    log.info("lr-select: %d train / %d validation rows (first rows of each split), seed %d", len(train_datums), len(val_datums), select.seed)
    entries = [run_point(session, run, render_dir, point, train_datums, val_datums) for point in grid_points(contract)]
    selection = {"rule": "per condition: lowest validation NLL over validate_at; tie -> smaller LR; "
                         "a batch-size candidate is adopted only if strictly better",
                 "seed": select.seed, "train_rows": len(train_datums), "val_rows": len(val_datums),
                 "conditions": select_per_condition(contract, entries)}
    write_json_atomic(run.path("selection.json"), selection)
    throughput = probe_throughput(contract, session.service_for("lr-select", run, render_dir), train_datums)
    write_json_atomic(run.path("throughput.json"), {"shapes": throughput})
    run.finish(["selection.json", "throughput.json"], key_figure={name: choice["selected_lr"] for name, choice in selection["conditions"].items()})
    result.done.append(run.run_id)
    result.lines += [f"{name}: learning_rate={choice['selected_lr']:g} batch_size={choice['selected_batch_size']} (val NLL {choice['selected_val_nll']:.4f})"
                     for name, choice in selection["conditions"].items()]
    return result
