"""smoke: does the backend take every condition, train on it and adapt exactly what the condition asks for?

RUNBOOK step: after `render`, before `lr-select`. For each LoRA condition: create a training client
with the condition's rank and flags, run SMOKE_STEPS optimizer steps on the first train batch, measure
the token-weighted validation NLL before and after, save the state (shortest TTL the service allows),
read back the flags the backend recorded for it, then download the adapter and read from its weights
which modules it adapts, its rank, lora_alpha, dropout and parameter count. Writes smoke.json,
metrics.jsonl, adapters/<condition>/ and manifest.json. A condition the backend did not train as asked
(flags, rank, or the weights themselves), or a non-finite NLL, fails the stage before any sweep is spent.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Sequence

import tinker

from loraexp.artifacts import Run, package_versions
from loraexp.contracts import Contract, LoraCondition
from loraexp.errors import UserError
from loraexp.files import JsonlWriter, write_json_atomic
from loraexp.service import Service
from loraexp.service.adapters import (
    ADAPTER_FILES,
    deviations,
    download_adapter,
    expected_parameter_count,
    inspect_adapter,
)
from loraexp.service.datums import mean_nll
from loraexp.service.retry import await_or_raise, settle
from loraexp.session import Session, StageResult
from loraexp.training.loop import load_datums, validation_nll

log = logging.getLogger(__name__)

SMOKE_STEPS = 3  # optimizer steps per condition, all on the first train batch (its NLL should fall)
SMOKE_VAL_ROWS = 32  # the first N validation rows
SMOKE_TTL_SECONDS = 3600  # the service minimum: a smoke checkpoint is evidence, not a result
FLAGS = ("train_attn", "train_mlp", "train_unembed")


def run(session: Session, render_run: str | None = None, run_id: str | None = None) -> StageResult:
    """Smoke-test every condition on the backend; refuse (one line) when one is not trained as asked."""
    result = StageResult("smoke")
    render_dir = session.finished_run("render", render_run)
    run = session.begin(result, run_id, inputs=[render_dir])
    if run is None:
        return result
    service = session.service_for("smoke", run, render_dir)
    report = smoke(session.contract, service, run, render_dir)
    for name, condition in report["conditions"].items():
        adapter = condition["adapter"]
        result.lines.append(f"{name}: adapts {'+'.join(adapter['kinds'])} at rank {'/'.join(map(str, adapter['ranks']))}, "
                            f"{adapter['parameters']:,} LoRA parameters, alpha {adapter['lora_alpha']}; "
                            f"val NLL {condition['val_mean_nll_before']:.4f} -> {condition['val_mean_nll_after']:.4f}")
    result.done.append(run.run_id)
    return result


def smoke(contract: Contract, service: Service, run: Run, render_dir: Path) -> dict:
    """Every condition on the backend; smoke.json, metrics.jsonl and the adapters, then the manifest (or the refusal)."""
    run.add_input(render_dir, ["train.jsonl", "val.jsonl", "manifest.json"])
    train_batch = load_datums(render_dir / "train.jsonl", limit=contract.train.batch_size)
    val_datums = load_datums(render_dir / "val.jsonl", limit=SMOKE_VAL_ROWS)
    if not train_batch or not val_datums:
        raise UserError(f"render run {render_dir.name} has no train or validation rows; rerun `loraexp render`")
    learning_rate = smoke_learning_rate(contract)
    with JsonlWriter(run.path("metrics.jsonl"), mode="w") as metrics:
        conditions = {condition.name: smoke_condition(contract, service, run, condition, train_batch, val_datums, learning_rate, metrics)
                      for condition in contract.lora.conditions}
    failed = {name: c for name, c in conditions.items() if not c["accepted"] or not math.isfinite(c["val_mean_nll_after"])}
    report = {
        "status": "fail" if failed else "pass",
        "backend": service.backend,
        "base_model": contract.experiment.base_model,
        "lora_ranks": {condition.name: contract.rank_of(condition) for condition in contract.lora.conditions},
        "learning_rate": learning_rate,
        "steps": SMOKE_STEPS,
        "train_rows": len(train_batch),
        "val_rows": len(val_datums),
        "versions": package_versions(),
        "backend_owned_lora_knobs": backend_owned_knobs(conditions),
        "conditions": conditions,
    }
    write_json_atomic(run.path("smoke.json"), report)
    if failed:
        raise UserError(refusal(failed, run.path("smoke.json")))
    adapters = [f"adapters/{name}/{file}" for name in conditions for file in ADAPTER_FILES]
    run.finish(["smoke.json", "metrics.jsonl", *adapters], key_figure={name: adapter_summary(c) for name, c in conditions.items()})
    return report


def adapter_summary(condition: dict) -> str:
    """What the weights say a condition's adapter is, in a few words (the status table shows it)."""
    adapter = condition["adapter"]
    return (f"{'+'.join(adapter['kinds'])} r{'/'.join(map(str, adapter['ranks']))} alpha {adapter['lora_alpha']} "
            f"dropout {adapter['lora_dropout']} {adapter['parameters']:,} params, val NLL {condition['val_mean_nll_after']:.3f}")


def refusal(failed: dict[str, dict], report_path: Path) -> str:
    """One line naming what the engine did instead of what each failed condition asked for."""
    reasons = []
    for name, condition in failed.items():
        found = condition["adapter_deviations"] + condition["flag_deviations"]
        if not math.isfinite(condition["val_mean_nll_after"]):
            found.append(f"validation NLL is {condition['val_mean_nll_after']}")
        reasons.append(f"{name} adapter: {'; '.join(found)}")
    return f"smoke refused the engine: {' | '.join(reasons)} (see {report_path}); no sweep was started"


