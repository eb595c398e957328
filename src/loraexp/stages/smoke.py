"""smoke: does the backend take both conditions, train on them and report a sane validation NLL?

RUNBOOK step: after `render`, before `lr-select`. For each LoRA condition: create a training client
with the contract's rank and flags, run SMOKE_STEPS optimizer steps on the first train batch, measure
the token-weighted validation NLL before and after, save the state (shortest TTL the service allows)
and read back the flags the backend recorded for it. Writes smoke.json (versions, backend-owned
LoRA knobs, trainable parameter counts, per-condition results), metrics.jsonl, manifest.json.
A condition the backend did not accept as asked, or a non-finite NLL, fails the stage.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Sequence

import tinker

from loraexp.artifacts import JsonlWriter, Run, package_versions, write_json_atomic
from loraexp.backend import backend_name
from loraexp.contracts import Contract, LoraCondition
from loraexp.datums import mean_nll
from loraexp.errors import UserError
from loraexp.local_tinker.model import LORA_ALPHA, LORA_DROPOUT
from loraexp.retry import call_with_retries
from loraexp.training import await_or_raise, load_datums, resolve, restart_on_in_flight_failure, settle, validation_nll

log = logging.getLogger(__name__)

SMOKE_STEPS = 3  # optimizer steps per condition, all on the first train batch (its NLL should fall)
SMOKE_VAL_ROWS = 32  # the first N validation rows
SMOKE_TTL_SECONDS = 3600  # the service minimum: a smoke checkpoint is evidence, not a result
FLAGS = ("train_attn", "train_mlp", "train_unembed")


def run(contract: Contract, service: Any, rest: Any, run: Run, render_dir: Path) -> dict:
    """Smoke-test every condition on the backend and write smoke.json, metrics.jsonl and the manifest."""
    run.add_input(render_dir, ["train.jsonl", "val.jsonl", "manifest.json"])
    train_batch = load_datums(render_dir / "train.jsonl", limit=contract.train.batch_size)
    val_datums = load_datums(render_dir / "val.jsonl", limit=SMOKE_VAL_ROWS)
    if not train_batch or not val_datums:
        raise UserError(f"render run {render_dir.name} has no train or validation rows; rerun `loraexp render`")
    learning_rate = smoke_learning_rate(contract)
    backend = backend_name(service)
    with JsonlWriter(run.path("metrics.jsonl"), mode="w") as metrics:
        conditions = {condition.name: smoke_condition(contract, service, rest, condition, train_batch, val_datums, learning_rate, metrics)
                      for condition in contract.lora.conditions}
    report = {
        "status": "pass" if all(c["accepted"] and math.isfinite(c["val_mean_nll_after"]) for c in conditions.values()) else "fail",
        "backend": backend,
        "base_model": contract.experiment.base_model,
        "lora_rank": contract.lora.rank,
        "learning_rate": learning_rate,
        "steps": SMOKE_STEPS,
        "train_rows": len(train_batch),
        "val_rows": len(val_datums),
        "versions": package_versions(),
        "backend_owned_lora_knobs": backend_owned_knobs(backend),
        "conditions": conditions,
    }
    write_json_atomic(run.path("smoke.json"), report)
    if report["status"] != "pass":
        bad = [name for name, c in conditions.items() if not c["accepted"] or not math.isfinite(c["val_mean_nll_after"])]
        raise UserError(f"smoke failed for {bad}: see {run.path('smoke.json')} (flags recorded by the backend, validation NLL)")
    run.finish(["smoke.json", "metrics.jsonl"], key_figure={f"val_nll_{name}": c["val_mean_nll_after"] for name, c in conditions.items()})
    return report


def smoke_learning_rate(contract: Contract) -> float:
    """The pinned learning rate, else the smallest of the lr-select grid (a smoke run chooses nothing)."""
    return contract.train.learning_rate if contract.train.learning_rate is not None else min(contract.lr_select.lr_grid)


def smoke_condition(contract: Contract, service: Any, rest: Any, condition: LoraCondition, train_batch: Sequence[tinker.Datum],
                    val_datums: Sequence[tinker.Datum], learning_rate: float, metrics: JsonlWriter) -> dict:
    """Smoke one condition; a request failing in flight restarts it on a fresh client (an optim_step may already
    have run on top of a refused forward_backward), and its metrics rows are written only once it succeeds."""
    result, rows = restart_on_in_flight_failure(
        lambda: smoke_once(contract, service, rest, condition, train_batch, val_datums, learning_rate), f"smoke {condition.name}")
    metrics.write_many(rows)
    return result


def smoke_once(contract: Contract, service: Any, rest: Any, condition: LoraCondition, train_batch: Sequence[tinker.Datum],
               val_datums: Sequence[tinker.Datum], learning_rate: float) -> tuple[dict, list[dict]]:
    """Create the condition's client, train SMOKE_STEPS steps, validate, save, and read back what the backend recorded."""
    requested = {flag: getattr(condition, flag) for flag in FLAGS}
    client = call_with_retries(lambda: resolve(service.create_lora_training_client(
        contract.experiment.base_model, rank=contract.lora.rank, seed=contract.lr_select.seed,
        user_metadata={"stage": "smoke", "condition": condition.name}, **requested)), f"create_lora_training_client ({condition.name})")
    info = client.get_info()
    adam = tinker.AdamParams(learning_rate=learning_rate, **contract.train.adam.model_dump())
    val_before, val_tokens = validation_nll(client, val_datums, contract.train.val_batch_size)
    train_nll, rows = [], []
    for step in range(1, SMOKE_STEPS + 1):
        started = time.perf_counter()
        forward_backward = call_with_retries(lambda: client.forward_backward(list(train_batch), "cross_entropy"), f"forward_backward smoke step {step}")
        optim = call_with_retries(lambda: client.optim_step(adam), f"optim_step smoke step {step}")  # submitted before either is awaited, as the train loop does
        settle(forward_backward, optim)
        nll_sum, loss_tokens = mean_nll(await_or_raise(forward_backward, f"forward_backward smoke step {step}"), train_batch)
        await_or_raise(optim, f"optim_step smoke step {step}")
        train_nll.append(nll_sum / loss_tokens)
        rows.append({"condition": condition.name, "step": step, "progress": step / SMOKE_STEPS, "learning_rate": learning_rate,
                     "train_mean_nll": train_nll[-1], "num_sequences": len(train_batch),
                     "num_tokens": sum(d.model_input.length for d in train_batch), "num_loss_tokens": loss_tokens,
                     "step_seconds": time.perf_counter() - started})
    val_after, _ = validation_nll(client, val_datums, contract.train.val_batch_size)
    state_path = await_or_raise(call_with_retries(lambda: client.save_state(f"smoke-{condition.name}", ttl_seconds=SMOKE_TTL_SECONDS), "save_state smoke"), "save_state smoke").path
    recorded = call_with_retries(lambda: resolve(rest.get_weights_info_by_tinker_path(state_path)), f"get_weights_info {state_path}")
    accepted = {flag: getattr(recorded, flag) for flag in FLAGS}
    log.info("smoke %s: model %s, val NLL %.4f -> %.4f, train NLL %s", condition.name, info.model_id, val_before, val_after,
             " -> ".join(f"{nll:.4f}" for nll in train_nll))
    return {
        "model_id": info.model_id,
        "flags_requested": requested,
        "flags_recorded_by_backend": accepted,
        "lora_rank_recorded_by_backend": recorded.lora_rank,
        "accepted": accepted == requested and recorded.lora_rank == contract.lora.rank,
        "trainable_parameters": trainable_parameters(client, contract, condition),
        "train_mean_nll": train_nll,
        "train_nll_decreased": train_nll[-1] < train_nll[0],
        "val_mean_nll_before": val_before,
        "val_mean_nll_after": val_after,
        "val_loss_tokens": val_tokens,
        "state_path": state_path,
    }, rows