def smoke_learning_rate(contract: Contract) -> float:
    """The pinned learning rate, else the smallest of the lr-select grid (a smoke run chooses nothing; one LR for every condition)."""
    return contract.train.learning_rate if contract.train.learning_rate is not None else min(contract.lr_select.lr_grid)


def smoke_condition(contract: Contract, service: Service, run: Run, condition: LoraCondition, train_batch: Sequence[tinker.Datum],
                    val_datums: Sequence[tinker.Datum], learning_rate: float, metrics: JsonlWriter) -> dict:
    """Smoke one condition; a request failing in flight restarts it on a fresh client (an optim_step may already
    have run on top of a refused forward_backward), and its metrics rows are written only once it succeeds."""
    result, rows = service.retry.call(lambda: smoke_once(contract, service, run, condition, train_batch, val_datums, learning_rate),
                                      f"smoke {condition.name}")
    metrics.write_many(rows)
    return result


def smoke_once(contract: Contract, service: Service, run: Run, condition: LoraCondition, train_batch: Sequence[tinker.Datum],
               val_datums: Sequence[tinker.Datum], learning_rate: float) -> tuple[dict, list[dict]]:
    """Create the condition's client, train SMOKE_STEPS steps, validate, save, and measure what the backend made."""
    rank = contract.rank_of(condition)
    client = service.new_training_client(contract.experiment.base_model, rank, contract.lr_select.seed, condition)
    info = client.get_info()
    adam = tinker.AdamParams(learning_rate=learning_rate, **contract.train.adam.model_dump())
    val_before, val_tokens = validation_nll(service, client, val_datums, contract.train.val_batch_size)
    train_nll, rows = [], []
    for step in range(1, SMOKE_STEPS + 1):
        started = time.perf_counter()
        forward_backward = service.submit(lambda: client.forward_backward(list(train_batch), "cross_entropy"), f"forward_backward smoke step {step}")
        optim = service.submit(lambda: client.optim_step(adam), f"optim_step smoke step {step}")  # submitted before either is awaited, as the train loop does
        settle(forward_backward, optim)
        nll_sum, loss_tokens = mean_nll(await_or_raise(forward_backward, f"forward_backward smoke step {step}"), train_batch)
        await_or_raise(optim, f"optim_step smoke step {step}")
        train_nll.append(nll_sum / loss_tokens)
        rows.append({"condition": condition.name, "step": step, "progress": step / SMOKE_STEPS, "learning_rate": learning_rate,
                     "train_mean_nll": train_nll[-1], "num_sequences": len(train_batch),
                     "num_tokens": sum(d.model_input.length for d in train_batch), "num_loss_tokens": loss_tokens,
                     "step_seconds": time.perf_counter() - started})
    val_after, _ = validation_nll(service, client, val_datums, contract.train.val_batch_size)
    state_path = service.call(lambda: client.save_state(f"smoke-{condition.name}", ttl_seconds=SMOKE_TTL_SECONDS), "save_state smoke").path
    recorded = service.call(lambda: service.rest.get_weights_info_by_tinker_path(state_path), f"get_weights_info {state_path}")
    requested = {flag: getattr(condition, flag) for flag in FLAGS}
    accepted = {flag: getattr(recorded, flag) for flag in FLAGS}
    adapter_dir = run.path("adapters") / condition.name
    download_adapter(service, client, f"smoke-{condition.name}", adapter_dir, ttl_seconds=SMOKE_TTL_SECONDS)
    facts = inspect_adapter(adapter_dir)
    adapter_deviations = deviations(facts, condition, rank)
    flag_deviations = [f"the backend recorded {flag}={accepted[flag]} for {flag}={requested[flag]}" for flag in FLAGS if accepted[flag] != requested[flag]]
    if recorded.lora_rank != rank:
        flag_deviations.append(f"the backend recorded rank {recorded.lora_rank} for rank {rank}")
    log.info("smoke %s: model %s adapts %s (rank %s, %d parameters), val NLL %.4f -> %.4f, train NLL %s", condition.name, info.model_id,
             "+".join(facts.kinds), facts.ranks, facts.parameters, val_before, val_after, " -> ".join(f"{nll:.4f}" for nll in train_nll))
    return {
        "model_id": info.model_id,
        "flags_requested": requested,
        "flags_recorded_by_backend": accepted,
        "lora_rank_recorded_by_backend": recorded.lora_rank,
        "adapter": facts.as_dict(),
        "adapter_deviations": adapter_deviations,
        "flag_deviations": flag_deviations,
        "accepted": not adapter_deviations and not flag_deviations,
        "trainable_parameters": {"count": facts.parameters, "source": "counted from the exported adapter's tensors",
                                 "tinker_cookbook_table": expected_parameter_count(contract.experiment.base_model, rank, condition)},
        "train_mean_nll": train_nll,
        "train_nll_decreased": train_nll[-1] < train_nll[0],
        "val_mean_nll_before": val_before,
        "val_mean_nll_after": val_after,
        "val_loss_tokens": val_tokens,
        "state_path": state_path,
    }, rows


def backend_owned_knobs(conditions: dict[str, dict]) -> dict:
    """LoRA settings the contract cannot set (the SDK exposes rank and flags only), as measured from the adapters."""
    alphas = sorted({c["adapter"]["lora_alpha"] for c in conditions.values()}, key=str)
    dropouts = sorted({c["adapter"]["lora_dropout"] for c in conditions.values()}, key=str)
    return {"lora_alpha": alphas[0] if len(alphas) == 1 else alphas, "lora_dropout": dropouts[0] if len(dropouts) == 1 else dropouts,
            "evidence": "measured: adapter_config.json of each condition's exported adapter (adapters/<condition>/)"}