def trainable_parameters(client: Any, contract: Contract, condition: LoraCondition) -> dict:
    """LoRA parameter count: counted by the local client, else tinker_cookbook's table for hosted models (None if not listed)."""
    if hasattr(client, "lora_parameter_count"):
        return {"count": client.lora_parameter_count(), "source": "counted by the local backend (PEFT)"}
    from tinker_cookbook.hyperparam_utils import get_lora_param_count

    try:
        count = get_lora_param_count(contract.experiment.base_model, contract.lora.rank, condition.train_mlp, condition.train_attn, condition.train_unembed)
    except (KeyError, ValueError, OSError) as exc:
        return {"count": None, "source": f"unknown: tinker_cookbook has no table entry ({type(exc).__name__})"}
    return {"count": count, "source": "tinker_cookbook.hyperparam_utils.get_lora_param_count"}


def backend_owned_knobs(backend: str) -> dict:
    """LoRA settings the contract cannot set: the backend chooses them (the SDK exposes rank and flags only)."""
    if backend == "local":
        return {"lora_alpha": LORA_ALPHA, "lora_dropout": LORA_DROPOUT, "evidence": "loraexp.local_tinker.model"}
    return {"lora_alpha": None, "lora_dropout": None,
            "evidence": "owned by the Tinker service, not settable through the SDK; read lora_alpha from an exported adapter_config.json (loraexp export)"}
